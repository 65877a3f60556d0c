#!/usr/bin/env bash
# The demo: bash launch/demo.sh [workdir]
# Builds synthetic_av/default, trains AVGN (small CPU variant) on it, evaluates test_single and test_duet with
# the centre-prior and random baselines, and writes JSON results and heat-map PNGs to the workdir.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKDIR="${1:-$REPO/workdirs/demo_avgn}"
DATA_DIR="${AVL_DATA_DIR:-$REPO/data/tfds}"
start=$(date +%s)
echo "[avl_jax] building synthetic_av/default in $DATA_DIR"
python -m avl_jax.prepare --dataset=synthetic_av/default --data_dir="$DATA_DIR"
echo "[avl_jax] training AVGN into $WORKDIR (resumes if it already has checkpoints)"
python -m avl_jax.main --config="configs/synthetic_av.py:data_dir=$DATA_DIR" --workdir="$WORKDIR" --alsologtostderr=false
echo "[avl_jax] evaluating the final checkpoint"
python -m avl_jax.evaluate --config="configs/synthetic_av.py:data_dir=$DATA_DIR" --workdir="$WORKDIR"
echo "[avl_jax] results: $WORKDIR/eval/*.json, heat maps: $WORKDIR/eval/*.png"
echo "[avl_jax] demo finished in $(( $(date +%s) - start )) s"
