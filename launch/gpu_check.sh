#!/usr/bin/env bash
# Everything worth measuring on one GPU, in at most 8 minutes on an H100/H200 (so a rerun
# fits a 15-minute lease), then summary.json + a markdown section for benchmarks/RESULTS.md.
#
#   bash launch/gpu_check.sh [--dry-run] [--cpu-smoke] [--unrolled] [--output DIR]
#
# Steps (each with its own time limit inside the 8-minute budget; a failed or timed-out
# step is recorded and the rest still run):
#   doctor       python -m nested_jax.doctor
#   throughput   benchmarks.train_throughput at the pilot shape (512×12, seq 2048, batch 6,
#                bf16), one process per variant: tokens/s, MFU, peak GPU memory (hope twice:
#                its chunk scans as Pallas kernels, the default on a GPU, and as XLA's; the
#                online variants with their segment scan as a loop, for a short compile)
#   train        a short configs/pilot_smoke.py training (loss must fall, no non-finite step)
#   scan_chunks  linear, MLP and HOPE DGD memories, chunk 16 / 64, bf16 inputs, vs token loop
#   cost_model   only when no projection is committed (benchmarks/out/cost_pilot/results.json,
#                compiled for the H100 deviceless): the report puts it next to the measurement
#   scaling      2+ GPUs only: the data-parallel step on all GPUs against one
#   report       benchmarks.gpu_check_report → DIR/summary.json, DIR/results_section.md,
#                DIR/bundle.tgz (every small file of the run, for copying back)
# --unrolled instead times the online variants as configs/pilot.py has them (16 segments
# unrolled: minutes of compile each, ≤ 600 s per step, 10-minute budget; doctor + throughput
# + report only; default DIR benchmarks/out/gpu_check_unrolled).
#
# --dry-run prints the commands only. --cpu-smoke runs the same steps at toy sizes on the CPU
# (a few minutes; tests/test_gpu_check.py runs it). Default DIR: benchmarks/out/gpu_check
# (benchmarks/out/gpu_check_cpu_smoke with --cpu-smoke).
#
# Missing Python packages (a GPU image without grain, ml-collections, …) are installed from
# the wheels in .whl/ (fetch them beforehand with launch/fetch_gpu_wheels.sh) into
# $NJ_SITE (default /tmp/site) and put on PYTHONPATH; nothing is installed when every
# dependency of pyproject.toml is importable already. PYTHON=... picks the interpreter
# (default: .venv/bin/python if present, else python3).
#
# On a lent device machine (carry .whl; $OUT comes back, 8 files at most):
#   bash launch/gpu_check.sh --output /tmp/gc; cp /tmp/gc/summary.json /tmp/gc/results_section.md /tmp/gc/bundle.tgz $OUT/
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DRY=0
CPU=0
UNROLLED=0
OUTPUT=""
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --cpu-smoke) CPU=1 ;;
    --unrolled) UNROLLED=1 ;;
    --output) OUTPUT="$2"; shift ;;
    --output=*) OUTPUT="${1#--output=}" ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --dry-run, --cpu-smoke, --unrolled, --output DIR)" >&2
       exit 2 ;;
  esac
  shift
done
if [ "$CPU" = 1 ] && [ "$UNROLLED" = 1 ]; then
  echo "error: --unrolled times the pilot's unrolled GPU steps; it does not combine with --cpu-smoke" >&2
  exit 2
fi
if [ -z "$OUTPUT" ]; then
  OUTPUT="benchmarks/out/gpu_check"
  [ "$CPU" = 1 ] && OUTPUT="benchmarks/out/gpu_check_cpu_smoke"
  [ "$UNROLLED" = 1 ] && OUTPUT="benchmarks/out/gpu_check_unrolled"
