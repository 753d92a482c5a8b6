#!/usr/bin/env bash
# Multi-host training: run the same command on every host, changing only HOST_ID.
# Process HOST_ID of NUM_HOSTS joins the job at COORDINATOR (host:port of host 0, reachable
# from all hosts); each process drives all of its local GPUs, the mesh spans every GPU of
# every host, each host reads its own slice of the data, process 0 writes the metrics, and
# all processes write the Orbax checkpoint together: WORKDIR must be on a filesystem that
# every host sees (NFS, Lustre, GCS fuse, ...). train.batch_size is the GLOBAL batch.
#
#   bash launch/train_multihost.sh COORDINATOR NUM_HOSTS HOST_ID CONFIG WORKDIR [--config.a.b=v ...]
#   host0$ bash launch/train_multihost.sh host0:8476 2 0 configs/smoke.py /shared/runs/mh
#   host1$ bash launch/train_multihost.sh host0:8476 2 1 configs/smoke.py /shared/runs/mh
#
# Try it on one machine (N CPU processes, gloo collectives, one device each):
#   bash launch/train_multihost.sh --local 2 configs/smoke.py runs/mh_local [--config...]
#
# PYTHON=/path/to/python overrides the interpreter (default: .venv from launch/setup.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ -x "$PY" ] || { echo "error: no Python at $PY; run launch/setup.sh or set PYTHON=." >&2; exit 2; }
cd "$ROOT"

if [ "${1:-}" = "--local" ]; then
  [ $# -ge 4 ] || usage
  N="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
  PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
  for ((i = 0; i < N; i++)); do
    JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=1" \
    NJ_COORDINATOR="localhost:$PORT" NJ_NUM_PROCESSES="$N" NJ_PROCESS_ID="$i" \
      "$PY" -m nested_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@" \
      > >(sed "s/^/[p$i] /") 2>&1 &
    pids+=("$!")
  done
  status=0
  for pid in "${pids[@]}"; do
    wait "$pid" || { status=$?; kill "${pids[@]}" 2>/dev/null || true; }
  done
  exit "$status"
fi

[ $# -ge 5 ] || usage
export NJ_COORDINATOR="$1" NJ_NUM_PROCESSES="$2" NJ_PROCESS_ID="$3"
CONFIG="$4"; WORKDIR="$5"; shift 5
case "$NJ_COORDINATOR" in *:*) ;; *) echo "error: COORDINATOR must be host:port, got '$NJ_COORDINATOR'." >&2; exit 2;; esac
echo "[launch] process $NJ_PROCESS_ID of $NJ_NUM_PROCESSES, coordinator $NJ_COORDINATOR" >&2
exec "$PY" -m nested_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
