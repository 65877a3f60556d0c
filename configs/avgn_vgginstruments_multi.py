r"""AVGN on VGGSound-Instruments multi-source (37 classes, training mixtures, fixed test pairs) — the official README command: the official recipe.

Prepare the dataset (issue: real-dataset builders), optionally convert ImageNet ResNet-18 weights, then train and
evaluate (paper scale: a TPU/GPU host; the global batch 128 is split over all devices):
  python -m avl_jax.prepare --dataset=vgginstruments/multi --data_dir=DATA --manual_dir=RAW
  python -m avl_jax.convert --format=torchvision_resnet18 --input=resnet18-f37072fd.pth --output=weights/resnet18
  python -m avl_jax.main --config=configs/avgn_vgginstruments_multi.py:data_dir=DATA --workdir=workdirs/avgn_vgginstruments_multi \
      --config.init_from=weights/resnet18
  python -m avl_jax.evaluate --config=configs/avgn_vgginstruments_multi.py:data_dir=DATA --workdir=workdirs/avgn_vgginstruments_multi
Evaluate an official PyTorch checkpoint without training:
  python -m avl_jax.convert --format=avgn_torch --input=best.pth --output=weights/avgn_vgginstruments_multi
  python -m avl_jax.evaluate --config=configs/avgn_vgginstruments_multi.py:data_dir=DATA --workdir=workdirs/official_vgginstruments_multi \
      --weights=weights/avgn_vgginstruments_multi
Smoke run (synthetic_av/tiny, tiny model, 2 steps; what the test suite runs):
  python -m avl_jax.main --config=configs/avgn_vgginstruments_multi.py:runlocal,data_dir=/tmp/tfds --workdir=/tmp/avgn_vgginstruments_multi

Arguments: runlocal (bool), data_dir (str), epochs (float, default 100). Recipe: avl_jax.recipes.avgn.paper_config.
Paper numbers (AVGN, VGGSound-Instruments multi CAP / PIAP / CIoU@0.3 / AUC): not verified from the paper PDF.
"""
from avl_jax.recipes import avgn as recipe


def get_config(arg: str | None = None):
  return recipe.paper_config("vgginstruments_multi", arg)
