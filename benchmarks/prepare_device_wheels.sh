#!/usr/bin/env bash
# Download what benchmarks/device_check.py installs on a CUDA machine that has
# Python 3.12 and torch (2.11, CUDA 13) but no package registry: pure-Python
# wheels of the mm packages and of their needs that such an image lacks, and
# the mmcv 2.1.0 sdist (built there with its CPU ops: mmseg imports mmcv.ops).
# Everything lands in .whl/ (git-ignored; about 5 MiB, under the 64 MiB that
# travels with the tree).
#   usage: bash benchmarks/prepare_device_wheels.sh [DEST]   (default .whl)
set -euo pipefail
dest=${1:-.whl}
mkdir -p "$dest"
py=${PYTHON:-.venv/bin/python}  # needs torch: fetching the mmcv sdist runs its setup.py
common=(--no-deps --python-version 3.12 --implementation py --abi none
        --platform any --only-binary=:all: -d "$dest")
"$py" -m pip download -q "${common[@]}" \
    mmengine==0.10.7 mmsegmentation==1.2.2 mmpretrain==1.2.0 \
    addict==2.4.0 yapf==0.40.1 termcolor==2.4.0 platformdirs==4.3.6 \
    tomli==2.0.1 ftfy==6.2.3 wcwidth==0.2.13 mat4py==0.6.0 \
    modelindex==0.0.2 ordered-set==4.1.0 prettytable==3.11.0 \
    importlib-metadata==8.5.0 setuptools==75.8.0
"$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation \
    -d "$dest" mmcv==2.1.0
du -sh "$dest"
