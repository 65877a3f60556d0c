r"""AVGN on MUSIC-Solo (11 instrument classes, single source; test boxes xywh): the official recipe.

Prepare the dataset (issue: real-dataset builders), optionally convert ImageNet ResNet-18 weights, then train and
evaluate (paper scale: a TPU/GPU host; the global batch 128 is split over all devices):
  python -m avl_jax.prepare --dataset=music/solo --data_dir=DATA --manual_dir=RAW
  python -m avl_jax.convert --format=torchvision_resnet18 --input=resnet18-f37072fd.pth --output=weights/resnet18
  python -m avl_jax.main --config=configs/avgn_music_solo.py:data_dir=DATA --workdir=workdirs/avgn_music_solo \
      --config.init_from=weights/resnet18
  python -m avl_jax.evaluate --config=configs/avgn_music_solo.py:data_dir=DATA --workdir=workdirs/avgn_music_solo
Evaluate an official PyTorch checkpoint without training:
  python -m avl_jax.convert --format=avgn_torch --input=best.pth --output=weights/avgn_music_solo
  python -m avl_jax.evaluate --config=configs/avgn_music_solo.py:data_dir=DATA --workdir=workdirs/official_music_solo \
      --weights=weights/avgn_music_solo
Smoke run (synthetic_av/tiny, tiny model, 2 steps; what the test suite runs):
  python -m avl_jax.main --config=configs/avgn_music_solo.py:runlocal,data_dir=/tmp/tfds --workdir=/tmp/avgn_music_solo

Arguments: runlocal (bool), data_dir (str), epochs (float, default 100). Recipe: avl_jax.recipes.avgn.paper_config.
Paper numbers (AVGN, MUSIC-Solo AP / IoU@0.5 / AUC): not verified from the paper PDF (docs/datasets.md §8).
"""
from avl_jax.recipes import avgn as recipe


def get_config(arg: str | None = None):
  return recipe.paper_config("music_solo", arg)
