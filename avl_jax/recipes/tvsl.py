"""The official T-VSL recipe (configs/tvsl_*.py): T-VSL, its single-stage ablation and AVGN on the same frozen
AudioCLIP towers (Table 7) on the paper's six settings, and its `runlocal` smoke form.

Each config file is `paper_config(setting, arg)`; its docstring gives the exact commands.
"""
import ml_collections

from avl_jax import config_lib
from avl_jax.metrics import postprocess
from avl_jax.models.tvsl import params as tvsl_params

# T-VSL settings (docs/tvsl.md §6-7): 44.1 kHz datasets (`*_44k` builder configs). Training always mixes a
# partner of another class and sees the [own | partner] canvas; eval sets with fixed partner frames
# (vggsound/duet, vgginstruments/multi) are scored on the canvas, the others on the own frame.
SETTINGS = {
    "music_solo": dict(dataset="music/solo_44k", num_classes=11, max_sources=1),
    "music_duet": dict(dataset="music/duet_44k", num_classes=8, max_sources=2),
    "vgginstruments_single": dict(dataset="vgginstruments/single_44k", num_classes=37, max_sources=1),
    "vgginstruments_multi": dict(dataset="vgginstruments/multi_44k", num_classes=37, max_sources=2),
    "vggsound_single": dict(dataset="vggsound/single_44k", num_classes=221, max_sources=1),
    "vggsound_duet": dict(dataset="vggsound/duet_44k", num_classes=221, max_sources=2),
}
MODELS = ("tvsl", "tvsl_single_stage", "avgn_audioclip")

# AudioCLIP towers small enough for a CPU smoke run (`runlocal`); the released sizes are the model defaults.
RUNLOCAL_TOWERS = dict(embed_dim=32, image_layers=(1, 1, 1, 1), image_width=16, image_heads=2, text_width=64,
                       text_layers=1, text_heads=2, audio_layers=(1, 1, 1, 1))


def paper_config(setting: str, arg: str | None, *, model: str = "tvsl") -> ml_collections.ConfigDict:
  """The official T-VSL recipe (or its single-stage ablation / AVGN on AudioCLIP) on one of SETTINGS.

  Arguments (`--config=configs/FILE.py:a=1,b`): runlocal (bool: synthetic_av/tiny, tiny towers, 2 steps),
  data_dir (str), epochs (float, default 100), bpe_path (str: CLIP's bpe_simple_vocab_16e6.txt.gz, needed by the
  text-conditioned models), model (str, one of MODELS; default `model`).

  Paper scale (docs/tvsl.md §6): frozen AudioCLIP towers (start from the release: `init_from` a directory
  converted with `--format=tvsl` from AudioCLIP-Full-Training.pt), Adam lr 0.01 with T-VSL's per-iteration
  cosine over 100 epochs, global batch 256, eval batch 128, [own | partner] 224x448 canvas of CLIP-normalised
  frames (short side 246, random 224 crop, flip), 5 s of 44.1 kHz audio (own + partner), oracle classes,
  inverted maps binarised at 0.3, the `official` metric protocol. Official switches (bn_mode 'train_stats',
  audio_scale 'official', pos_interp 'official_1d', label_order 'official', invert_map) are the model defaults.
  Contrastive negatives and tower BatchNorm statistics span the global batch (loss_groups = bn_groups = 1);
  the official run used 4 GPUs of 64: set both to 4 (`--config.model.loss_groups=4 --config.model.bn_groups=4`).
  """
  if setting not in SETTINGS:
    raise ValueError(f"Unknown T-VSL setting {setting!r}; expected one of {sorted(SETTINGS)}.")
  args = config_lib.parse_arg(arg, runlocal=False, data_dir="", epochs=100.0, bpe_path="", model=model)
  if args.model not in MODELS:
    raise ValueError(f"model={args.model!r}; expected one of {MODELS}.")
  paper = SETTINGS[setting]
  config = config_lib.base_config()
  config.model_name = args.model
  if args.model == "avgn_audioclip":
    # AVGN's grouping head (paper widths, docs/avgn.md) on the frozen towers; one CLIP-normalised frame.
    config.model = ml_collections.ConfigDict(dict(
        dim=512, depth_vis=3, depth_aud=3, num_heads=8, mlp_ratio=4.0, drop_path=0.1, tau=postprocess.OFFICIAL_TAU,
        attn_assign="soft", loss_groups=1, bn_groups=1, bn_mode="train_stats", audio_scale="official",
        pos_interp="grid_2d", dtype="float32", remat=False))
  else:
    config.model = ml_collections.ConfigDict(dict(
        bn_mode="train_stats", bn_groups=1, audio_scale="official", pos_interp="official_1d",
        class_source="oracle", invert_map=True, loss_groups=1, label_order="official", dtype="float32"))
  ds = config.dataset
  ds.name = paper["dataset"]
  ds.num_classes = paper["num_classes"]
  ds.mix = True
  ds.canvas = args.model != "avgn_audioclip"
  ds.image_norm = "clip"
  ds.eval_resize = "torch_tensor"
  ds.max_sources = paper["max_sources"]
  ds.sample_rate = 44100
  ds.audio_seconds = 5.0
  ds.image_size, ds.resize_size = 224, 246
  ds.train_split = "train"
  ds.eval_splits = ("test",)
  if args.data_dir:
    ds.data_dir = args.data_dir
  if args.bpe_path:
    config.text.bpe_path = args.bpe_path
  config.batch_size = 256
  config.eval_batch_size = 128
  config.num_epochs = args.epochs
  config.optimizer.learning_rate = 0.01
  config.optimizer.schedule = "cosine_tvsl"
  config.optimizer.frozen = tvsl_params.FROZEN_PARAMS  # the AudioCLIP towers (docs/tvsl.md §3)
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 5
  config.log_every_steps = 100
  if args.model == "avgn_audioclip":  # AVGN's own recipe for its head (docs/avgn.md §9).
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    config.batch_size = 128
  if args.runlocal:
    config.model.update(RUNLOCAL_TOWERS)
    if args.model == "avgn_audioclip":
      config.model.update(dim=32, depth_vis=1, depth_aud=1, num_heads=4, mlp_ratio=2.0)
    else:
      config.model.adapter_hidden = 64
    ds.name = "synthetic_av/tiny"
    ds.num_classes = 8
    ds.max_sources = 2
    ds.eval_splits = ("test_duet",) if paper["max_sources"] == 2 else ("test_single",)
    ds.image_size, ds.resize_size = 64, 72
    ds.sample_rate = 16000
    ds.audio_seconds = 0.25
    config_lib.runlocal_schedule(config)
    config.optimizer.cosine_epochs = 100.0  # the official 100-epoch cosine, compressed into the 2 steps
  return config
