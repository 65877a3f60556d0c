"""The model-family interface: everything the generic train and eval code needs to know about a model.

A family groups models that take the same inputs and are scored the same way. The training loop
(`avl_jax/train.py`), the evaluator (`avl_jax/eval_lib.py`) and the binaries call only these methods, so a new
family is one file here (plus its model under `avl_jax/models/`) and one line in `families/__init__.py`.

The `localize_*` methods serve `python -m avl_jax.localize` (a user's own clip, no labels: every class of the
model's vocabulary is mapped and scored in one call, docs/localize.md).

Axis letters: B batch, S sources (slots), N audio samples, H/W frame height/width, h/w map height/width,
M scored (example, source) items, C classes of the localization vocabulary, K mapped classes.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avl_jax import models
from avl_jax.pipeline import data_source

AGNOSTIC_CLASS = "sounding_object"  # the one vocabulary entry of a class-agnostic model's single map


def num_samples(config: ml_collections.ConfigDict) -> int:
  """Audio samples per example: config.dataset.audio_seconds at config.dataset.sample_rate."""
  return int(round(config.dataset.audio_seconds * config.dataset.sample_rate))


def same_class_name(a: str, b: str) -> bool:
  """Whether two class names match ignoring case, surrounding spaces and '_' vs ' '."""
  return a.replace("_", " ").strip().lower() == b.replace("_", " ").strip().lower()


def dataset_vocabulary(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset's class names in label order ('class {i}' where its TFDS metadata has none)."""
  names = data_source.dataset_class_names(config)
  return list(names) if names else [f"class {i}" for i in range(config.dataset.num_classes)]


@dataclasses.dataclass
class EvalViews:
  """How the model sees one eval batch.

  Attributes:
    images: (normalised frames [b, H, W', 3], source slot) pairs: the model is called once per pair with the
      batch's mixture; slot None keeps every source's map, slot s only map s (per-source frames).
    frames: [b, H, W', 3] uint8, what the heat-map PNG draws under the maps.
    canvas: the frames are the [own | partner] canvas (GT of source s goes on half s).
  """
  images: list[tuple[np.ndarray, int | None]]
  frames: np.ndarray
  canvas: bool = False


