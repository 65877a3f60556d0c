"""`resolve(config)`: every config value checked, and derived values filled in, before any work.

Every binary (train, evaluate, sweep, localize) calls it right after loading the config, so a bad value fails
in a second with a message naming the field -- not after compilation, the first step or a whole training run.
It returns a private copy with `num_train_steps` resolved from `num_epochs` (counted from the prepared train
split); resolving twice gives the same config.

Checked: the types and ranges of the step counts, intervals, batch sizes and optimizer fields; choices
(schedule, protocol, image_norm, eval_resize); model widths (dim divisible by num_heads); the family's own
rules (`Family.check_config`); with `check_data`, that the dataset, the train split and every eval split exist
and that max_boxes / max_sources hold the eval splits' largest examples (as the raw builders record them).
"""
import math
from typing import Any

from absl import logging
import ml_collections

from avl_jax import checkpointing
from avl_jax import families
from avl_jax import optimizers
from avl_jax.metrics import predictions
from avl_jax.pipeline import data_source
from avl_jax.pipeline import image_ops

# Model fields that are layer counts or widths (when a model has them): positive integers.
_POSITIVE_MODEL_INTS = ("resnet_width", "dim", "depth_vis", "depth_aud", "num_heads", "embed_dim", "top_k")


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and what it accepts."""


def _int(config, name: str, value: Any, minimum: int, why: str = "") -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"config.{name}={value!r}: must be an integer >= {minimum}{why}.")


def _float(config, name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  if not ok:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
    raise ConfigError(f"config.{name}={value!r}: must be a finite number in {interval}.")


def _choice(name: str, value: Any, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{name}={value!r}: expected one of {list(choices)}.")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  if config.get("num_epochs") is not None:
    _float(config, "num_epochs", config.num_epochs, 0.0, low_open=True)
  else:
    _int(config, "num_train_steps", config.num_train_steps, 1, " (or set config.num_epochs)")
  _int(config, "batch_size", config.batch_size, 1)
  _int(config, "eval_batch_size", config.eval_batch_size, 1)
  _int(config, "log_every_steps", config.log_every_steps, 1)
  _int(config, "checkpoint_every_steps", config.checkpoint_every_steps, 1,
       " (the final step is always saved; a large value saves only that)")
  _int(config, "keep_checkpoints", config.keep_checkpoints, 1,
       ": the number of newest checkpoints kept (0 would delete every one, the final one included)")
  _int(config, "eval_every_steps", config.eval_every_steps, 0, " (0: evaluate only at the end)")
  if "checkpoint_async" in config:
    _choice("checkpoint_async", config.checkpoint_async, checkpointing.ASYNC_MODES)


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
  opt = config.optimizer
  _float(config, "optimizer.learning_rate", opt.learning_rate, 0.0, low_open=True)
  _choice("optimizer.schedule", opt.schedule, optimizers.SCHEDULES)
  _int(config, "optimizer.warmup_steps", opt.warmup_steps, 0)
  _float(config, "optimizer.b1", opt.b1, 0.0, 1.0, high_open=True)
  _float(config, "optimizer.b2", opt.b2, 0.0, 1.0, high_open=True)
  _float(config, "optimizer.eps", opt.eps, 0.0, low_open=True)
  _float(config, "optimizer.weight_decay", opt.weight_decay, 0.0)
  _float(config, "optimizer.grad_clip_norm", opt.grad_clip_norm, 0.0)


def _check_dataset(config: ml_collections.ConfigDict) -> None:
  ds = config.dataset
  for name in ("num_classes", "image_size", "sample_rate", "max_sources", "max_boxes", "read_threads",
               "worker_buffer_size"):
    _int(config, f"dataset.{name}", ds[name], 1)
  _int(config, "dataset.num_workers", ds.num_workers, 0, " (0: in-process)")
  _int(config, "dataset.resize_size", ds.resize_size, ds.image_size, " (config.dataset.image_size, the crop)")
  _float(config, "dataset.audio_seconds", ds.audio_seconds, 0.0, low_open=True)
  _choice("dataset.image_norm", ds.image_norm, sorted(image_ops.IMAGE_NORMS))
  _choice("dataset.eval_resize", ds.eval_resize, image_ops.EVAL_RESIZES)
  splits = ds.eval_splits
  if isinstance(splits, str) or not all(isinstance(s, str) and s for s in splits):  # () = no evaluation
    raise ConfigError(f"config.dataset.eval_splits={splits!r}: must be a tuple of split names, e.g. "
                      "\"('test_single','test_duet')\" (the evaluate binary also takes --splits=a,b).")


def _check_eval(config: ml_collections.ConfigDict) -> None:
  _choice("eval.protocol", config.eval.protocol, predictions.PROTOCOLS)
  _int(config, "eval.num_visualize", config.eval.num_visualize, 0)


def _check_model(config: ml_collections.ConfigDict) -> None:
  family = families.of(config)  # unknown model names fail here, listing the valid ones
  model = config.model
  for name in _POSITIVE_MODEL_INTS:
    if name in model:
      _int(config, f"model.{name}", model[name], 1)
  if "dim" in model and "num_heads" in model and model.dim % model.num_heads:
    raise ConfigError(f"config.model.dim={model.dim} is not divisible by config.model.num_heads="
                      f"{model.num_heads}: each attention head gets dim / num_heads channels.")
  if "dtype" in model:
    _choice("model.dtype", model.dtype, ("float32", "bfloat16"))
  if "tau" in model:
    _float(config, "model.tau", model.tau, 0.0, low_open=True)
  if "drop_path" in model:
    _float(config, "model.drop_path", model.drop_path, 0.0, 1.0, high_open=True)
  if "mlp_ratio" in model:
    _float(config, "model.mlp_ratio", model.mlp_ratio, 0.0, low_open=True)
  try:
    family.check_config(config)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _check_data(config: ml_collections.ConfigDict) -> None:
  """The dataset is prepared and has the train split and every eval split."""
  ds = config.dataset
  info = data_source.prepared_info(ds.name, ds.data_dir)  # FileNotFoundError with the fix if not built
  available = list(info.splits.keys())
  wanted = [("dataset.train_split", ds.train_split)] + [("dataset.eval_splits", s) for s in ds.eval_splits]
  for field, split in wanted:
    if split not in available:
      raise ConfigError(f"config.{field}: dataset {ds.name!r} has no split {split!r}; its splits: "
                        f"{sorted(available)}.")
  # The raw builders record the largest box and source counts per split (datasets/builder_lib.py).
  counts = dict(info.metadata or {}).get("boxes", {})
  for split in ds.eval_splits:
    for key in ("max_boxes", "max_sources"):
      needed = counts.get(split, {}).get(key, 0)
      if needed > ds[key]:
        raise ConfigError(f"config.dataset.{key}={ds[key]}: split {split!r} of {ds.name!r} has examples with "
                          f"{needed}; set --config.dataset.{key}={needed} or more.")


def num_train_steps(config: ml_collections.ConfigDict) -> int:
  """config.num_train_steps, or ceil(num_epochs * |train split| / batch_size) when config.num_epochs is set."""
  if not config.get("num_epochs"):
    return config.num_train_steps
  ds = config.dataset
  num_examples = len(data_source.open_source(ds.name, ds.train_split, ds.data_dir, per_process=False))
  steps = max(1, math.ceil(config.num_epochs * num_examples / config.batch_size))
  logging.info("num_epochs=%g over %d %s examples at batch %d: %d steps.", config.num_epochs, num_examples,
               ds.train_split, config.batch_size, steps)
  return steps


def check(config: ml_collections.ConfigDict, *, check_data: bool = True) -> None:
  """Raises ConfigError naming the first field that cannot run (FileNotFoundError: dataset not prepared)."""
  _check_schedule(config)
  _check_optimizer(config)
  _check_dataset(config)
  _check_eval(config)
  _check_model(config)
  if check_data:
    _check_data(config)


def resolve(config: ml_collections.ConfigDict, *, check_data: bool = True) -> ml_collections.ConfigDict:
  """A checked private copy of `config` with num_train_steps resolved (see the module docstring)."""
  check(config, check_data=check_data)
  resolved = ml_collections.ConfigDict(config.to_dict())
  if check_data:
    resolved.num_train_steps = num_train_steps(config)
  return resolved
