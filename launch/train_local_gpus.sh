#!/usr/bin/env bash
# Train on every GPU of this machine with one process: shard_map data parallelism over all
# local devices (mesh.data = -1); add --config.mesh.fsdp=N to also shard parameters and
# optimizer state over groups of N GPUs. train.batch_size is the GLOBAL batch.
#
#   bash launch/train_local_gpus.sh CONFIG WORKDIR [--config.a.b=v ...]
#   bash launch/train_local_gpus.sh configs/smoke.py runs/smoke_8gpu
#   CUDA_VISIBLE_DEVICES=0,1 bash launch/train_local_gpus.sh configs/smoke.py runs/smoke_2gpu
#   NJ_CPU_DEVICES=2 bash launch/train_local_gpus.sh ...   # try it on CPU: 2 simulated devices
#
# PYTHON=/path/to/python overrides the interpreter (default: .venv from launch/setup.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
CONFIG="$1"; WORKDIR="$2"; shift 2
[ -x "$PY" ] || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
if [ -n "${NJ_CPU_DEVICES:-}" ]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="--xla_force_host_platform_device_count=${NJ_CPU_DEVICES} ${XLA_FLAGS:-}"
fi
# Each process must see all of its GPUs; never mix this with per-GPU processes.
unset NJ_COORDINATOR NJ_NUM_PROCESSES NJ_PROCESS_ID
echo "[launch] one process, devices: ${CUDA_VISIBLE_DEVICES:-all visible}${NJ_CPU_DEVICES:+ (CPU x$NJ_CPU_DEVICES)}" >&2
cd "$ROOT"
exec "$PY" -m nested_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
