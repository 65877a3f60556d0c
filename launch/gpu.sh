#!/usr/bin/env bash
# Train on GPUs: one node with several GPUs, or several nodes (one process per node, each driving its GPUs).
#
# One node (every local GPU in one process; the batch is split over them):
#   bash launch/gpu.sh setup                                  # .venv with avl_jax[gpu] (jax[cuda12])
#   bash launch/gpu.sh run configs/X.py[:args] WORKDIR [--config.X=Y ...]
# Several nodes, SLURM (jax.distributed.initialize() reads the SLURM environment; one task per node):
#   srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 bash launch/gpu.sh run configs/X.py WORKDIR --distributed
# Several nodes, by hand (same command on every node, PROCESS_ID 0..N-1; node 0 is the coordinator):
#   COORDINATOR=node0:12345 NUM_PROCESSES=2 PROCESS_ID=0 bash launch/gpu.sh run configs/X.py WORKDIR --distributed
#   COORDINATOR=node0:12345 NUM_PROCESSES=2 PROCESS_ID=1 bash launch/gpu.sh run configs/X.py WORKDIR --distributed
# `eval` instead of `run` calls python -m avl_jax.evaluate with the same arguments.
#
# WORKDIR and the config's data_dir must be on storage every node sees (a shared filesystem or gs://). Each
# process reads its own shard of every split; process 0 writes logs, eval files and config.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" gpu
# TensorFlow (TFDS, clu writers) must not take GPU memory; XLA may take the rest.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}"
if [ -n "${COORDINATOR:-}" ]; then  # read by avl_jax.cli.init_runtime (jax.distributed.initialize arguments)
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" AVL_NUM_PROCESSES="${NUM_PROCESSES:?set NUM_PROCESSES}" \
      AVL_PROCESS_ID="${PROCESS_ID:?set PROCESS_ID}"
fi
case "${1:-}" in
  setup) python -c 'import jax; print(jax.devices())' ;;
  run|eval)
    binary=main; [ "$1" = eval ] && binary=evaluate
    config="${2:?CONFIG}"; workdir="$(absolute "${3:?WORKDIR}")"; shift 3
    python -m "avl_jax.$binary" --config="$config" --workdir="$workdir" "$@"
    ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