fi
case "$OUTPUT" in /*) ;; *) OUTPUT="$ROOT/$OUTPUT" ;; esac
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"  # 8 minutes on the GPU
[ "$CPU" = 1 ] && BUDGET_S="${GPU_CHECK_BUDGET_S:-1200}"  # a loaded 2-core CPU needs longer
[ "$UNROLLED" = 1 ] && BUDGET_S="${GPU_CHECK_BUDGET_S:-600}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SITE="${NJ_SITE:-/tmp/site}"
# titans and hope run their chunk scans as Pallas kernels on a GPU (model.titans.kernel,
# model.selfmod.kernel = auto); the same step with XLA's chunk scans follows each, so one run
# measures both. The online variants run their 16 segments as a loop
# (online.unroll_segments=1: a compile within the steps' limits); the pilot's own program
# unrolls them (configs/pilot.py: minutes of compile): `--unrolled` times those.
LOOP="+model.online.unroll_segments=1"
VARIANTS="transformer titans titans+model.titans.kernel=xla hope_attention$LOOP hope$LOOP hope+model.selfmod.kernel=xla$LOOP hope_hybrid$LOOP"
[ "$UNROLLED" = 1 ] && VARIANTS="hope_attention hope_hybrid hope"
if [ "$CPU" = 1 ]; then
  export JAX_PLATFORMS=cpu
  GPUS=0
  VARIANTS="transformer hope_attention"  # the two quickest to compile: same code path
else
  GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
  # A rerun on the same machine (e.g. after a timeout) reuses the compiled steps.
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/nested_jax_xla_cache}"
fi

say() { echo "[gpu_check] $*"; }
quote() {  # the command as one line; arguments with spaces or shell characters in quotes
  local a out=""
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+="$a "; else out+="'$a' "; fi
  done
  printf '%s' "${out% }"
}

# ----------------------------------------------------------------------- dependencies
MISSING_PY='import importlib.metadata as md, re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
miss = []
for d in deps:
    name = re.match(r"[A-Za-z0-9_.\-]+", d).group(0)
    try:
        md.version(name)
    except md.PackageNotFoundError:
        miss.append(name)
print(" ".join(miss))'
INSTALL=( "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
          --target "$SITE" )
if [ "$DRY" = 1 ]; then
  say "dry run: commands only (output $OUTPUT, python $PY, GPUs $GPUS)"
  echo "if a pyproject dependency is missing: $(quote "${INSTALL[@]}") .whl/*.whl; PYTHONPATH=$SITE"
else
  missing=$("$PY" -c "$MISSING_PY" 2>/dev/null || echo "?")
  if [ -n "$missing" ]; then
    if ls .whl/*.whl >/dev/null 2>&1; then
      say "missing: $missing; installing the wheels in .whl/ into $SITE"
      "${INSTALL[@]}" .whl/*.whl || { echo "error: pip could not install .whl/*.whl" >&2; exit 1; }
      export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
      missing=$("$PY" -c "$MISSING_PY" 2>/dev/null || echo "?")
    fi
    if [ -n "$missing" ]; then
      echo "error: Python packages missing: $missing. Run 'bash launch/fetch_gpu_wheels.sh' where" \
           "pip reaches a registry and carry .whl/ here (or install them)." >&2
      exit 1
    fi
  fi
  mkdir -p "$OUTPUT/logs"
  : > "$OUTPUT/steps.jsonl"
fi

# ---------------------------------------------------------------------------- steps
START=$(date +%s)
run_step() {  # run_step NAME LIMIT_S CMD...: log, time limit, record in steps.jsonl
  local name="$1" limit="$2"; shift 2
  if [ "$DRY" = 1 ]; then
    echo "$name (≤ ${limit} s): $(quote "$@")"
    return 0
  fi
  local used=$(( $(date +%s) - START )) left
  left=$(( BUDGET_S - used ))
  local status rc=0 t0 t1
  t0=$(date +%s)
  if [ "$left" -lt 15 ]; then
    status="skipped (over the ${BUDGET_S} s budget)"
  else
    [ "$limit" -gt "$left" ] && limit="$left"
    say "$name (≤ ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUTPUT/logs/$name.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then status="ok"; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      status="timeout"; else status="failed (exit $rc)"; fi
  fi
  t1=$(date +%s)
  say "$name: $status in $(( t1 - t0 )) s"
  if [ "$status" != "ok" ] && [ -f "$OUTPUT/logs/$name.log" ]; then tail -n 15 "$OUTPUT/logs/$name.log"; fi
  "$PY" -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "status": sys.argv[2],
"seconds": float(sys.argv[3]), "command": sys.argv[4]}))' \
    "$name" "$status" "$(( t1 - t0 ))" "$*" >> "$OUTPUT/steps.jsonl"
}

run_step doctor 60 "$PY" -m nested_jax.doctor

if [ "$CPU" != 1 ] && [ "$UNROLLED" != 1 ]; then  # the Triton kernels against XLA's chunk scans on this GPU, values
  # and gradients (XLA's dots in full float32, as the kernels'; the CPU runs these tests
  # through Pallas's interpreter, which cannot see a missing barrier)
  run_step kernels_vs_xla 180 env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q \
    -p no:cacheprovider -o addopts= tests/test_titans_fused.py tests/test_selfmod_fused.py \
    -k equals_the_xla
fi

if [ "$CPU" = 1 ]; then  # toy sizes: train_throughput's smoke preset is the pilot_smoke shape
  TP=(--preset smoke --train-steps 0 --budget 1); TP_LIMIT=120
else
  TP=(--preset pilot --train-steps 0 --budget 5); TP_LIMIT=120
  [ "$UNROLLED" = 1 ] && TP_LIMIT=600
fi
for v in $VARIANTS; do
  tag="${v//[^A-Za-z0-9_]/_}"  # hope+model.selfmod.kernel=xla → hope_model_selfmod_kernel_xla
  run_step "throughput_$tag" "$TP_LIMIT" "$PY" -m benchmarks.train_throughput "${TP[@]}" \
    --variants "$v" --output "$OUTPUT/throughput/$tag"
done

if [ "$UNROLLED" != 1 ]; then  # the rest of the check (not with --unrolled)
TRAIN=("$PY" -m nested_jax.train --config configs/pilot_smoke.py --workdir "$OUTPUT/train_pilot_smoke"
       --config.logging.progress_bar=False)
if [ "$CPU" = 1 ]; then
  TRAIN+=(--config.train.steps=10 --config.train.log_every=1 --config.eval.every_steps=10
          --config.checkpoint.every_steps=10)
fi
[ "$DRY" = 1 ] || rm -rf "$OUTPUT/train_pilot_smoke"  # a fresh run, not a resume
run_step train 150 "${TRAIN[@]}"
[ "$DRY" = 1 ] || rm -rf "$OUTPUT/train_pilot_smoke/checkpoints"  # keep metrics and plots only

if [ "$CPU" = 1 ]; then
  SC=(--preset quick --chunks 16)
else
  SC=(--preset full --chunks 16,64)
fi
run_step scan_chunks 150 "$PY" -m benchmarks.scan_chunks "${SC[@]}" --memories linear,mlp,hope \
  --dtype bfloat16 --output "$OUTPUT/scan_chunks"

if [ "$CPU" = 1 ]; then
  run_step cost_model 150 "$PY" -m benchmarks.cost_model --preset pilot_smoke \
    --variants "${VARIANTS// /,}" --device cpu --output "$OUTPUT/cost_model"
elif [ ! -f benchmarks/out/cost_pilot/results.json ] || [ "$DRY" = 1 ]; then
  [ -f benchmarks/out/cost_pilot/results.json ] && echo "(cost_model runs only when" \
    "benchmarks/out/cost_pilot/results.json is missing; it is there)"
  run_step cost_model 240 env JAX_PLATFORMS=cpu "$PY" -m benchmarks.cost_model --preset pilot \
    --variants "${VARIANTS// /,}" --device h100 --output "$OUTPUT/cost_model"
else
  say "cost_model: using the committed projection benchmarks/out/cost_pilot/results.json"
fi

if [ "$CPU" = 1 ]; then  # two simulated CPU devices: the path runs, the numbers mean nothing
  run_step scaling 90 "$PY" -m benchmarks.scaling --devices 1,2 --variants transformer \
    --preset tiny --steps 2 --min-rounds 1 --max-rounds 2 --budget 1 --output "$OUTPUT/scaling"
elif [ "$GPUS" -ge 2 ]; then
  run_step scaling 150 "$PY" -m benchmarks.scaling --devices "1,$GPUS" \
    --variants transformer,hope_attention --preset base --dtype bfloat16 --budget 5 \
    --output "$OUTPUT/scaling"
elif [ "$DRY" = 1 ]; then
  echo "scaling (2+ GPUs only; $GPUS visible): $(quote "$PY" -m benchmarks.scaling --devices 1,N \
    --variants transformer,hope_attention --preset base --dtype bfloat16 --budget 5 \
    --output "$OUTPUT/scaling")"
else
  say "scaling: skipped ($GPUS GPU visible; needs 2+)"
fi
fi  # not --unrolled

REPORT=("$PY" -m benchmarks.gpu_check_report --output "$OUTPUT"
        --command "bash launch/gpu_check.sh $ARGS")
[ "$CPU" = 1 ] && REPORT+=(--cpu-smoke)
if [ "$DRY" = 1 ]; then
  echo "report: $(quote "${REPORT[@]}")"
  exit 0
fi
"${REPORT[@]}" || { echo "error: the report failed" >&2; exit 1; }
(cd "$OUTPUT" && tar czf bundle.tgz --exclude=bundle.tgz --exclude='*.npy' --exclude=checkpoints \
  --exclude=tensorboard . 2>/dev/null) || true
say "done in $(( $(date +%s) - START )) s: $OUTPUT/summary.json, results_section.md, bundle.tgz"
