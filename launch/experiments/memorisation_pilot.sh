#!/usr/bin/env bash
# Test-time memorisation pilot: zero-shot and passkey with --memorize (prompt / prompt+answer,
# 1 and 2 steps) for HOPE, Titans and Transformer++ (a no-op for the latter two).
#
#   bash launch/experiments/memorisation_pilot.sh            # CPU preset: minutes on 2 cores
#   bash launch/experiments/memorisation_pilot.sh --gpu      # one H100: pilot shape (512x12), seq 2048, tokens/s
#   bash launch/experiments/memorisation_pilot.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/memorisation_pilot/<preset>/; JSON results: launch/experiments/results/memorisation_pilot[-gpu]/;
# then regenerates launch/experiments/RESULTS.md. PYTHON=/path/to/python overrides .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py memorisation_pilot "$@"
