#!/usr/bin/env bash
# Training on a Slurm cluster:
#   [GPUS=8] [GPUS_PER_NODE=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options...]
set -euo pipefail

usage() {
    echo "Usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] bash $0 PARTITION JOB_NAME CONFIG [train.py options...]" >&2
    echo "  GPUS, GPUS_PER_NODE, CPUS_PER_TASK: positive integers" >&2
    exit 2
}
source "$(dirname "$0")/launch_checks.sh"

[[ $# -ge 3 ]] || fail "expected PARTITION, JOB_NAME and CONFIG, got $# argument(s)"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
check_slurm_args
[[ -f $CONFIG ]] || fail "CONFIG '$CONFIG' is not a file"

set -x
# SRUN_ARGS is split into words on purpose (several srun options).
PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    ${PYTHON:-python} -u "$(dirname "$0")/train.py" "${CONFIG}" --launcher="slurm" "${@:4}"
