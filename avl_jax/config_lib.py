"""Shared config pieces; experiment files in configs/ build on `base_config()`.

Every field is documented here once. Configs are `ml_collections.ConfigDict`s loaded with
`config_flags.DEFINE_config_file(..., lock_config=True)`, so `--config.lerning_rate=1` fails with the valid keys.
"""
import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument string 'a=1,b=x,flag' into a ConfigDict with typed defaults.

  Example: `--config=configs/avgn_synthetic.py:runlocal,steps=200`. A bare name sets a bool to True. Unknown
  names raise a ValueError listing the valid ones.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; valid arguments: {sorted(defaults)}.")
    kind = type(defaults[key])
    if not _:
      if kind is not bool:
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      result[key] = True
    elif kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config argument {key}={value!r} is not a bool.")
      result[key] = value.lower() in ("true", "1")
    else:
      result[key] = kind(value)
  return result


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (the paper's AVGN recipe, spec/avgn.md §9)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # One base RNG: parameter init, data order, augmentation, DropPath.
  # Weights to start from when the workdir has no checkpoint yet: a directory written by
  # `python -m avl_jax.convert` (e.g. ImageNet ResNet-18 for the visual encoder, or a whole official AVGN).
  # Variables it holds replace the fresh initialisation (same names and shapes, else an error); the rest
  # keep their init. None: train from scratch.
  config.init_from = ml_collections.config_dict.placeholder(str)

  # Model: a name from avl_jax.models.MODELS and its constructor arguments (num_classes comes from dataset).
  config.model_name = "avgn"
  config.model = ml_collections.ConfigDict(dict(
      resnet_width=64,           # ResNet-18 base width (64 in the paper); both encoders
      resnet_blocks=(2, 2, 2, 2),
      dim=512,                   # token width D
      depth_vis=3, depth_aud=3,  # AttnBlocks per ModalityTrans
      num_heads=8,
      mlp_ratio=4.0,
      drop_path=0.1,
      tau=0.03,                  # contrastive temperature (also the fixed-range map normalisation)
      attn_assign="soft",        # 'soft' (paper README) | 'hard' (Gumbel straight-through)
      # Official-behaviour switches (spec avgn.md §2.3, §8). The official DDP run used per-GPU negatives and
      # per-GPU BatchNorm statistics; 1 = the whole global batch (our default, device-count independent),
      # k = split the global batch into k groups, e.g. the official run's GPU count.
      loss_groups=1,             # contrastive negatives per group of the batch
      bn_groups=1,               # BatchNorm batch statistics per group of the batch (1 = SyncBN)
  ))

  # Data: any dataset in the shared schema (avl_jax/datasets/schema.py).
  config.dataset = ml_collections.ConfigDict(dict(
      name="synthetic_av/default",    # TFDS name[/config]
      data_dir=ml_collections.config_dict.placeholder(str),  # TFDS data_dir (None: TFDS default)
      train_split="train",
      eval_splits=("test_single", "test_duet"),
      num_classes=8,
      image_size=224,      # train crop / eval resize (square)
      resize_size=246,     # train: short side resized to this before the random crop
      sample_rate=16000,   # Hz; examples at another rate are an error
      audio_seconds=3.0,   # centre window (tiled when shorter)
      mix=True,            # training-time mixing with a partner of another class (multi-source train sets)
      max_sources=2,       # eval: sources per example (padded)
      max_boxes=10,        # eval: boxes per example (padded)
      num_workers=2,       # grain worker processes (0: in-process)
      read_threads=2,      # decode threads per worker (read-ahead is 2 batches)
      worker_buffer_size=2,
      # Eval of the real duet/multi datasets (spec/datasets.md §6-7):
      eval_mix_partner_audio=True,  # sum the fixed partner's audio into the test mixture (False: the official
                                    # vgginstruments_multi loader, which forgot it)
      per_source_frames=True,       # localize each source on its own frame (duet tests store both frames)
  ))

  config.batch_size = 128       # global batch (split over devices and hosts)
  config.eval_batch_size = 32   # global eval batch
  config.num_train_steps = 10_000
  # If set, overrides num_train_steps with ceil(num_epochs * |train split| / batch_size), counted from the
  # prepared dataset at start-up (the paper recipes are given in epochs).
  config.num_epochs = ml_collections.config_dict.placeholder(float)
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      schedule="constant",  # 'constant' (official) | 'cosine' (with linear warm-up)
      warmup_steps=0,
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0,     # coupled L2 as in torch.optim.Adam
      grad_clip_norm=0.0,   # 0: no clipping (official)
  ))

  config.mesh = (("data", -1),)   # (axis, size) pairs; -1 = all remaining devices
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.eval_every_steps = 0     # periodic evaluation during training; 0 = only at the end

  config.eval = ml_collections.ConfigDict(dict(
      protocol="official",   # metric protocol, spec/metrics.md §6: 'official' | 'standard'
      num_visualize=16,      # examples drawn in the heat-map PNG grid
      baselines=True,        # also score the centre-prior and uniform-random maps
  ))
  return config


