# Argument checks shared by tools/dist_*.sh and tools/slurm_*.sh (sourced, not
# run). The sourcing script defines usage(), which prints its usage and exits 2.

fail() {
    echo "ERROR: $*" >&2
    usage
}
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_positive() { is_int "$1" && ((10#$1 > 0)); }

# dist_*.sh: NPROCS and torchrun's multi-node settings, with their defaults.
check_torchrun_args() {
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    PORT=${PORT:-29500}
    MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
    is_positive "$NPROCS" || fail "NUM_PROCS must be a positive integer, got '$NPROCS'"
    is_positive "$NNODES" || fail "NNODES must be a positive integer, got '$NNODES'"
    is_int "$NODE_RANK" && ((10#$NODE_RANK < 10#$NNODES)) || fail "NODE_RANK must be an integer in [0, NNODES), got '$NODE_RANK'"
    is_int "$PORT" || fail "PORT must be an integer, got '$PORT'"
}

# slurm_*.sh: the job's names and sizes, with their defaults.
check_slurm_args() {
    GPUS=${GPUS:-8}
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    CPUS_PER_TASK=${CPUS_PER_TASK:-5}
    SRUN_ARGS=${SRUN_ARGS:-""}
    [[ -n $PARTITION && -n $JOB_NAME ]] || fail "PARTITION and JOB_NAME must not be empty"
    local name
    for name in GPUS GPUS_PER_NODE CPUS_PER_TASK; do
        is_positive "${!name}" || fail "$name must be a positive integer, got '${!name}'"
    done
}
