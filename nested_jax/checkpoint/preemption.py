"""SIGTERM / SIGINT during training: finish the current step, checkpoint, exit cleanly.

    stop = StopRequest().install()
    for step in ...:
        ...
        if stop.requested(step):   # after the step (and its scheduled save)
            save(step); break
    stop.uninstall()

A second SIGINT (Ctrl-C twice) interrupts at once. On several processes the decision
must be the same step everywhere, so `requested` asks JAX's preemption sync point (the
coordination service notices SIGTERM on every host) instead of a local flag.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the training loop polls once per step."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        import jax

        if jax.process_count() > 1:
            return self  # JAX's preemption notifier owns SIGTERM on multi-host runs
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.uninstall()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n[nested_jax] received {signal.Signals(signum).name}: finishing the current "
              "step, saving a checkpoint, then exiting (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)

    def requested(self, step: int) -> bool:
        if self.signum is not None:
            return True
        import jax

        if jax.process_count() > 1:
            try:
                from jax.experimental import multihost_utils

                return bool(multihost_utils.reached_preemption_sync_point(step))
            except Exception:  # noqa: BLE001 - no preemption service: never stop early
                return False
        return False
