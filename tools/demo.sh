#!/usr/bin/env bash
# The built-in demo, no download needed (about 4 minutes on 2 idle CPU cores):
#   1. draw a small ADE20K-layout dataset       -> data/ade20k_demo/
#   2. train UperNet + a reduced PeLK on it with 40 % dynamic sparsity
#                                                (tools/train.py)
#   3. evaluate the saved checkpoint             (tools/test.py)
#   4. evaluate the same model untrained, the same way
#   5. print both mIoUs, and the sparsity of the trained backbone measured in
#      the checkpoint with how often its masks changed during training
# Usage: bash tools/demo.sh [WORK_DIR]   (default: work_dirs/demo)
# WORK_DIR is emptied first only if an earlier run of this script made it (it
# holds the marker file .pelk_demo_work_dir); any other existing non-empty
# directory is refused.
# PYTHON selects the interpreter (default: .venv/bin/python if present).
set -euo pipefail

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    echo "usage: bash tools/demo.sh [WORK_DIR]   (default: work_dirs/demo)" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
CONFIG=configs/demo/upernet_pelk_demo_ade20k.py
DATA=data/ade20k_demo
WORK_DIR=${1:-work_dirs/demo}
MARKER=.pelk_demo_work_dir
if [ -z "$WORK_DIR" ]; then
    echo "tools/demo.sh: WORK_DIR must not be empty" >&2
    exit 2
fi
if [ -e "$WORK_DIR" ]; then
    if [ -f "$WORK_DIR/$MARKER" ]; then
        rm -rf -- "$WORK_DIR"  # made by an earlier run of this script
    elif [ -d "$WORK_DIR" ] && [ -z "$(ls -A -- "$WORK_DIR")" ]; then
        :  # an empty directory: use it
    else
        echo "tools/demo.sh: refusing to use $WORK_DIR: it exists and was not" \
             "made by tools/demo.sh (no $MARKER file in it). Pass a new or" \
             "empty directory, or remove it yourself." >&2
        exit 2
    fi
fi
mkdir -p -- "$WORK_DIR"
touch -- "$WORK_DIR/$MARKER"
START=$(date +%s)

echo "== [1/4] drawing the ADE20K-layout demo data in $DATA"
"$PYTHON" tools/make_demo_data.py ade20k "$DATA" --num 200 --num-val 50 --seed 0

echo "== [2/4] training $CONFIG"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR/train"
TRAINED=$(cat "$WORK_DIR/train/last_checkpoint")

echo "== [3/4] testing the trained checkpoint $TRAINED"
"$PYTHON" tools/test.py "$CONFIG" "$TRAINED" --work-dir "$WORK_DIR/test_trained"

echo "== [4/4] testing the untrained model (same config, initial weights)"
UNTRAINED="$WORK_DIR/untrained.pth"
"$PYTHON" -c 'import sys
from pelk_mm.mm.builder import save_initial_checkpoint
save_initial_checkpoint(sys.argv[1], sys.argv[2], seed=0)' "$CONFIG" "$UNTRAINED"
"$PYTHON" tools/test.py "$CONFIG" "$UNTRAINED" --work-dir "$WORK_DIR/test_untrained"

"$PYTHON" - "$WORK_DIR" "$TRAINED" "$(( $(date +%s) - START ))" <<'PYEOF'
import glob
import json
import re
import sys

import torch

work_dir, trained_ckpt, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])


def miou(name):
    logs = sorted(glob.glob(f'{work_dir}/{name}/*/*.json'))
    with open(logs[-1]) as f:
        return json.load(f)['mIoU']


# Sparsity, measured in the trained checkpoint: the covered weights (those
# with a mask) that are exactly zero, and the masks' own density.
ckpt = torch.load(trained_ckpt, map_location='cpu', weights_only=False)
state, sparsity = ckpt['state_dict'], ckpt['sparsity']
masks = sparsity['masks']
total = sum(m.numel() for m in masks.values())
zeros = sum(int((state[n] == 0).sum()) for n in masks)
pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
leaks = sum(int((state[n][~m] != 0).sum()) for n, m in masks.items())
# Mask changes, from the hook's log lines of the training run.
train_log = sorted(glob.glob(f'{work_dir}/train/*/*.log'))[-1]
with open(train_log) as f:
    updates = [
        (int(step), int(moved)) for step, moved in re.findall(
            r'DynamicSparsityHook update at optimizer step (\d+), prune rate '
            r'[0-9.]+: (\d+) weights pruned and regrown', f.read())
    ]

trained, untrained = miou('test_trained'), miou('test_untrained')
print('=' * 72)
print(f'PeLK demo (UperNet, ADE20K-layout demo data, {seconds // 60} min '
      f'{seconds % 60} s)')
print(f'  mIoU untrained: {untrained:6.2f}')
print(f'  mIoU trained:   {trained:6.2f}')
print(f'  sparsity ({sparsity["mode"]} mode): {zeros / total:.2%} of the '
      f'{total} masked backbone weights are exactly zero in the trained '
      f'checkpoint (masks: {pruned / total:.2%} pruned, {leaks} pruned '
      'weights non-zero)')
print(f'  masks changed at {len(updates)} updates (optimizer steps '
      f'{", ".join(str(s) for s, _ in updates)}): '
      f'{sum(m for _, m in updates)} weights pruned and regrown in all')
print('=' * 72)
PYEOF
