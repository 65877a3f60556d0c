"""Shared config pieces; experiment files in configs/ build on `base_config()`.

Every field is documented once: here, or (the fields one model family adds) in its `config_fields` /
`default_model_config` in avl_jax/families/. Configs are `ml_collections.ConfigDict`s loaded with
`config_flags.DEFINE_config_file(..., lock_config=True)`, so `--config.lerning_rate=1` fails with the valid keys.
"""
import importlib.util
import os
import types

import ml_collections


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
  from avl_jax import families  # pylint: disable=g-import-not-at-top  (families import the models and the data code)
  config = ml_collections.ConfigDict()
  config.seed = 0  # One base RNG: parameter init, data order, augmentation, DropPath.
  # Weights to start from when the workdir has no checkpoint yet: a directory written by
  # `python -m avl_jax.convert` (e.g. ImageNet ResNet-18 for the visual encoder, or a whole official AVGN).
  # Variables it holds replace the fresh initialisation (same names and shapes, else an error); the rest
  # keep their init. None: train from scratch.
  config.init_from = ml_collections.config_dict.placeholder(str)

  # Model: a name from avl_jax.models.MODELS and its constructor arguments (num_classes comes from dataset); the
  # default model's fields and comments are its family's `default_model_config` (avl_jax/families/).
  config.model_name = families.DEFAULT_MODEL
  config.model = families.get(families.DEFAULT_MODEL).default_model_config()

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
      # Official AVGN vggsound_duet test GT (docs/metrics.md §2 defect i, needs protocol 'official'): source 0 is
      # scored against the partner's GT, source 1 against the partner's partner's. On in configs/avgn_vggsound_duet.py
      # to reproduce the official numbers; the correct GT otherwise.
      official_duet_gt_bug=False,
  ))
  families.add_config_fields(config)  # each family's own fields (e.g. config.text, config.eval.tvsl_*)
  return config


def runlocal_schedule(config: ml_collections.ConfigDict) -> None:
  """The `runlocal` run: 2 steps of batch 8 in-process, a checkpoint and an evaluation at the end."""
  config.dataset.num_workers = 0
  config.num_epochs = None
  config.num_train_steps = 2
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval.num_visualize = 2
