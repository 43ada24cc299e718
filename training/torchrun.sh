#!/usr/bin/env bash
# Train on every GPU of one machine with DistributedDataParallel (rank 0 writes RUN/).
#   training/torchrun.sh DATA_DIR RUN_DIR [extra options, e.g. --resume or lr=0.002]
# CONFIG=smoke (or a YAML file) picks another configuration; the default is the shipped
# "paper" configuration. batch_size is per GPU and lr is scaled by the number of GPUs
# (lr_scaling: linear; docs/training.md). Re-running with --resume continues exactly
# where RUN/last.pt stopped; it may change epochs and lr (e.g. --resume lr=0.002) and
# refuses other changes. Several machines: run on each with --nnodes N --node_rank I
# --rdzv_endpoint HOST:29500.
set -euo pipefail
DATA=${1:?data folder with train/ and val/}
RUN=${2:?run folder}
shift 2
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
exec torchrun --standalone --nproc_per_node="$NGPU" \
    "$(dirname "$0")/train.py" --config "${CONFIG:-paper}" \
    --data "$DATA" -o "$RUN" --device cuda "$@"
