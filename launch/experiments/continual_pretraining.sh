#!/usr/bin/env bash
# Continual pre-training from a pre-trained transformer (the smoke shape, pre-trained on novels),
# through wikipedia → math → code: (a) fine-tuning, (b) level-stacked HOPE-Attention (NL §7.3)
# with online CMS updates, (c) (b) with the backbone frozen; same token budget per phase.
# CE matrix, forgetting, final CE per domain, WikiText-2 bits per byte, wall time and tokens/s.
#
#   bash launch/experiments/continual_pretraining.sh            # CPU preset: ~10 minutes on 2 cores
#   bash launch/experiments/continual_pretraining.sh --gpu      # one H100: the GPU preset's model
#   bash launch/experiments/continual_pretraining.sh --help     # every flag (--steps, --dry-run, --force, ...)
#
# Outputs: runs/experiments/continual_pretraining/<preset>/; JSON results:
# launch/experiments/results/continual_pretraining[-gpu]/; then regenerates launch/experiments/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
exec "$PY" launch/experiments/study.py continual_pretraining "$@"
