#!/usr/bin/env bash
# Create (or bring up to date) .venv/ at the repository root with the CPU stack that
# pelk-mm is developed and tested on:
#   torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 built from source with its ops,
#   mmengine 0.10.7, mmsegmentation 1.2.2, mmdet 3.3.0, mmpretrain 1.2.0, pelk_mm (editable).
#
# Idempotent: a second run only checks a stamp and returns in about a second.
# mmcv 2.1.0 has no wheel for torch 2.14, so it is compiled once (12-16 min on 2 cores)
# and the wheel is cached outside the checkout, keyed by mmcv, torch and Python versions:
#   ${PELK_MM_CACHE:-~/.cache/pelk-mm}/wheels/
# A machine without that cache still works; it just builds.
#
# Users with their own (CUDA) OpenMMLab environment do not need this script at all:
#   pip install -e .
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3.11}
CACHE="${PELK_MM_CACHE:-$HOME/.cache/pelk-mm}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

log() { echo "[setup_env] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# The stamp records what this script installed; any change to the script, the
# requirements or setup.py invalidates it.
STAMP="$VENV/.pelk_mm_stamp"
WANT=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    log "environment up to date ($VENV)"
    exit 0
fi

# setuptools<81 keeps pkg_resources, which mmcv's setup.py and mmengine's
# `mmseg::`-style base configs import.
# torch asks for setuptools too: pin both in one resolve.
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    'setuptools<81' wheel ninja

PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG"
if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    if ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
        log "no cached mmcv wheel in $WHEELS: building mmcv $MMCV_VERSION with ops (12-16 min on 2 cores)"
        BUILD=$(mktemp -d)
        trap 'rm -rf "$BUILD"' EXIT
        # Even fetching the sdist runs its setup.py, which imports pkg_resources and torch.
        "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
            -d "$BUILD" "mmcv==$MMCV_VERSION"
        tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
        SRC="$BUILD/mmcv-$MMCV_VERSION"
        # torch 2.14 headers require C++20; mmcv 2.1.0 asks for c++14 / c++17.
        sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$SRC/setup.py"
        grep -q 'c++20' "$SRC/setup.py" || { log "could not raise mmcv's C++ standard"; exit 1; }
        mkdir -p "$WHEELS"
        (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
            "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$BUILD/dist" .)
        cp "$BUILD"/dist/mmcv-*.whl "$WHEELS"/
    fi
    log "installing mmcv from $WHEELS"
    "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELS"/mmcv-*.whl
fi

"${PIP[@]}" install -q -r "$ROOT/requirements.txt" "mmcv==$MMCV_VERSION" \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" 'setuptools<81'
"${PIP[@]}" install -q --no-deps -e "$ROOT"
"$PY" -c "import mmcv.ops, mmseg, mmdet, mmpretrain, pelk_mm" \
    || { log "the installed stack does not import"; exit 1; }
echo "$WANT" > "$STAMP"
log "environment ready: $VENV"
