#!/usr/bin/env bash
# Multi-node data-parallel training with torchrun (c10d rendezvous). Run the same command on every
# node, e.g. for the paper's 8 nodes x 4 GPUs:
#   NNODES=8 NPROC=4 RDZV_HOST=node01 scripts/launch_multinode.sh experiment=cifar optimizer=eva
# Everything after the environment variables goes to train.py as Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --nproc_per_node="${NPROC:-4}" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="${RDZV_HOST:-localhost}:${RDZV_PORT:-29400}" \
  --rdzv-id="${RDZV_ID:-eva}" \
  train.py "$@"
