"""Multi-host set-up: `jax.distributed.initialize` from flags or environment, and what
only process 0 does.

    python -m nested_jax.train --config ... --workdir ... \\
        --coordinator host0:8476 --num_processes 2 --process_id 0     # on host 0
    (same with --process_id 1 on host 1)

or the environment NJ_COORDINATOR / NJ_NUM_PROCESSES / NJ_PROCESS_ID (launch scripts).
`--coordinator auto` lets JAX read them from the cluster (SLURM, Open MPI, Kubernetes/GKE):
`srun python -m nested_jax.train ... --coordinator auto`.
Every process runs the same program; each reads its own slice of the data (the loader's
process_index/process_count), the mesh spans all processes' devices, and Orbax writes one
checkpoint cooperatively (each process its shards; a shared filesystem is required).
Metrics, plots and summaries are written by process 0 only.
"""

from __future__ import annotations

import os

import jax

ENV = {"coordinator": "NJ_COORDINATOR", "num_processes": "NJ_NUM_PROCESSES",
       "process_id": "NJ_PROCESS_ID"}

_initialized = False


def settings(coordinator: str | None = None, num_processes: int | None = None,
             process_id: int | None = None) -> dict | None:
    """Flag values, else NJ_* environment values; None when neither asks for multi-process."""
    got = {"coordinator": coordinator or os.environ.get(ENV["coordinator"]) or None,
           "num_processes": num_processes, "process_id": process_id}
    for k in ("num_processes", "process_id"):
        if got[k] is None and os.environ.get(ENV[k], "") != "":
            try:
                got[k] = int(os.environ[ENV[k]])
            except ValueError:
                raise ValueError(f"{ENV[k]}={os.environ[ENV[k]]!r} is not an integer.") from None
    if got["coordinator"] is None and got["num_processes"] is None and got["process_id"] is None:
        return None
    if got["coordinator"] == "auto":  # cluster auto-detection fills in the rest
        return got
    missing = [k for k, v in got.items() if v is None]
    if missing:
        flags_ = ", ".join(f"--{k} (or {ENV[k]})" for k in missing)
        raise ValueError(f"multi-process training needs --coordinator, --num_processes and "
                         f"--process_id; missing {flags_}.")
    n, i = got["num_processes"], got["process_id"]
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--process_id={i} must lie in [0, --num_processes={n}).")
    if ":" not in got["coordinator"]:
        raise ValueError(f"--coordinator={got['coordinator']!r} must be host:port "
                         "(the address of process 0, reachable from every host).")
    return got


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> bool:
    """Join the job (before any JAX computation). Returns True when multi-process.

    CPU collectives go through gloo, so the same code runs as several processes on one
    machine for testing. A 1-process "job" skips the coordinator entirely.
    """
    global _initialized
    s = settings(coordinator, num_processes, process_id)
    if s is None or _initialized:
        return _initialized
    if s["num_processes"] == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    auto = s["coordinator"] == "auto"
    jax.distributed.initialize(coordinator_address=None if auto else s["coordinator"],
                               num_processes=s["num_processes"], process_id=s["process_id"],
                               initialization_timeout=timeout_s)
    _initialized = True
    return True


class NullWriter:
    """Stands in for MetricsWriter on processes other than 0."""

    path = None

    def write(self, record: dict) -> None:
        del record

    def close(self) -> None:
        pass


def restore_data_state(ckpt_dir: str, step: int, data_iter) -> None:
    """Resume the data iterator of a checkpoint written by a different number of processes.

    Grain writes one state file per process (data/process_<i>-of-<n>.json). The loader's
    state counts global batches ({"next_index": k}: batch k is the same global batch for
    any process count), so process 0's file positions every process of the new job.
    """
    import glob
    import json

    files = sorted(glob.glob(os.path.join(ckpt_dir, str(step), "data", "process_0-of-*.json")))
    if not files:
        raise FileNotFoundError(
            f"no data-iterator state in {os.path.join(ckpt_dir, str(step), 'data')}; "
            "cannot resume the data order.")
    state = json.loads(open(files[0]).read())
    if set(state) != {"next_index"}:
        raise ValueError(
            f"the checkpoint's data state {sorted(state)} was written with Grain worker "
            "processes by a different number of JAX processes; resume with the original "
            "process count, or with data.num_workers=0 on both sides.")
    data_iter.set_state(state)
