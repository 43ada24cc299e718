#!/usr/bin/env bash
# Train on every GPU of one machine with DistributedDataParallel (rank 0 writes RUN/).
#   training/torchrun.sh DATA_DIR RUN_DIR [extra options, e.g. --resume or lr=0.002]
# Several machines: run on each with --nnodes N --node_rank I --rdzv_endpoint HOST:29500.
set -euo pipefail
DATA=${1:?data folder with train/ and val/}
RUN=${2:?run folder}
shift 2
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
exec torchrun --standalone --nproc_per_node="$NGPU" \
    "$(dirname "$0")/train.py" --config "$(dirname "$0")/paper.yaml" \
    --data "$DATA" -o "$RUN" --device cuda "$@"
