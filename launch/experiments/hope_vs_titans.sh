#!/usr/bin/env bash
# HOPE (variant hope) vs Titans vs Transformer++ at a matched token budget and parameter count:
# held-out perplexity per domain over checkpoints, zero-shot suite, passkey, NIAH, continual matrix.
#
#   bash launch/experiments/hope_vs_titans.sh            # CPU preset: minutes on 2 cores
#   bash launch/experiments/hope_vs_titans.sh --gpu      # one H100: pilot shape (512x12), seq 2048, tokens/s
#   bash launch/experiments/hope_vs_titans.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/hope_vs_titans/<preset>/; JSON results: launch/experiments/results/hope_vs_titans[-gpu]/;
# then regenerates launch/experiments/RESULTS.md. PYTHON=/path/to/python overrides .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py hope_vs_titans "$@"
