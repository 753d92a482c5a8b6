#!/usr/bin/env bash
# Pilot release: train (or take, --checkpoint DIR) a pilot checkpoint, evaluate it, build the
# release bundle and verify it (plus a tamper check).
#
#   bash launch/experiments/pilot_release.sh            # CPU preset: minutes on 2 cores
#   bash launch/experiments/pilot_release.sh --gpu      # one H100: pilot shape (512x12), seq 2048, tokens/s
#   bash launch/experiments/pilot_release.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/pilot_release/<preset>/; JSON results: launch/experiments/results/pilot_release[-gpu]/;
# then regenerates launch/experiments/RESULTS.md. PYTHON=/path/to/python overrides .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py pilot_release "$@"
