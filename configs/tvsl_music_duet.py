r"""T-VSL on MUSIC-Duet (8 instruments, natural duets scored on their one frame; no working official path): the official recipe.

Prepare the 44.1 kHz dataset, convert the AudioCLIP release (frozen towers) once, train and evaluate (paper scale:
a TPU/GPU host; the global batch 256 is split over all devices; CLIP's BPE vocabulary is needed for the text bank):
  python -m avl_jax.prepare --dataset=music/duet_44k --data_dir=DATA --manual_dir=RAW
  python -m avl_jax.convert --format=tvsl --input=AudioCLIP-Full-Training.pt --output=weights/audioclip
  python -m avl_jax.main --config=configs/tvsl_music_duet.py:data_dir=DATA,bpe_path=VOCAB --workdir=workdirs/tvsl_music_duet \
      --config.init_from=weights/audioclip
  python -m avl_jax.evaluate --config=configs/tvsl_music_duet.py:data_dir=DATA,bpe_path=VOCAB --workdir=workdirs/tvsl_music_duet
(VOCAB = bpe_simple_vocab_16e6.txt.gz from github openai/CLIP or AndreyGuzhov/AudioCLIP.)
Evaluate an official T-VSL checkpoint without training:
  python -m avl_jax.convert --format=tvsl --input=model_best.pth --output=weights/tvsl_official
  python -m avl_jax.evaluate --config=configs/tvsl_music_duet.py:data_dir=DATA,bpe_path=VOCAB \
      --workdir=workdirs/tvsl_official_music_duet --weights=weights/tvsl_official
The single-stage ablation and AVGN on the same frozen towers (Table 7): `:model=tvsl_single_stage` or
`:model=avgn_audioclip`; configs/tvsl_table7.py runs the whole comparison.
Smoke run (synthetic_av/tiny, tiny towers, 2 steps; what the test suite runs):
  python -m avl_jax.main --config=configs/tvsl_music_duet.py:runlocal,bpe_path=VOCAB,data_dir=/tmp/tfds --workdir=/tmp/tvsl_music_duet

Arguments: runlocal (bool), data_dir, bpe_path (str), epochs (float, default 100), model (tvsl | tvsl_single_stage |
avgn_audioclip). Recipe: avl_jax.recipes.tvsl.paper_config.
Paper numbers: T-VSL MUSIC-Duet CAP / CIoU@0.3 / AUC 62.9 / 43.2 / 35.9 [secondary: later-paper summary].
"""
from avl_jax.recipes import tvsl as recipe


def get_config(arg: str | None = None):
  return recipe.paper_config("music_duet", arg)
