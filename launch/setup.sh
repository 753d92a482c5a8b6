#!/usr/bin/env bash
# Set-up: find a Python >= 3.12, create .venv, install nested_jax with its dev extra.
# Idempotent: reuses .venv and skips pip when pyproject.toml has not changed.
#   PYTHON=/path/to/python3.12 bash launch/setup.sh   # use exactly this interpreter
#   EXTRAS=dev,cuda13 bash launch/setup.sh             # GPU machines: cuda13 (newest jax) or
#                                                      # cuda12 (jax 0.12.0.1), by the driver
#   EXTRAS=dev,gpu-aot bash launch/setup.sh            # compile for an H100/H200 without a GPU
#                                                      # (benchmarks.cost_model; ~1.3 GB)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
EXTRAS="${EXTRAS:-dev}"

ok_python() {  # prints the interpreter path if it runs and is >= 3.12
  local py="$1"
  [ -n "$py" ] || return 1
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1 || return 1
  "$py" -c 'import sys; print(sys.executable)'
}

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    ok_python "$PYTHON" && return 0
    echo "error: PYTHON=$PYTHON is not a working Python >= 3.12 ($("$PYTHON" --version 2>&1 || echo 'not runnable'))." >&2
    return 1
  fi
  local c
  for c in python3.13 python3.12 python3 python; do
    if command -v "$c" >/dev/null 2>&1; then ok_python "$(command -v "$c")" && return 0; fi
  done
  # pyenv: shims refuse unselected versions, so call the installed interpreters directly.
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  roots+=("$HOME/.pyenv")
  for r in "${roots[@]}"; do
    for c in $(ls -d "$r"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
      ok_python "$c/bin/python3" && return 0
    done
  done
  for c in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9] /opt/python*/bin/python3; do
    [ -x "$c" ] && ok_python "$c" && return 0
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && ok_python "$VENV/bin/python" >/dev/null; then
  PY_VENV="$VENV/bin/python"
else
  if ! BASE_PY="$(find_python)"; then
    cat >&2 <<MSG
error: nested_jax needs Python >= 3.12 (jax >= 0.11 does; on 3.11 pip silently installs
an older jax). None was found on PATH, in pyenv or in /usr/bin.
Fix: install one (e.g. 'pyenv install 3.12') or point to it: PYTHON=/path/to/python3.12 bash launch/setup.sh
MSG
    exit 1
  fi
  echo "[setup] creating $VENV with $BASE_PY ($("$BASE_PY" --version 2>&1))"
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
  PY_VENV="$VENV/bin/python"
fi

STAMP="$VENV/.nested_jax_installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY_VENV" -c 'import nested_jax, jax' >/dev/null 2>&1; then
  echo "[setup] $VENV is up to date ($("$PY_VENV" --version))"
else
  echo "[setup] installing nested_jax[$EXTRAS] into $VENV"
  "$PY_VENV" -m pip install --quiet --upgrade pip
  "$PY_VENV" -m pip install --quiet -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
"$PY_VENV" -c 'import jax, flax; print(f"[setup] ready: jax {jax.__version__}, flax {flax.__version__}")'
