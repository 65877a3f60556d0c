"""Shared config pieces; experiment files in configs/ build on `base_config()`.

Every field is documented here once. Configs are `ml_collections.ConfigDict`s loaded with
`config_flags.DEFINE_config_file(..., lock_config=True)`, so `--config.lerning_rate=1` fails with the valid keys.
"""
import importlib.util
import os
import types

import ml_collections

from avl_jax.metrics import postprocess
from avl_jax.models.tvsl import params as tvsl_params


def load_module(path: str) -> types.ModuleType:
  """Imports a config file (configs/*.py) by path, as `config_flags.DEFINE_config_file` does."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config={path}: no such file.")
  name = "avl_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file: what `--config=path:arg` gives the binaries (unlocked)."""
  return load_module(path).get_config(arg)


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument string 'a=1,b=x,flag' into a ConfigDict with typed defaults.

  Example: `--config=configs/synthetic_av.py:tiny,steps=200`. A bare name sets a bool to True. Unknown
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
  """Defaults shared by every experiment (the paper's AVGN recipe, docs/avgn.md §9)."""
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
      tau=postprocess.OFFICIAL_TAU,  # contrastive temperature (also the fixed-range map normalisation)
      attn_assign="soft",        # 'soft' (paper README) | 'hard' (Gumbel straight-through)
      # Official-behaviour switches (docs/avgn.md §2.3, §8). The official DDP run used per-GPU negatives and
      # per-GPU BatchNorm statistics; 1 = the whole global batch (our default, device-count independent),
      # k = split the global batch into k groups, e.g. the official run's GPU count.
      loss_groups=1,             # contrastive negatives per group of the batch
      bn_groups=1,               # BatchNorm batch statistics per group of the batch (1 = SyncBN)
      dtype="float32",           # compute dtype: 'bfloat16' keeps params, BatchNorm statistics, softmaxes,
                                 # the audio front end, losses and maps in float32
      remat=False,               # rematerialise ResNet / attention / grouping blocks in the backward pass
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
      max_boxes=16,        # eval: boxes per example (padded; VGG-SS duet test pairs carry up to 11)
      num_workers=2,       # grain worker processes (0: in-process)
      read_threads=2,      # decode threads per worker (read-ahead is 2 batches)
      worker_buffer_size=2,
      # Eval of the real duet/multi datasets (docs/datasets.md §6-7):
      eval_mix_partner_audio=True,  # sum the fixed partner's audio into the test mixture (False: the official
                                    # vgginstruments_multi loader, which forgot it)
      per_source_frames=True,       # localize each source on its own frame (duet tests store both frames)
      image_norm="imagenet",  # 'imagenet' (AVGN's ResNet-18s) | 'clip' (AudioCLIP towers: T-VSL, avgn_audioclip)
      canvas=False,           # T-VSL training input: [own | partner] frames side by side (needs mix=True)
      eval_resize="pil",      # eval frame resize: 'pil' (AVGN: PIL bicubic) | 'torch_tensor' (T-VSL: PyTorch
                              # tensor bicubic without antialias, docs/tvsl.md §7)
      normalize_on_device=True,  # training frames leave the hosts as uint8 and are normalised in the jitted
                                 # step (4x fewer bytes; False: normalised float32 from the hosts)
  ))

  # T-VSL's class-text bank (avl_jax/families/tvsl_bank.py): sorted display names of the dataset's classes, encoded once
  # by the frozen AudioCLIP text tower. Only read by the text-conditioned models (tvsl, tvsl_single_stage).
  config.text = ml_collections.ConfigDict(dict(
      bpe_path=ml_collections.config_dict.placeholder(str),  # CLIP's bpe_simple_vocab_16e6.txt.gz (required)
      extra_classes=(),  # display names appended to the bank: zero-shot classes for predicted-class inference
  ))

  config.batch_size = 128       # global batch (split over devices and hosts)
  config.eval_batch_size = 32   # global eval batch
  config.num_train_steps = 10_000
  # If set, overrides num_train_steps with ceil(num_epochs * |train split| / batch_size), counted from the
  # prepared dataset at start-up (the paper recipes are given in epochs).
  config.num_epochs = ml_collections.config_dict.placeholder(float)
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      schedule="constant",  # 'constant' (official AVGN) | 'cosine' (linear warm-up) | 'cosine_tvsl' (T-VSL's)
      warmup_steps=0,
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0,     # coupled L2 as in torch.optim.Adam
      grad_clip_norm=0.0,   # 0: no clipping (official)
      cosine_epochs=0.0,    # 'cosine_tvsl' without num_epochs: the epochs the schedule spans (0: use num_epochs)
      # Frozen parameters: a regex that must match a parameter's whole path ('a/b/kernel', avl_jax/param_rules.py);
      # they get zero updates and no optimizer state. '' trains everything; the T-VSL configs freeze the
      # AudioCLIP towers ('audioclip/.*'). A pattern that matches no parameter is an error.
      frozen="",
  ))

  # Device mesh: (axis, size) pairs; -1 = all remaining devices. 'data': the batch is split over it, parameters
  # replicated. 'fsdp': the batch is split over it too (data x fsdp), and parameters and their Adam state are
  # sharded along it, e.g. (('data', 2), ('fsdp', 4)). docs/sharding.md.
  config.mesh = (("data", -1),)
  # Parameter partition rules: (regex, spec) pairs, the first whose regex fully matches a parameter's path
  # ('imgnet/layer4_0/conv2/kernel', as config.optimizer.frozen) wins. spec: a PartitionSpec as a tuple (one entry
  # per leading dimension: None, a mesh axis or a tuple of axes), e.g. ('audioclip/.*', ()) replicates the frozen
  # towers, ('visual_encoder/.*/kernel', (None, 'fsdp')); or 'fsdp' = the automatic FSDP spec whatever the size.
  # Unmatched parameters: with an fsdp axis of size > 1, the largest dimension divisible by it is sharded if the
  # parameter has at least 2**16 values (avl_jax/sharding.py FSDP_MIN_SIZE), else replicated. A rule that does
  # not divide its dimension is an error.
  config.sharding_rules = ()
  # Persistent XLA compilation cache of the binaries (a resume or an evaluation of the same shapes loads its
  # executables instead of recompiling; '~' is expanded). '' turns it off.
  config.compilation_cache_dir = "~/.cache/avl_jax/jit"
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  # Orbax async checkpointing: 'auto' (on when the default backend is an accelerator), 'on', 'off'. The arrays
  # and the grain iterator state are taken at the save call, so async saves equal sync ones (tested).
  config.checkpoint_async = "auto"
  config.eval_every_steps = 0     # periodic evaluation during training; 0 = only at the end

  config.eval = ml_collections.ConfigDict(dict(
      protocol="official",   # metric protocol, docs/metrics.md §6: 'official' | 'standard'
      num_visualize=16,      # examples drawn in the heat-map PNG grid
      baselines=True,        # also score the centre-prior and uniform-random maps
      # Also score the model with a zero waveform (silent_audio) and with another example's waveform
      # (shuffled_audio): how much the sound drives the maps. Three model passes per split; False for long runs.
      audio_ablations=True,
      # Also score the model given each source another source's class (swapped_classes; a single source the next
      # class id): how much the maps follow the class. Models that map oracle classes only; one more model pass.
      class_ablation=True,
      tvsl_threshold=0.3,    # T-VSL models: fixed binarisation threshold of the (inverted) min-max score
      # Official AVGN vggsound_duet test GT (docs/metrics.md §2 defect i, needs protocol 'official'): source 0 is
      # scored against the partner's GT, source 1 against the partner's partner's. On in configs/avgn_vggsound_duet.py
      # to reproduce the official numbers; the correct GT otherwise.
      official_duet_gt_bug=False,
      # Official T-VSL validate_multi quirk (docs/metrics.md §2 defect ii, protocol 'official', canvas test sets):
      # source-2 boxes are shifted by +224 in place in cached arrays, so every validation after the first in a
      # run (persistent loader workers) scores source 2 against an empty GT. True reproduces those numbers.
      tvsl_stale_gt=False,
  ))
  return config


