"""The git commit of the code that is running (recorded in checkpoints, releases, converted
workdirs, GPU-check reports and experiment records): "unknown" outside a git checkout."""

from __future__ import annotations

import os
import subprocess


def git_commit(short: bool = False) -> str:
    """HEAD of the checkout holding this package (`short`: git's abbreviated hash)."""
    here = os.path.dirname(os.path.abspath(__file__))
    args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(args, cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
