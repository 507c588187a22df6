#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (torch.distributed.run):
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py options...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT on every node.
# Without CUDA the processes use gloo (see tools/launch_utils.py).
# PYTHON selects the interpreter (default: python).
set -euo pipefail

usage() {
    echo "Usage: bash $0 CONFIG NUM_PROCS [train.py options...]" >&2
    echo "  NUM_PROCS: processes on this node, a positive integer" >&2
    echo "  env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python)" >&2
    exit 2
}
source "$(dirname "$0")/launch_checks.sh"

[[ $# -ge 2 ]] || fail "expected CONFIG and NUM_PROCS, got $# argument(s)"
CONFIG=$1
NPROCS=$2
[[ -f $CONFIG ]] || fail "CONFIG '$CONFIG' is not a file"
check_torchrun_args

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROCS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