# The paper's AVGN settings (docs/avgn.md §9, docs/datasets.md §1): TFDS name, classes, mixing, eval splits.
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
  # The official VGGSound-Duet numbers were scored against the partners' GT (docs/metrics.md §2).
  config.eval.official_duet_gt_bug = setting == "vggsound_duet"
  if args.runlocal:
    config.eval.official_duet_gt_bug = False  # synthetic_av has no fixed partners
    config.model.update(RUNLOCAL_MODEL)
    ds.name = "synthetic_av/tiny"
    ds.num_classes = 8
    ds.max_sources = 2
    ds.eval_splits = ("test_duet",) if paper["mix"] else ("test_single",)
    ds.image_size, ds.resize_size = 32, 36
    ds.audio_seconds = 1.0
    _runlocal_schedule(config)
  return config


def _runlocal_schedule(config: ml_collections.ConfigDict) -> None:
  """The `runlocal` run: 2 steps of batch 8 in-process, a checkpoint and an evaluation at the end."""
  config.dataset.num_workers = 0
  config.num_epochs = None
  config.num_train_steps = 2
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval.num_visualize = 2


# T-VSL settings (docs/tvsl.md §6-7): 44.1 kHz datasets (`*_44k` builder configs). Training always mixes a
# partner of another class and sees the [own | partner] canvas; eval sets with fixed partner frames
# (vggsound/duet, vgginstruments/multi) are scored on the canvas, the others on the own frame.
TVSL_SETTINGS = {
    "music_solo": dict(dataset="music/solo_44k", num_classes=11, max_sources=1),
    "music_duet": dict(dataset="music/duet_44k", num_classes=8, max_sources=2),
    "vgginstruments_single": dict(dataset="vgginstruments/single_44k", num_classes=37, max_sources=1),
    "vgginstruments_multi": dict(dataset="vgginstruments/multi_44k", num_classes=37, max_sources=2),
    "vggsound_single": dict(dataset="vggsound/single_44k", num_classes=221, max_sources=1),
    "vggsound_duet": dict(dataset="vggsound/duet_44k", num_classes=221, max_sources=2),
}
TVSL_MODELS = ("tvsl", "tvsl_single_stage", "avgn_audioclip")

