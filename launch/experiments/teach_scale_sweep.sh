#!/usr/bin/env bash
# HOPE teach_scale sweep {0, 0.05, 0.10, 0.20} with the report's warm-up/decay schedule
# (final losses, non-finite steps), plus AdamW vs Muon vs M3 at teach_scale 0.10.
#
#   bash launch/experiments/teach_scale_sweep.sh            # CPU preset: minutes on 2 cores
#   bash launch/experiments/teach_scale_sweep.sh --gpu      # one H100: pilot shape (512x12), seq 2048, tokens/s
#   bash launch/experiments/teach_scale_sweep.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/teach_scale_sweep/<preset>/; JSON results: launch/experiments/results/teach_scale_sweep[-gpu]/;
# then regenerates launch/experiments/RESULTS.md. PYTHON=/path/to/python overrides .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py teach_scale_sweep "$@"
