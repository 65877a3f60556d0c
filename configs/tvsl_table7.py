r"""Table 7 of the T-VSL supplementary as one sweep: AVGN, T-VSL single-stage and T-VSL two-stage, all on the same
frozen AudioCLIP towers, on VGGSound-Single (AP, IoU@0.5) and VGGSound-Duet (CAP, CIoU@0.3).

The whole sweep (6 runs, one after another, each in WORKDIR/<model>_<setting>; rerunning resumes and skips what
is done), then the table:
  python -m avl_jax.sweep --config=configs/tvsl_table7.py --args=data_dir=DATA,bpe_path=VOCAB \
      --workdir=workdirs/table7 --init_from=weights/audioclip
One cell:
  python -m avl_jax.main --config=configs/tvsl_table7.py:model=tvsl_single_stage,setting=vggsound_duet,data_dir=DATA,bpe_path=VOCAB \
      --workdir=workdirs/table7/tvsl_single_stage_vggsound_duet --config.init_from=weights/audioclip
Smoke run of the whole sweep on synthetic_av/tiny (what the test suite runs):
  python -m avl_jax.sweep --config=configs/tvsl_table7.py --args=runlocal,bpe_path=VOCAB,data_dir=/tmp/tfds \
      --workdir=/tmp/table7

Arguments: model (avgn_audioclip | tvsl_single_stage | tvsl), setting (vggsound_single | vggsound_duet), and those
of avl_jax.recipes.tvsl.paper_config (runlocal, data_dir, bpe_path, epochs). Each run uses its model's recipe
(T-VSL: Adam 0.01 cosine, batch 256, canvas; AVGN: Adam 1e-4 constant, batch 128, one frame), the towers frozen
and the `official` metric protocol. Columns (avl_jax.sweep.TABLE7_COLUMNS): VGGSound-Single AP = `pixel_ap`,
IoU@0.5 = `ciou_frac@0.5`; VGGSound-Duet CAP = `pixel_ap` (oracle classes: each source's map is its class's),
CIoU@0.3 = `ciou_mean` (T-VSL's definition) and `ciou_frac@0.3`.
Paper numbers: not verified (docs/datasets.md: the supplementary was not available).
"""
from avl_jax import config_lib
from avl_jax.recipes import tvsl as recipe

MODELS = ("avgn_audioclip", "tvsl_single_stage", "tvsl")
SETTINGS = ("vggsound_single", "vggsound_duet")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, model="tvsl", setting="vggsound_duet", runlocal=False, data_dir="",
                              bpe_path="", epochs=100.0)
  if args.setting not in SETTINGS:
    raise ValueError(f"setting={args.setting!r}; expected one of {SETTINGS}.")
  passed = [f"model={args.model}", f"data_dir={args.data_dir}", f"bpe_path={args.bpe_path}",
            f"epochs={args.epochs}"] + (["runlocal"] if args.runlocal else [])
  return recipe.paper_config(args.setting, ",".join(passed))


def get_sweep(arg: str | None = None) -> list[tuple[str, str]]:
  """[(run name, config argument string)] of the sweep; `arg` is appended to every argument string."""
  extra = f",{arg}" if arg else ""
  return [(f"{model}_{setting}", f"model={model},setting={setting}{extra}")
          for setting in SETTINGS for model in MODELS]
