#!/usr/bin/env bash
# Create (or bring up to date) .venv/ at the repository root with the CPU stack that
# pelk-mm is developed and tested on:
#   torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 built from source with its ops,
#   mmengine 0.10.7, mmsegmentation 1.2.2, mmdet 3.3.0, mmpretrain 1.2.0,
#   onnx / onnxruntime / onnxscript, matplotlib, pelk_mm (editable): what
#   `pip install -e .[all]` declares, pinned in requirements.txt.
#
# Idempotent: a second run only checks a stamp and returns in about a second.
# mmcv 2.1.0 has no wheel for torch 2.14, so it is compiled once (about 11 min on 2
# idle cores, 20 when they are busy) and the wheel is cached outside the checkout,
# keyed by mmcv, torch and Python versions:
#   ${PELK_MM_CACHE:-~/.cache/pelk-mm}/wheels/
# The wheel enters the cache by an atomic rename, and a cached wheel that is not a
# valid zip archive is deleted and rebuilt, so an interrupted setup never poisons
# later ones. A machine without that cache still works; it just builds.
#
# Users with their own (CUDA) OpenMMLab environment do not need this script at all:
#   pip install -e .[seg]    (or [det], [mm], [all]; see README "Installation")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3.11}
CACHE="${PELK_MM_CACHE:-$HOME/.cache/pelk-mm}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
PY="$VENV/bin/python"

log() { echo "[setup_env] $*" >&2; }

# valid_wheel WHEEL: whether WHEEL is a readable zip archive with intact CRCs.
valid_wheel() {
    "$PY" - "$1" <<'PYEOF'
import sys
import zipfile

try:
    with zipfile.ZipFile(sys.argv[1]) as wheel:
        sys.exit(wheel.testzip() is not None)
except (OSError, zipfile.BadZipFile):
    sys.exit(1)
PYEOF
}

# cached_wheel DIR: print the first valid mmcv-*.whl in DIR; delete invalid ones.
cached_wheel() {
    local wheel
    for wheel in "$1"/mmcv-*.whl; do
        [ -f "$wheel" ] || continue
        if valid_wheel "$wheel"; then
            echo "$wheel"
            return 0
        fi
        log "deleting the corrupt cached wheel $wheel"
        rm -f "$wheel"
    done
    return 1
}

# cache_wheel WHEEL DIR: copy WHEEL into DIR atomically. The copy is written
# under a temporary name in DIR itself (same filesystem), checked, then renamed:
# an interrupted copy leaves at most a .incoming.* file (removed on exit), which
# cached_wheel ignores.
cache_wheel() {
    local tmp
    mkdir -p "$2"
    tmp=$(mktemp "$2/.incoming.XXXXXX")
    TMP_PATHS+=("$tmp")
    cp "$1" "$tmp"
    valid_wheel "$tmp" || { rm -f "$tmp"; log "built wheel $1 is not a valid zip"; return 1; }
    mv -f "$tmp" "$2/$(basename "$1")"
}

# build_mmcv_wheel OUT_DIR: build mmcv $MMCV_VERSION with its ops into OUT_DIR.
build_mmcv_wheel() {
    local build src
    build=$(mktemp -d)
    TMP_PATHS+=("$build")
    # Even fetching the sdist runs its setup.py, which imports pkg_resources and torch.
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$build" "mmcv==$MMCV_VERSION"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch 2.14 headers require C++20; mmcv 2.1.0 asks for c++14 / c++17.
    sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$src/setup.py"
    grep -q 'c++20' "$src/setup.py" || { log "could not raise mmcv's C++ standard"; return 1; }
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$1" .)
}

main() {
    TMP_PATHS=()
    trap 'rm -rf "${TMP_PATHS[@]}"' EXIT
    if [ ! -x "$PY" ]; then
        log "creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    PIP=("$PY" -m pip --disable-pip-version-check)

    # The stamp records what this script installed; any change to the script, the
    # requirements or setup.py invalidates it.
    local stamp="$VENV/.pelk_mm_stamp" want
    want=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "environment up to date ($VENV)"
        return 0
    fi

    # setuptools<81 keeps pkg_resources, which mmcv's setup.py and mmengine's
    # `mmseg::`-style base configs import.
    # torch asks for setuptools too: pin both in one resolve.
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
        'setuptools<81' wheel ninja

    local pytag wheels wheel dist
    pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    wheels="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$pytag"
    if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
        if ! wheel=$(cached_wheel "$wheels"); then
            log "no cached mmcv wheel in $wheels: building mmcv $MMCV_VERSION with ops (about 11 min on 2 idle cores, 20 when busy)"
            dist=$(mktemp -d)
            TMP_PATHS+=("$dist")
            build_mmcv_wheel "$dist"
            cache_wheel "$dist"/mmcv-*.whl "$wheels"
            wheel=$(cached_wheel "$wheels")
        fi
        log "installing mmcv from $wheel"
        "${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
    fi

    "${PIP[@]}" install -q -r "$ROOT/requirements.txt" "mmcv==$MMCV_VERSION" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" 'setuptools<81'
    "${PIP[@]}" install -q --no-deps -e "$ROOT"
    "$PY" -c "import mmcv.ops, mmseg, mmdet, mmpretrain, onnxruntime, onnxscript, matplotlib, pelk_mm" \
        || { log "the installed stack does not import"; exit 1; }
    echo "$want" > "$stamp"
    log "environment ready: $VENV"
}

# Sourcing the script (tests/test_setup_env.py) only defines the functions:
# `return` succeeds only in a sourced file.
if ! (return 0 2>/dev/null); then
    main "$@"
fi
