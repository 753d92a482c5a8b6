"""tqdm progress bars that can be switched off (tests, --no-progress)."""

from __future__ import annotations

import contextlib
import sys


class _Null:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def write(self, s):
        pass


@contextlib.contextmanager
def bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar on stderr (or a no-op object when disabled)."""
    if not enabled:
        yield _Null()
        return
    from tqdm.auto import tqdm

    pb = tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stderr, leave=True)
    try:
        yield pb
    finally:
        pb.close()
