#!/usr/bin/env bash
# Create (or bring up to date) a venv at the repository root with one of the two
# CPU stacks that pelk-mm is tested on (docs/installation.md):
#
#   bash tools/setup_env.sh            # latest:    .venv/, Python 3.11,
#   bash tools/setup_env.sh latest     #   torch 2.14.1 + torchvision 0.29.1
#   bash tools/setup_env.sh canonical  # canonical: .venv-canonical/, Python 3.10,
#                                      #   torch 2.1.2 + torchvision 0.16.2
#
# Both: mmcv 2.1.0 built from its sdist with its ops, mmengine 0.10.7,
# mmsegmentation 1.2.2, mmdet 3.3.0, mmpretrain 1.2.0, onnx / onnxruntime /
# onnxscript, matplotlib, pelk_mm (editable): what `pip install -e .[all]`
# declares, pinned per stack in requirements/<stack>.txt; latest only: mmdeploy
# 1.3.1 with --no-deps (its protobuf pin conflicts with onnx's; the packages it
# imports are in requirements/latest.txt). PYTHON=... overrides
# the interpreter the venv is created with.
#
# Idempotent: a second run only checks the venv's stamp and returns in about a
# second. mmcv 2.1.0 has no wheel on PyPI (and none at all for torch 2.14), so it
# is compiled once per stack (latest: about 11 min on 2 idle cores, 20 when they
# are busy; its C++ standard is raised to C++20 for torch 2.14's headers;
# canonical: built unpatched) and the wheel is cached outside the checkout, keyed
# by mmcv, torch and Python versions:
#   ${PELK_MM_CACHE:-~/.cache/pelk-mm}/wheels/mmcv-2.1.0-torch<T>-cp<XY>/
# The wheel enters the cache by an atomic rename, and a cached wheel that is not a
# valid zip archive is deleted and rebuilt, so an interrupted setup never poisons
# later ones. A machine without that cache still works; it just builds.
#
# Users with their own (CUDA) OpenMMLab environment do not need this script at all:
#   pip install -e .[seg]    (or [det], [mm], [all]; see docs/installation.md)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${PELK_MM_CACHE:-$HOME/.cache/pelk-mm}"
MMCV_VERSION=2.1.0

log() { echo "[setup_env] $*" >&2; }

# python310: pyenv's Python 3.10 when pyenv has one (its bare `python3.10` shim
# refuses a version that is not selected), else python3.10 on the PATH.
python310() {
    local found
    found=$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.10.*/bin/python3.10 \
        2>/dev/null | sort -V | tail -1)
    echo "${found:-python3.10}"
}

# select_stack STACK: set the venv, interpreter, pins and mmcv build of STACK.
select_stack() {
    case "$1" in
        latest)
            VENV="$ROOT/.venv"
            PYTHON=${PYTHON:-python3.11}
            TORCH_VERSION=2.14.1
            TORCHVISION_VERSION=0.29.1
            MMCV_CXX20=1  # torch 2.14 headers require C++20
            # mmdeploy pins protobuf<=3.20.2, which current onnx refuses: it
            # is installed without its dependencies; the few it imports are
            # pinned in requirements/latest.txt (tests/test_mmdeploy.py)
            MMDEPLOY_VERSION=1.3.1
            ;;
        canonical)
            VENV="$ROOT/.venv-canonical"
            PYTHON=${PYTHON:-$(python310)}
            TORCH_VERSION=2.1.2
            TORCHVISION_VERSION=0.16.2
            MMDEPLOY_VERSION=  # not installed: untested on torch 2.1
            MMCV_CXX20=0  # mmcv 2.1.0 builds as released against torch 2.1
            ;;
        *)
            log "unknown stack '$1': expected 'latest' (default) or 'canonical'"
            return 2
            ;;
    esac
    STACK=$1
    REQUIREMENTS="$ROOT/requirements/$STACK.txt"
    PY="$VENV/bin/python"
}

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
    if [ "$MMCV_CXX20" = 1 ]; then
        # mmcv 2.1.0 asks for c++14 / c++17.
        sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$src/setup.py"
        grep -q 'c++20' "$src/setup.py" || { log "could not raise mmcv's C++ standard"; return 1; }
    fi
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$1" .)
}

# stamp_hash: what the stack's stamp ($VENV/.pelk_mm_stamp) must hold. Any
# change to this script, the stack's requirements or setup.py invalidates it.
stamp_hash() {
    cat "$ROOT/tools/setup_env.sh" "$REQUIREMENTS" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}

# wheel_cache_dir: the cache folder of mmcv wheels for this stack's mmcv, torch
# and Python ($PY) versions.
wheel_cache_dir() {
    local pytag
    pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    echo "$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$pytag"
}

main() {
    select_stack "${1:-latest}" || exit 2
    TMP_PATHS=()
    trap 'rm -rf "${TMP_PATHS[@]}"' EXIT
    if [ ! -x "$PY" ]; then
        log "creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    PIP=("$PY" -m pip --disable-pip-version-check)

    local stamp="$VENV/.pelk_mm_stamp" want
    want=$(stamp_hash)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "$STACK stack up to date ($VENV)"
        return 0
    fi

    # setuptools<81 keeps pkg_resources, which mmcv's setup.py and mmengine's
    # `mmseg::`-style base configs import.
    # torch asks for setuptools too: pin both in one resolve. numpy < 2 from the
    # start: torch 2.1 and mmcv 2.1 are compiled against numpy 1.
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
        'setuptools<81' 'numpy<2' wheel ninja

    local wheels wheel dist
    wheels=$(wheel_cache_dir)
    if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
        if ! wheel=$(cached_wheel "$wheels"); then
            log "no cached mmcv wheel in $wheels: building mmcv $MMCV_VERSION with ops (10-20 min on 2 cores)"
            dist=$(mktemp -d)
            TMP_PATHS+=("$dist")
            build_mmcv_wheel "$dist"
            cache_wheel "$dist"/mmcv-*.whl "$wheels"
            wheel=$(cached_wheel "$wheels")
        fi
        log "installing mmcv from $wheel"
        "${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
    fi

    "${PIP[@]}" install -q -r "$REQUIREMENTS" "mmcv==$MMCV_VERSION" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" 'setuptools<81'
    if [ -n "${MMDEPLOY_VERSION:-}" ]; then
        "${PIP[@]}" install -q --no-deps "mmdeploy==$MMDEPLOY_VERSION"
        "$PY" -c "import mmdeploy.apis" || { log "mmdeploy does not import"; exit 1; }
    fi
    "${PIP[@]}" install -q --no-deps -e "$ROOT"
    "$PY" -c "import mmcv.ops, mmseg, mmdet, mmpretrain, onnxruntime, onnxscript, matplotlib, pelk_mm" \
        || { log "the installed stack does not import"; exit 1; }
    echo "$want" > "$stamp"
    log "$STACK stack ready: $VENV"
}

# Sourcing the script (tests/test_setup_env.py) only defines the functions:
# `return` succeeds only in a sourced file.
if ! (return 0 2>/dev/null); then
    main "$@"
fi
