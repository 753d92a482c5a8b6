#!/usr/bin/env bash
# Download the wheels a GPU image lacks into .whl/ (or DIR), for launch/gpu_check.sh to
# install there without a network:
#
#   bash launch/fetch_gpu_wheels.sh [DIR]          # default DIR = .whl (git-ignored)
#
# Which: every dependency in pyproject.toml that the lent GPU image does not hold
# (its package list is DEVICE_HAS below, from the device notes), then, recursively, every
# Requires-Dist of those wheels (extras skipped, markers read for CPython 3.12 on Linux
# x86-64) that the image lacks too. Versions: the ones installed in this checkout's .venv
# (tested together), else the newest. Wheels are for CPython 3.12, manylinux x86-64
# (grain needs manylinux_2_24). One version of each project is kept.
# Needs pip and a package registry (PYTHON=... picks the interpreter; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEST="${1:-.whl}"
mkdir -p "$DEST"
if [ -d .git/info ] && ! grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null; then
  echo "/$DEST/" >> .git/info/exclude  # keep the wheels out of git (they travel as `carry`)
fi
"$PY" - "$DEST" <<'EOF'
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
import zipfile

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement

DEST = sys.argv[1]
# Python packages on the lent GPU image (nvidia-h200 'cuda' image, device notes KINDS.md).
DEVICE_HAS = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


have = {norm(n) for n in DEVICE_HAS}
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
todo = [Requirement(d).name for d in deps if norm(Requirement(d).name) not in have]
done: set[str] = set()


def wheel_of(name: str) -> str | None:
    key = norm(name).replace("-", "_")
    for w in os.listdir(DEST):
        if w.endswith(".whl") and norm(w.split("-")[0]).replace("-", "_") == key:
            return os.path.join(DEST, w)
    return None


while todo:
    name = todo.pop(0)
    if norm(name) in done:
        continue
    done.add(norm(name))
    wheel = wheel_of(name)
    if wheel is None:
        try:
            spec = f"{name}=={md.version(name)}"
        except md.PackageNotFoundError:
            spec = name
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", DEST, spec]
        for p in PLATFORMS:
            cmd[4:4] = ["--platform", p]
        subprocess.run(cmd, check=True)
        wheel = wheel_of(name)
        if wheel is None:
            sys.exit(f"error: pip downloaded no wheel for {spec}")
    print(f"{os.path.basename(wheel)}")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue  # an extra, or another platform / Python
        if norm(req.name) not in have and norm(req.name) not in done:
            todo.append(req.name)
print(f"wheels in {DEST}/: the GPU image lacked {len(done)} project(s): "
      + ", ".join(sorted(done)))
EOF
