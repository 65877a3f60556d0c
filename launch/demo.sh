#!/usr/bin/env bash
# The demo: bash launch/demo.sh [workdir] [config arguments]
# Builds synthetic_av/default, trains AVGN (small CPU variant) on it, evaluates the final checkpoint once on
# test_single and test_duet with the centre-prior and random baselines and the silent / shuffled-audio
# ablations, then test_duet again with predicted classes, and writes JSON results and heat-map
# PNGs to the workdir (default workdirs/demo_avgn). Config arguments go to configs/synthetic_av.py, e.g. `tiny,steps=20` for a
# one-minute smoke run on synthetic_av/tiny. AVL_DATA_DIR: where the dataset is built (default data/tfds).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" ""
WORKDIR="$(absolute "${1:-$REPO/workdirs/demo_avgn}")"
DATA_DIR="$(absolute "${AVL_DATA_DIR:-$REPO/data/tfds}")"
CONFIG="configs/synthetic_av.py:data_dir=$DATA_DIR${2:+,$2}"
start=$(date +%s)
echo "[avl_jax] building the config's dataset in $DATA_DIR"
python -m avl_jax.prepare --config="$CONFIG"
echo "[avl_jax] training AVGN into $WORKDIR (resumes if it already has checkpoints); the run ends by evaluating"
echo "[avl_jax] its final checkpoint (tables below; re-score any checkpoint with python -m avl_jax.evaluate)"
python -m avl_jax.main --config="$CONFIG" --workdir="$WORKDIR"
if [[ "${2:-}" != *ezvsl* ]]; then
  echo "[avl_jax] the same checkpoint with predicted classes: the audio classifier picks which classes to map"
  python -m avl_jax.evaluate --config="$CONFIG" --workdir="$WORKDIR" --config.model.class_source=predicted \
      --splits=test_duet
fi
echo "[avl_jax] test_duet, every method in one table (python -m avl_jax.evaluate --workdir=... --summarize):"
python -m avl_jax.evaluate --workdir="$WORKDIR" --summarize --splits=test_duet
echo "[avl_jax] results: $WORKDIR/eval/*.json, heat maps: $WORKDIR/eval/*.png"
echo "[avl_jax] demo finished in $(( $(date +%s) - start )) s"
