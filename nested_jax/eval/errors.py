"""The one error type the eval CLI turns into a one-paragraph message (no traceback)."""


class EvalError(RuntimeError):
    """A user-fixable problem: bad checkpoint, step, tokenizer, task name or flag."""
