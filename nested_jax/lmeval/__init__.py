"""lm-evaluation-harness adapter: every nested_jax checkpoint as the harness model
`nested_jax` (`pip install 'nested_jax[lmeval]'`; lm-eval 0.4.x, no torch needed).

    python -m nested_jax.lmeval --model nested_jax \\
        --model_args checkpoint=runs/smoke,step=300,batch_size=16 --tasks nj_piqa --limit 100

`python -m nested_jax.lmeval` is lm-eval's own command line with the model registered and
the offline tasks over the vendored data (nested_jax/lmeval_tasks, names prefixed `nj_`) on
the include path; in Python, `nested_jax.lmeval.register()` then
`lm_eval.simple_evaluate(model="nested_jax", ...)`. The harness has no plugin discovery for
models in the installed version (0.4.13), hence the wrapper. The model: nested_jax/lmeval/model.py.
"""

from __future__ import annotations

import os

TASKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "lmeval_tasks")


def register() -> None:
    """Register `nested_jax` with the harness's model registry (idempotent)."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:
        raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install "
                          "'nested_jax[lmeval]' (in a checkout: EXTRAS=dev,lmeval bash "
                          "launch/setup.sh).") from None
    if "nested_jax" not in model_registry:
        model_registry.register("nested_jax", target="nested_jax.lmeval.model:NestedJaxLM")


def task_manager(include_path: str | None = None):
    """lm-eval's TaskManager with the offline tasks (and `include_path`, if given)."""
    from lm_eval.tasks import TaskManager

    paths = [TASKS_DIR] + ([include_path] if include_path else [])
    return TaskManager(include_path=paths)