# AudioCLIP towers small enough for a CPU smoke run (`runlocal`); the released sizes are the model defaults.
RUNLOCAL_TOWERS = dict(embed_dim=32, image_layers=(1, 1, 1, 1), image_width=16, image_heads=2, text_width=64,
                       text_layers=1, text_heads=2, audio_layers=(1, 1, 1, 1))


def tvsl_paper_config(setting: str, arg: str | None, *, model: str = "tvsl") -> ml_collections.ConfigDict:
  """The official T-VSL recipe (or its single-stage ablation / AVGN on AudioCLIP) on one of TVSL_SETTINGS.

  Arguments (`--config=configs/FILE.py:a=1,b`): runlocal (bool: synthetic_av/tiny, tiny towers, 2 steps),
  data_dir (str), epochs (float, default 100), bpe_path (str: CLIP's bpe_simple_vocab_16e6.txt.gz, needed by the
  text-conditioned models), model (str, one of TVSL_MODELS; default `model`).

  Paper scale (docs/tvsl.md §6): frozen AudioCLIP towers (start from the release: `init_from` a directory
  converted with `--format=tvsl` from AudioCLIP-Full-Training.pt), Adam lr 0.01 with T-VSL's per-iteration
  cosine over 100 epochs, global batch 256, eval batch 128, [own | partner] 224x448 canvas of CLIP-normalised
  frames (short side 246, random 224 crop, flip), 5 s of 44.1 kHz audio (own + partner), oracle classes,
  inverted maps binarised at 0.3, the `official` metric protocol. Official switches (bn_mode 'train_stats',
  audio_scale 'official', pos_interp 'official_1d', label_order 'official', invert_map) are the model defaults.
  Contrastive negatives and tower BatchNorm statistics span the global batch (loss_groups = bn_groups = 1);
  the official run used 4 GPUs of 64: set both to 4 (`--config.model.loss_groups=4 --config.model.bn_groups=4`).
  """
  if setting not in TVSL_SETTINGS:
    raise ValueError(f"Unknown T-VSL setting {setting!r}; expected one of {sorted(TVSL_SETTINGS)}.")
  args = parse_arg(arg, runlocal=False, data_dir="", epochs=100.0, bpe_path="", model=model)
  if args.model not in TVSL_MODELS:
    raise ValueError(f"model={args.model!r}; expected one of {TVSL_MODELS}.")
  paper = TVSL_SETTINGS[setting]
  config = base_config()
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
    _runlocal_schedule(config)
    config.optimizer.cosine_epochs = 100.0  # the official 100-epoch cosine, compressed into the 2 steps
  return config
