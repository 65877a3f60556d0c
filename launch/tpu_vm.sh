#!/usr/bin/env bash
# Train on a Cloud TPU VM or a TPU pod slice (every host runs the same command; JAX finds the pod by itself).
#
#   export TPU_NAME=avl-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 [PROJECT=my-project]
#   bash launch/tpu_vm.sh create                 # gcloud compute tpus tpu-vm create (runtime tpu-ubuntu2204-base)
#   bash launch/tpu_vm.sh copy                   # this checkout -> ~/avl_jax on every worker (git archive of HEAD)
#   bash launch/tpu_vm.sh setup                  # python3.11 venv + avl_jax[tpu] on every worker
#   bash launch/tpu_vm.sh run CONFIG WORKDIR [--config.X=Y ...]   # python -m avl_jax.main --distributed, all workers
#   bash launch/tpu_vm.sh eval CONFIG WORKDIR [--all ...]         # python -m avl_jax.evaluate --distributed
#   bash launch/tpu_vm.sh ssh "COMMAND"          # any command on every worker (e.g. "pkill -f avl_jax")
#   bash launch/tpu_vm.sh delete
#
# CONFIG is a config spec as for main (configs/X.py[:args]); WORKDIR and the config's data_dir must be a path every
# host can read and write: a gs:// bucket (Orbax and TFDS read and write gs:// directly) or a shared filesystem.
# A pod host sees only its own chips; `--distributed` calls jax.distributed.initialize(), which on a TPU VM needs
# no arguments. Each host reads its own shard of every split; process 0 writes logs, eval files and config.json.
# Preemption (spot/preemptible VMs): SIGTERM saves a checkpoint at an agreed step; rerun `run` to resume.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-avl_jax}"
GCLOUD=(gcloud compute tpus tpu-vm)
PROJECT_FLAG=()
if [ -n "${PROJECT:-}" ]; then PROJECT_FLAG=(--project="$PROJECT"); fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

on_all() {  # on_all "COMMAND": run on every worker of the slice, at once
  "${GCLOUD[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command="$1"
}

# Environment of every training process: TensorFlow (TFDS, clu writers) must not grab the TPU, and the XLA
# compilation cache is shared by reruns on the host.
REMOTE_ENV="export TF_CPP_MIN_LOG_LEVEL=2 TPU_STDERR_LOG_LEVEL=2 AVL_SKIP_INSTALL=1; \
source ~/$REMOTE_DIR/.venv/bin/activate; cd ~/$REMOTE_DIR"

case "${1:-}" in
  create)
    "${GCLOUD[@]}" create "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --accelerator-type="$ACCELERATOR" \
        --version="$RUNTIME" ${SPOT:+--spot}
    ;;
  copy)
    tmp="$(mktemp -d)"
    git -C "$REPO" archive --format=tar.gz -o "$tmp/avl_jax.tar.gz" HEAD
    "${GCLOUD[@]}" scp "$tmp/avl_jax.tar.gz" "$TPU_NAME:~/" --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all
    on_all "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/avl_jax.tar.gz -C ~/$REMOTE_DIR"
    rm -rf "$tmp"
    ;;
  setup)
    on_all "sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv && \
cd ~/$REMOTE_DIR && python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
.venv/bin/pip install -q -e '.[tpu]' && .venv/bin/python -c 'import jax; print(jax.devices())'"
    ;;
  run)
    shift; config="${1:?CONFIG}"; workdir="${2:?WORKDIR}"; shift 2
    on_all "$REMOTE_ENV; python -m avl_jax.main --distributed --config='$config' --workdir='$workdir' $*"
    ;;
  eval)
    shift; config="${1:?CONFIG}"; workdir="${2:?WORKDIR}"; shift 2
    on_all "$REMOTE_ENV; python -m avl_jax.evaluate --distributed --config='$config' --workdir='$workdir' $*"
    ;;
  ssh)
    on_all "${2:?COMMAND}"
    ;;
  delete)
    "${GCLOUD[@]}" delete "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --quiet
    ;;
  *)
    sed -n '2,18p' "$0"; exit 2
    ;;
esac
