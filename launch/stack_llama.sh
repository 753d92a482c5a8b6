#!/usr/bin/env bash
# A Hugging Face Llama-family model (Llama 3.x 1B/3B, Qwen2.5, SmolLM, ...) → HOPE-Attention by
# ad-hoc level stacking (NL §7.3) → continual pre-training on every GPU of this machine (FSDP).
#
#   bash launch/stack_llama.sh HF_DIR OUT [--periods 512,2048] [--lr 1e-3] [--config.a.b=v ...]
#   bash launch/stack_llama.sh ~/models/Llama-3.2-1B runs/llama1b --config.data.dataset=fineweb.json
#   bash launch/stack_llama.sh ~/models/Llama-3.2-1B runs/llama1b --dry-run   # print the commands
# A stacked 1B fits 8 H100s at 1 sequence per GPU; a stacked 3B does not fit an H100 yet (projected
# 196 GiB per GPU at 1 sequence): benchmarks/RESULTS.md "Stacked Llama on H100s".
#
# Steps (each skipped when its output exists, so a rerun continues training):
#   1. python -m nested_jax.convert import-hf --input HF_DIR --output OUT/import
#   2. python -m nested_jax.convert stack --checkpoint OUT/import --periods P --lr LR --seq-len 4096 --output OUT/stacked
#   3. launch/train_local_gpus.sh configs/stack_llama.py:OUT/stacked OUT/train [--config.* flags]
# The preset (configs/stack_llama.py) says every training value and its source; frozen backbone:
#   --config.model.freeze='("embed.*","blocks.attn.*","blocks.attn_norm.*","final_norm.*")'
# Several hosts: run step 3 with launch/train_multihost.sh and the same --config.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
HF="$1"; OUT="$2"; shift 2
PERIODS=512,2048; LR=1e-3; DRY=0; REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --periods) PERIODS="$2"; shift 2 ;;
    --lr) LR="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --config.*) REST+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (expected --periods, --lr, --dry-run or --config.a.b=v)" >&2; exit 2 ;;
  esac
done
[ "$DRY" = 1 ] || [ -x "$PY" ] || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
run() { echo "+ $*" >&2; [ "$DRY" = 1 ] || "$@"; }
cd "$ROOT"
[ -d "$OUT/import" ] || run "$PY" -m nested_jax.convert import-hf --input "$HF" --output "$OUT/import"
[ -d "$OUT/stacked" ] || run "$PY" -m nested_jax.convert stack --checkpoint "$OUT/import" \
  --periods "$PERIODS" --lr "$LR" --seq-len 4096 --output "$OUT/stacked"
run bash launch/train_local_gpus.sh "configs/stack_llama.py:$OUT/stacked" "$OUT/train" "${REST[@]}"
