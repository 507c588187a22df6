#!/usr/bin/env bash
# Distributed testing with torchrun (torch.distributed.run):
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py options...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT on every node.
# PYTHON selects the interpreter (default: python).
set -euo pipefail

usage() {
    echo "Usage: bash $0 CONFIG CHECKPOINT NUM_PROCS [test.py options...]" >&2
    echo "  NUM_PROCS: processes on this node, a positive integer" >&2
    echo "  env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python)" >&2
    exit 2
}
source "$(dirname "$0")/launch_checks.sh"

[[ $# -ge 3 ]] || fail "expected CONFIG, CHECKPOINT and NUM_PROCS, got $# argument(s)"
CONFIG=$1
CHECKPOINT=$2
NPROCS=$3
[[ -f $CONFIG ]] || fail "CONFIG '$CONFIG' is not a file"
[[ -n $CHECKPOINT ]] || fail "CHECKPOINT is empty"
check_torchrun_args

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROCS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
