"""The bad-input contract every command line shares (train, eval, data, checkpoint, release,
doctor, generate): a problem the user can fix is one `error: <problem>. Fix: <what to do>`
paragraph on stderr and exit status 2 — never a traceback. Bugs still raise.

    from nested_jax.cli import ArgumentParser, UserError, run

    def main(argv=None) -> int:
        p = ArgumentParser(prog="python -m nested_jax.x")   # argparse errors follow it too
        ...
        return run(lambda: body(p.parse_args(argv)), prog=p.prog)

Each package's own error type (ConfigError, CheckpointError, EvalError, ReleaseError)
subclasses UserError, so one `except UserError` in `run` covers them all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

BAD_INPUT = 2  # exit status of every user-fixable error


class UserError(Exception):
    """A problem the user can fix (flag, path, config value, data, checkpoint). The message
    names the problem and, after "Fix:", what to do; `fix=` appends that part."""

    def __init__(self, message: str = "", fix: str | None = None):
        if fix and "fix:" not in message.lower():
            message = f"{message.rstrip().rstrip('.')}. Fix: {fix}"
        super().__init__(message)


def paragraph(message, fix_hint: str | None = None) -> str:
    """`error: <problem>. Fix: <what to do>` on one line (multi-line messages are joined)."""
    text = " ".join(str(message).split())
    if text.lower().startswith("error:"):
        text = text[len("error:"):].strip()
    if fix_hint and "Fix:" not in text:
        text = f"{text.rstrip('.')}. Fix: {fix_hint}"
    return "error: " + text


def fail(message, code: int = BAD_INPUT, fix_hint: str | None = None) -> int:
    """Print the paragraph on stderr; return `code` (for `return fail(...)` in a main)."""
    sys.stdout.flush()
    sys.stderr.write(paragraph(message, fix_hint) + "\n")
    sys.stderr.flush()
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown flag, wrong type, missing argument) raise
    UserError instead of printing usage and exiting; sub-parsers inherit the class."""

    def error(self, message: str):
        raise UserError(f"{message} ({self.prog})", fix=f"see `{self.prog} --help`.")


# Rows per scoring batch, the one default of every command's --batch-size (eval, perplexity,
# the lm-eval adapter): 8 windows of a few thousand tokens fit a small GPU and a laptop.
DEFAULT_BATCH_SIZE = 8

_WARNED: set = set()


def warn_deprecated(old: str, new: str) -> None:
    """One `warning: OLD is deprecated; use NEW` line on stderr per spelling and process."""
    if old in _WARNED:
        return
    _WARNED.add(old)
    sys.stderr.write(f"warning: {old} is deprecated; use {new} (same meaning).\n")
    sys.stderr.flush()


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Keep `old` as a deprecated spelling of the flag `new` (already added): it stores into
    the same destination and prints one warning. kwargs: `type=` for a value flag; none for
    a switch."""
    target = next(a for a in parser._actions if new in a.option_strings)
    takes_value = target.nargs != 0

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warn_deprecated(option_string, new)
            setattr(namespace, target.dest, values if takes_value else target.const)

    parser.add_argument(old, action=Alias, dest=f"_alias_{target.dest}",
                        nargs=None if takes_value else 0, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


# Typed flag values, checked where the grammar is defined (argparse `type=`): a wrong type,
# a value out of range or a non-finite number is a usage error naming the flag (exit 2).
def int_at_least(lo: int):
    """`type=` for an integer flag ≥ lo (e.g. --batch-size: int_at_least(1))."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be ≥ {lo}")
        return v
    parse.__name__ = f"integer ≥ {lo}"
    return parse


def float_at_least(lo: float | None = None):
    """`type=` for a finite number flag (≥ lo when given)."""
    import math

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"{v:g} must be ≥ {lo:g}")
        return v
    parse.__name__ = "finite number" if lo is None else f"number ≥ {lo:g}"
    return parse


def ints_at_least(lo: int, hi: int | None = None):
    """`type=` for a comma-separated list of integers in [lo, hi] (e.g. --lengths 512,1024)."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             "integers") from None
        if not vals:
            raise argparse.ArgumentTypeError("the list is empty")
        bad = [v for v in vals if v < lo or (hi is not None and v > hi)]
        if bad:
            span = f"in [{lo}, {hi}]" if hi is not None else f"≥ {lo}"
            raise argparse.ArgumentTypeError(f"{bad[0]} is out of range (each must be {span})")
        return vals
    parse.__name__ = "integer list"
    return parse


def _first_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_creatable(path: str, flag: str, what: str) -> None:
    """The missing folders above `path` can be made: the nearest existing ancestor is a
    writable folder."""
    anc = _first_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(anc):
        raise UserError(f"{flag} {path!r} cannot be created: {anc} is a file, not a folder",
                        fix=f"pick another {what} path.")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path!r} cannot be written: no write permission in {anc}",
                        fix=f"pick a {what} path in a folder you can write.")


def check_output_file(path: str, flag: str = "--output") -> str:
    """Refuse, before any work, an output file that cannot be written; return its abspath."""
    if not path:
        raise UserError(f"{flag} is empty", fix=f"pass {flag} FILE.")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise UserError(f"{flag} {path!r} is a folder, but a file is written there",
                        fix=f"pass a file name, e.g. {flag} {os.path.join(path, 'out.json')}.")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise UserError(f"{flag} {path!r} exists and is not writable",
                        fix="pick another file or change its permissions.")
    _check_creatable(full, flag, "file")
    return full


def check_output_dir(path: str, flag: str = "--output") -> str:
    """Refuse, before any work, a folder that cannot be created or written; return abspath."""
    if not path:
        raise UserError(f"{flag} is empty", fix=f"pass {flag} DIR.")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise UserError(f"{flag} {path!r} is a file, but a folder is needed there",
                        fix="pass a folder path (or move the file away).")
    if os.path.isdir(full) and not os.access(full, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path!r} is not writable",
                        fix="pick a folder you can write or change its permissions.")
    if not os.path.exists(full):
        _check_creatable(full, flag, "folder")
    return full


FS_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def run(body: Callable[[], int | None], *, prog: str) -> int:
    """Call `body()`; a UserError (or a file-system refusal such as a permission error)
    becomes the one-paragraph message and exit status 2. Returns body's exit status
    (None = 0)."""
    try:
        rc = body()
    except UserError as e:
        return fail(e, fix_hint=f"see `{prog} --help`.")
    except BrokenPipeError:  # output piped into `head`, which closed it: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FS_ERRORS as e:
        where = e.filename if e.filename is not None else ""
        return fail(f"cannot write or read {where!r}: {e.strerror or e}",
                    fix_hint="pick a path you can write (check the folder exists and its "
                             "permissions).")
    return 0 if rc is None else int(rc)