# The paper's AVGN settings (spec/avgn.md §9, spec/datasets.md §1): TFDS name, classes, mixing, eval splits.
PAPER_SETTINGS = {
    "music_solo": dict(dataset="music/solo", num_classes=11, mix=False, max_sources=1),
    "music_duet": dict(dataset="music/duet", num_classes=8, mix=True, max_sources=2),
    "vgginstruments_single": dict(dataset="vgginstruments/single", num_classes=37, mix=False, max_sources=1),
    "vgginstruments_multi": dict(dataset="vgginstruments/multi", num_classes=37, mix=True, max_sources=2),
    "vggsound_single": dict(dataset="vggsound/single", num_classes=221, mix=False, max_sources=1),
    "vggsound_duet": dict(dataset="vggsound/duet", num_classes=221, mix=True, max_sources=2),
}

# The small AVGN that `runlocal` trains on synthetic_av/tiny (same code paths, seconds on a CPU).
RUNLOCAL_MODEL = dict(resnet_width=8, resnet_blocks=(1, 1, 1, 1), dim=32, depth_vis=1, depth_aud=1, num_heads=4,
                      mlp_ratio=2.0)


def avgn_paper_config(setting: str, arg: str | None) -> ml_collections.ConfigDict:
  """The official AVGN recipe on one of PAPER_SETTINGS, or its `runlocal` form.

  Arguments (`--config=configs/FILE.py:a=1,b`): runlocal (bool: synthetic_av/tiny, tiny model, 2 steps, for
  smoke tests), data_dir (str), epochs (float, default 100 = the official README command).

  Paper scale: ResNet-18 encoders (width 64, ImageNet init through `init_from`), D = 512, depth 3, 8 heads,
  tau 0.03, soft assignment, Adam 1e-4 constant, global batch 128, 224 px frames, 3 s of 16 kHz audio,
  `official` metric protocol. Negatives and BatchNorm statistics span the global batch (loss_groups =
  bn_groups = 1); set both to the official run's GPU count to reproduce its per-GPU behaviour.
  """
  if setting not in PAPER_SETTINGS:
    raise ValueError(f"Unknown AVGN setting {setting!r}; expected one of {sorted(PAPER_SETTINGS)}.")
  args = parse_arg(arg, runlocal=False, data_dir="", epochs=100.0)
  paper = PAPER_SETTINGS[setting]
  config = base_config()
  config.model_name = "avgn"
  ds = config.dataset
  ds.name = paper["dataset"]
  ds.num_classes = paper["num_classes"]
  ds.mix = paper["mix"]
  ds.max_sources = paper["max_sources"]
  ds.train_split = "train"
  ds.eval_splits = ("test",)
  if args.data_dir:
    ds.data_dir = args.data_dir
  config.num_epochs = args.epochs
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 5
  config.log_every_steps = 100
  if args.runlocal:
    config.model.update(RUNLOCAL_MODEL)
    ds.name = "synthetic_av/tiny"
    ds.num_classes = 8
    ds.max_sources = 2
    ds.eval_splits = ("test_duet",) if paper["mix"] else ("test_single",)
    ds.image_size, ds.resize_size = 32, 36
    ds.audio_seconds = 1.0
    ds.num_workers = 0
    config.num_epochs = None
    config.num_train_steps = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.eval.num_visualize = 2
  return config
