"""The one error type the eval CLI turns into a one-paragraph message (no traceback)."""

from nested_jax.cli import UserError


class EvalError(UserError, RuntimeError):
    """A user-fixable problem: bad checkpoint, step, tokenizer, task name or flag."""