@dataclasses.dataclass
class ScoringInputs:
  """What the scorer needs from a family for one split.

  Attributes:
    raw_maps: [M, h, w] the map scored for each item (in `map_range` units).
    gt: [M, H, W] the GT of each item (may be re-placed, e.g. on a canvas).
    map_range: `avl_jax.metrics.postprocess.map_scores` range: 'logits' | 'unit' | 'minmax'.
    binarize: 'median' (official AVGN cIoU) | 'fixed' (score >= threshold).
    threshold: the fixed threshold ('fixed' only).
    tau: temperature of 'logits' maps (None for the other ranges).
    extra: fields added to the result JSON (e.g. class_recall).
  """
  raw_maps: np.ndarray
  gt: np.ndarray
  map_range: str
  binarize: str = "median"
  threshold: float = 0.5
  tau: float | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Family:
  """Base class; subclasses set `name`, `model_names` and override what differs."""
  name: str = ""
  model_names: tuple[str, ...] = ()
  supports_prediction_files: bool = True  # `--save_predictions` (the predictions-file schema)

  # ---------------------------------------------------------------------------------------------- config
  def config_fields(self) -> dict[str, dict[str, Any]]:
    """{group: {field: default}} this family adds to every config (`config_lib.base_config`), documented where
    they are written; `group` may be a new one (e.g. 'text'). Field names must not clash across families."""
    return {}

  def renamed_fields(self) -> dict[str, str]:
    """{old: new} config field paths ('eval.x') this family renamed: the binaries name the new one."""
    return {}

  def default_model_config(self) -> ml_collections.ConfigDict:
    """config.model of `base_config` when this family holds `families.DEFAULT_MODEL`."""
    raise NotImplementedError

  # ---------------------------------------------------------------------------------------------- model
  def check_config(self, config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming the field for settings this family cannot run (called before any work)."""

  def model_fields(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Constructor arguments of `config.model_name` from config.model (plus what the family derives)."""
    fields = config.model.to_dict()
    if config.model.get("dtype"):
      fields["dtype"] = jnp.dtype(config.model.dtype)
    valid = models.model_fields(models.MODELS[config.model_name])
    if "num_classes" in valid:
      fields["num_classes"] = config.dataset.num_classes
    if "sample_rate" in valid:
      fields["sample_rate"] = float(config.dataset.sample_rate)
    return fields

  def field(self, config: ml_collections.ConfigDict, name: str) -> Any:
    """config.model.<name>, else the model's own default (each default is written once, in the model)."""
    return config.model.get(name, getattr(models.MODELS[config.model_name], name))

  def create_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    self.check_config(config)
    return models.get_model(config.model_name, **self.model_fields(config))

  def dummy_inputs(self, config: ml_collections.ConfigDict, batch: int) -> dict[str, jax.Array]:
    """Keyword arguments of `model.init` (besides train=False) with the run's shapes."""
    raise NotImplementedError

  # ---------------------------------------------------------------------------------------------- constants
  def abstract_consts(self, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Zero placeholders of the constant model inputs that are not parameters (shapes from the config)."""
    del config
    return {}

  def make_consts(self, config: ml_collections.ConfigDict, model: nn.Module, params: Any) -> dict[str, Any]:
    """The constant model inputs, computed from the (restored) parameters; never checkpointed."""
    del config, model, params
    return {}

  # ---------------------------------------------------------------------------------------------- training
  def train_apply(self, model: nn.Module, variables: dict[str, Any], consts: dict[str, Any],
                  batch: dict[str, jax.Array], rngs: dict[str, jax.Array]) -> tuple[tuple[dict, dict], dict]:
    """((losses, outputs), new model state) of one training forward pass (`mutable=['batch_stats']`)."""
    raise NotImplementedError

  # ---------------------------------------------------------------------------------------------- evaluation
  def localize(self, config: ml_collections.ConfigDict, model: nn.Module, variables: dict[str, Any],
               consts: dict[str, Any], image: jax.Array, waveform: jax.Array,
               class_ids: jax.Array) -> dict[str, jax.Array]:
    """Runs inside jit. Returns {'maps': raw maps [B, S, h, w], ...}; extra [B, ...] arrays are kept per row.

    Args:
      image: [B, H, W', 3] normalised frames (an `EvalViews.images` entry).
      waveform: [B, N] the mixture.
      class_ids: [B, S] dataset labels of the sources (-1 padding): the oracle classes.
    """
    raise NotImplementedError

  def maps_given_classes(self, config: ml_collections.ConfigDict) -> bool:
    """Whether `localize` maps the class ids it is given (oracle classes): then the evaluator also scores the
    `swapped_classes` ablation. False for class-agnostic maps and for maps of the model's own predicted classes."""
    del config
    return False

  def eval_views(self, config: ml_collections.ConfigDict, batch: dict[str, np.ndarray],
                 partner_frames: bool) -> EvalViews:
    """The frames the model sees for a host batch of `input_pipeline.create_eval_dataset`."""
    del config, partner_frames
    return EvalViews(images=[(batch["image"], None)], frames=batch["image_uint8"])

  def scoring_inputs(self, config: ml_collections.ConfigDict, pred: dict[str, Any], example_idx: np.ndarray,
                     source_idx: np.ndarray, gt: np.ndarray, nbox: np.ndarray) -> ScoringInputs:
    """The scored map, GT and rules of every (example, source) item (`eval_lib.evaluate_split`)."""
    raise NotImplementedError

  def result_fields(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Fields of the result JSON that describe the maps (their range, tau where it applies)."""
    raise NotImplementedError

  def draw(self, path: str, config: ml_collections.ConfigDict, pred: dict[str, Any], n: int) -> None:
    """Writes the heat-map PNG of the first n predicted examples to `path`."""
    raise NotImplementedError

  # ---------------------------------------------------------------------------------------------- localization
  def localize_config(self, config: ml_collections.ConfigDict, classes: Sequence[str]) -> ml_collections.ConfigDict:
    """The config a user's clip is localized with; `config` is a private unlocked copy (changed in place).

    The default maps the classes it is given (config.model.class_source='oracle' where the model has the field),
    so one call maps every class of the vocabulary.

    Args:
      config: the model's experiment config (a copy).
      classes: the names the user forced with --classes (may be empty); a family with an open vocabulary adds
        the ones it lacks here (they then appear in `localize_vocabulary`).
    Returns:
      the config to build the model from.
    """
    del classes
    if "class_source" in models.model_fields(models.MODELS[config.model_name]):
      config.model.class_source = "oracle"
    return config

  def localize_vocabulary(self, config: ml_collections.ConfigDict) -> list[str]:
    """The C class names mapped by `localize_all_classes`, in map order (of the `localize_config` config)."""
    raise NotImplementedError

  def localize_class_agnostic(self, config: ml_collections.ConfigDict) -> bool:
    """Whether the model has one class-agnostic map and no class scores (then --classes is refused)."""
    del config
    return False

  def localize_all_classes(self, config: ml_collections.ConfigDict, model: nn.Module, variables: dict[str, Any],
                           consts: dict[str, Any], images: jax.Array, waveforms: jax.Array,
                           num_classes: int) -> tuple[jax.Array, jax.Array | None]:
    """The map and score of every vocabulary class; pure (runs inside jit, `config` and `num_classes` static).

    Args:
      images: [B, H, W, 3] normalised frames.
      waveforms: [B, N] audio windows.
      num_classes: C, len(localize_vocabulary(config)).
    Returns:
      (raw maps [B, C, h, w], class scores [B, C], higher = more likely sounding; None when class-agnostic).
    """
    raise NotImplementedError

  def localize_postprocess(self, config: ml_collections.ConfigDict, raw_maps: np.ndarray,
                           size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps [K, h, w] -> (display maps [K, H, W] in [0, 1], peak values [K, H, W]) with (H, W) = size.

    The display map is what is drawn and where the peak is read; the value at the peak is reported under the
    name `localize_fields(config)['peak_value']`.
    """
    raise NotImplementedError

  def localize_fields(self, config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fields of localize.json's `model` entry that describe the maps: {'kind', 'peak_value'} (docs/localize.md)."""
    raise NotImplementedError
