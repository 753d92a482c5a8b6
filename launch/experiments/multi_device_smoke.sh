#!/usr/bin/env bash
# The smoke model trained on every local device (CPU: 2 simulated devices; --gpu: all GPUs),
# checkpoint verify, then every evaluation (zeroshot, niah, passkey, continual x2, memorisation).
#
#   bash launch/experiments/multi_device_smoke.sh            # CPU preset: minutes on 2 cores
#   bash launch/experiments/multi_device_smoke.sh --gpu      # one H100: pilot shape (512x12), seq 2048, tokens/s
#   bash launch/experiments/multi_device_smoke.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/multi_device_smoke/<preset>/; JSON results: launch/experiments/results/multi_device_smoke[-gpu]/;
# then regenerates launch/experiments/RESULTS.md. PYTHON=/path/to/python overrides .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py multi_device_smoke "$@"
