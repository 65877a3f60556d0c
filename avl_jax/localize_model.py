"""The model of `python -m avl_jax.localize`: built from the config, restored, and asked for every class's map.

`load_model` builds `config`'s model on one local device and restores a training workdir's checkpoint (the
latest, or --step) or a converted-weights directory (`weights.load_whole_model`). What differs between models
(the class vocabulary, how a window's classes are mapped and scored, how maps are post-processed) is the model
family's (`families.of(config).localize_*`, avl_jax/families/base.py); this file never names a model.

Axis letters: B windows of one batch, C classes of the vocabulary, N audio samples, H/W frame height/width, h/w
map height/width.
"""
import dataclasses
import os
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avl_jax import checkpointing
from avl_jax import families
from avl_jax import localize_clips
from avl_jax import sharding
from avl_jax import weights as weights_lib
from avl_jax.families import base as family_base

LocalizeError = localize_clips.LocalizeError


@dataclasses.dataclass
class LoadedModel:
  """A model ready to localize: `apply(images, waveforms)` -> (raw maps [B, C, h, w], scores [B, C] or None).

  Attributes:
    config: the (private, unlocked) config the model was built from (`model_config`): one call maps every
      class of `class_names`.
    family: the model's family (`families.of(config)`).
    class_names: the vocabulary, one name per map (`family.localize_vocabulary`).
    origin: where the variables came from ({'workdir', 'step'} or {'weights', 'format'}).
    model, variables, consts: the flax module, its restored variables and constant inputs.
    fn: jitted (variables, consts, images, waveforms) -> (maps, scores or None).
  """
  config: ml_collections.ConfigDict
  family: family_base.Family
  class_names: list[str]
  origin: dict[str, Any]
  model: Any
  variables: Any
  consts: Any
  fn: Any

  @property
  def class_agnostic(self) -> bool:
    """One class-agnostic map, no class scores."""
    return self.family.localize_class_agnostic(self.config)

  def apply(self, images: np.ndarray, waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(images [B, H, W, 3] normalised, waveforms [B, N]) -> (raw maps [B, C, h, w], scores [B, C] or None)."""
    maps, scores = self.fn(self.variables, self.consts, jnp.asarray(images), jnp.asarray(waveforms))
    return np.asarray(maps, np.float32), (None if scores is None else np.asarray(scores, np.float32))

  def postprocess(self, raw_maps: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps [K, h, w] -> (display maps [K, H, W] in [0, 1], peak values [K, H, W]), (H, W) = size."""
    return self.family.localize_postprocess(self.config, raw_maps, size)

  @property
  def fields(self) -> dict[str, str]:
    """What localize.json says about the maps: {'kind', 'peak_value'}."""
    return self.family.localize_fields(self.config)


def model_config(config: ml_collections.ConfigDict, classes: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """A private copy of `config` for localization (`Family.localize_config`): maps of every class; a family
  with an open vocabulary adds the named `classes` it lacks."""
  config = ml_collections.ConfigDict(config.to_dict())
  return families.of(config).localize_config(config, list(classes))


def localize_fn(config: ml_collections.ConfigDict, model, num_classes: int):
  """Jitted (variables, consts, images [B, H, W, 3], waveforms [B, N]) -> (maps [B, C, h, w], scores [B, C] or
  None): `Family.localize_all_classes` with C = num_classes."""
  family = families.of(config)

  def apply(variables, consts, images, waveforms):
    return family.localize_all_classes(config, model, variables, consts, images, waveforms, num_classes)
  return jax.jit(apply)


def _restore_checkpoint(setup, workdir: str, step: int | None) -> tuple[Any, int]:
  checkpoints = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(checkpoints):
    raise LocalizeError(f"--workdir={workdir}: no checkpoints/ directory. Train one first (python -m avl_jax.main "
                        "--config=... --workdir=...), fix the path, or give converted weights with --weights=DIR.")
  manager = checkpointing.create_manager(workdir, create=False)
  steps = sorted(manager.all_steps())
  if not steps:
    raise LocalizeError(f"--workdir={workdir}: {checkpoints} holds no checkpoint; train first or pass --weights.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise LocalizeError(f"--step={step}: no checkpoint for it in {checkpoints}; available steps: {steps}.")
  try:
    state = checkpointing.restore(manager, step, setup.abstract_state)
  except (checkpointing.CheckpointMismatchError, checkpointing.DamagedCheckpointError) as e:
    raise LocalizeError(f"--workdir={workdir}, step {step}: {e}") from e
  return state.variables, step


def _load_weights(setup, weights_dir: str, mesh) -> tuple[Any, dict[str, Any]]:
  """`weights.load_whole_model`, its errors as LocalizeError (exit code 2)."""
  try:
    return weights_lib.load_whole_model(setup.abstract_state, weights_dir, mesh, action="used to localize")
  except (FileNotFoundError, ValueError) as e:
    raise LocalizeError(str(e)) from e


def load_model(config: ml_collections.ConfigDict, *, workdir: str | None = None, step: int | None = None,
               weights: str | None = None, classes: Sequence[str] = ()) -> LoadedModel:
  """Builds `config`'s model on one local device and restores a workdir checkpoint (latest, or `step`) or a
  converted-weights directory.

  Raises:
    LocalizeError: a missing workdir, checkpoint, step or weights directory, or variables that do not fit.
  """
  from avl_jax import train  # pylint: disable=g-import-not-at-top  (TensorFlow via clu: after the input checks)
  config = model_config(config, classes)
  mesh = sharding.create_mesh([(name, 1) for name, _ in config.mesh], devices=jax.local_devices()[:1])
  setup = train.build(config, mesh)
  if weights:
    variables, metadata = _load_weights(setup, weights, mesh)
    origin = {"weights": os.path.abspath(weights), "format": metadata.get("format")}
  else:
    variables, restored = _restore_checkpoint(setup, workdir, step)
    origin = {"workdir": os.path.abspath(workdir), "step": int(restored)}
  consts = train.make_consts(setup, variables["params"], mesh)
  family = families.of(config)
  names = list(family.localize_vocabulary(config))
  logging.info("Loaded %s (%s) with %d classes.", config.model_name, origin, len(names))
  return LoadedModel(config=config, family=family, class_names=names, origin=origin, model=setup.model,
                     variables=variables, consts=consts, fn=localize_fn(config, setup.model, len(names)))


def resolve_classes(model: LoadedModel, classes: Sequence[str]) -> list[int]:
  """Indices (into model.class_names) of the names the user forced with --classes.

  Matching ignores case and '_' vs ' ' (`families.base.same_class_name`); an open-vocabulary family has already
  added the names it lacked (`model_config`).

  Raises:
    LocalizeError: a name outside the vocabulary, or --classes with a class-agnostic model.
  """
  if not classes:
    return []
  if model.class_agnostic:
    raise LocalizeError(f"--classes: {model.config.model_name} has one class-agnostic map and no class "
                        "vocabulary; drop --classes.")
  ids = []
  for name in classes:
    matches = [i for i, known in enumerate(model.class_names) if family_base.same_class_name(name, known)]
    if not matches:
      raise LocalizeError(f"--classes: {name!r} is not a class of this model; valid names: "
                          f"{', '.join(model.class_names)}.")
    if matches[0] not in ids:
      ids.append(matches[0])
  return ids
