"""Orbax checkpoints shared by training and evaluation (eval never imports train)."""

from nested_jax.checkpoint.io import (  # noqa: F401
    CheckpointError,
    Checkpointer,
    checkpoint_dir,
    config_from_meta,
    rollback,
)
