#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (the last release) against the PyTorch of the active Python.
#
# Horovod 0.28.1 asks CMake for C++14, but current PyTorch headers require C++17, and pip's build
# isolation hides the installed torch from the build. This script therefore:
#   1. downloads the pinned sdist, 2. patches CMAKE_CXX_STANDARD 14 -> 17,
#   3. builds a wheel without build isolation (so it compiles against the installed torch),
#   4. caches the wheel keyed by Horovod version, torch version, Python tag, GPU variant and build type,
#   5. installs the wheel.
# Containers (containers/*) call the same script, so laptops, CI and images build Horovod the same way.
#
# Usage: build-horovod.sh [--gpu cpu|rocm|cuda] [--python PYTHON] [--cache DIR] [--wheel-only]
#   --gpu      collective backend for GPU tensors: cpu (Gloo+MPI only, default), rocm (RCCL), cuda (NCCL)
#   --python   interpreter whose environment gets Horovod (default: python on PATH)
#   --cache    wheel cache (default: $HOROVOD_WHEEL_CACHE or ~/.cache/cookiecutter-snakemake-ml/wheels)
#   --wheel-only  build/cache the wheel but do not install it
# Needs: a C++17 compiler (g++), cmake, and for the MPI controller an MPI (e.g. Debian libopenmpi-dev openmpi-bin).
set -euo pipefail

HOROVOD_VERSION=0.28.1
BUILD_TYPE=Release # CMake build type (setup.py would use RelWithDebInfo); part of the wheel cache key
gpu=cpu
python=python
cache="${HOROVOD_WHEEL_CACHE:-$HOME/.cache/cookiecutter-snakemake-ml/wheels}"
install=1

die() { echo "build-horovod: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu="${2:-}"; shift 2 ;;
    --python) python="${2:-}"; shift 2 ;;
    --cache) cache="${2:-}"; shift 2 ;;
    --wheel-only) install=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (allowed: --gpu cpu|rocm|cuda, --python PYTHON, --cache DIR, --wheel-only)" ;;
  esac
done

case "$gpu" in
  cpu|rocm|cuda) ;;
  *) die "--gpu '$gpu' is not one of: cpu, rocm, cuda" ;;
esac

command -v "$python" >/dev/null 2>&1 || die "python interpreter '$python' not found"
for tool in cmake g++; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required to build Horovod (Debian: apt-get install cmake g++)"
done

torch_version=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
  || die "PyTorch is not installed for '$python'; install the project's pinned torch first"
py_tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key="horovod-${HOROVOD_VERSION}_torch-${torch_version//+/_}_${py_tag}_${gpu}_${BUILD_TYPE,,}"
wheel_dir="$cache/$key"

if "$python" -c "import horovod.torch, sys; import horovod; sys.exit(horovod.__version__ != '$HOROVOD_VERSION')" 2>/dev/null \
   && [ "$install" = 1 ]; then
  echo "build-horovod: Horovod $HOROVOD_VERSION already importable with torch $torch_version"
  exit 0
fi

wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "build-horovod: building Horovod $HOROVOD_VERSION for torch $torch_version ($py_tag, $gpu); about 4 min on 2 cores"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip install --quiet "setuptools<81" wheel
  "$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    grep -q 'CMAKE_CXX_STANDARD 14' "$f" || die "expected 'CMAKE_CXX_STANDARD 14' in $f (unexpected sdist)"
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$f"
  done
  # Release instead of setup.py's fixed RelWithDebInfo: the same -O3 -DNDEBUG code without debug information,
  # which makes compiling against the PyTorch headers much slower (docs/benchmarks.md, set-up time).
  grep -q "else 'RelWithDebInfo'" "$src/setup.py" || die "expected the RelWithDebInfo build type in $src/setup.py"
  sed -i "s/else 'RelWithDebInfo'/else '$BUILD_TYPE'/" "$src/setup.py"
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
  if command -v mpicxx >/dev/null 2>&1; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
  case "$gpu" in
    rocm) export HOROVOD_GPU=ROCM HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_ROCM_HOME="${ROCM_PATH:-/opt/rocm}" ;;
    cuda) export HOROVOD_GPU=CUDA HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" ;;
    cpu) ;;
  esac
  export MAKEFLAGS="-j$(nproc)"
  mkdir -p "$wheel_dir"
  "$python" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$src"
  mv "$work"/dist/horovod-*.whl "$wheel_dir"/
  wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-*.whl | head -n 1)
  echo "build-horovod: cached $wheel"
else
  echo "build-horovod: using cached $wheel"
fi

if [ "$install" = 1 ]; then
  "$python" -m pip install --quiet "$wheel"
  "$python" -c 'import horovod.torch as hvd; print("build-horovod: horovod", __import__("horovod").__version__, "gloo:", hvd.gloo_built(), "mpi:", hvd.mpi_built())'
fi
