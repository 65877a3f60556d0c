r"""AVGN on VGGSound-Duet (221 classes, training mixtures, 5,158 fixed test pairs): the official recipe.

Prepare the dataset (issue: real-dataset builders), optionally convert ImageNet ResNet-18 weights, then train and
evaluate (paper scale: a TPU/GPU host; the global batch 128 is split over all devices):
  python -m avl_jax.prepare --dataset=vggsound/duet --data_dir=DATA --manual_dir=RAW
  python -m avl_jax.convert --format=torchvision_resnet18 --input=resnet18-f37072fd.pth --output=weights/resnet18
  python -m avl_jax.main --config=configs/avgn_vggsound_duet.py:data_dir=DATA --workdir=workdirs/avgn_vggsound_duet \
      --config.init_from=weights/resnet18
  python -m avl_jax.evaluate --config=configs/avgn_vggsound_duet.py:data_dir=DATA --workdir=workdirs/avgn_vggsound_duet
Evaluate an official PyTorch checkpoint without training:
  python -m avl_jax.convert --format=avgn_torch --input=best.pth --output=weights/avgn_vggsound_duet
  python -m avl_jax.evaluate --config=configs/avgn_vggsound_duet.py:data_dir=DATA --workdir=workdirs/official_vggsound_duet \
      --weights=weights/avgn_vggsound_duet
Smoke run (synthetic_av/tiny, tiny model, 2 steps; what the test suite runs):
  python -m avl_jax.main --config=configs/avgn_vggsound_duet.py:runlocal,data_dir=/tmp/tfds --workdir=/tmp/avgn_vggsound_duet

Arguments: runlocal (bool), data_dir (str), epochs (float, default 100). Recipe: avl_jax.recipes.avgn.paper_config.
Paper numbers (AVGN, VGGSound-Duet CAP / CIoU@0.3 / AUC): not verified from the paper PDF.
"""
from avl_jax.recipes import avgn as recipe


def get_config(arg: str | None = None):
  return recipe.paper_config("vggsound_duet", arg)
