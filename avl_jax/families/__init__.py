"""Model families: `families.of(config)` is the one place a model name decides how a model is run and scored.

A new family is a file here with a `base.Family` subclass (its models registered in `avl_jax.models`) and one
entry in FAMILIES; the generic train / eval code needs no change.
"""
import ml_collections

from avl_jax import models
from avl_jax.families import avgn
from avl_jax.families import base
from avl_jax.families import tvsl

Family = base.Family
FAMILIES: tuple[base.Family, ...] = (avgn.FAMILY, tvsl.FAMILY)
BY_MODEL: dict[str, base.Family] = {name: family for family in FAMILIES for name in family.model_names}
DEFAULT_MODEL = "avgn"  # config.model_name of `config_lib.base_config`


def renamed_fields() -> dict[str, str]:
  """{old field path: new path} of every family's `renamed_fields` (fields renamed since a release)."""
  return {old: new for family in FAMILIES for old, new in family.renamed_fields().items()}


def add_config_fields(config: ml_collections.ConfigDict) -> None:
  """Adds every family's `config_fields` to `config` (in place; a clash between families is an error)."""
  for family in FAMILIES:
    for group, fields in family.config_fields().items():
      if group not in config:
        config[group] = ml_collections.ConfigDict()
      for name, value in fields.items():
        if name in config[group]:
          raise ValueError(f"config.{group}.{name}: defined twice (family {family.name!r} and another).")
        config[group][name] = value


def get(model_name: str) -> base.Family:
  """The family of a registered model name."""
  if model_name not in BY_MODEL:
    raise ValueError(f"Unknown model {model_name!r} (config.model_name); valid names: {sorted(BY_MODEL)}.")
  return BY_MODEL[model_name]


def of(config: ml_collections.ConfigDict) -> base.Family:
  """The family of config.model_name."""
  return get(config.model_name)


def _check_registry() -> None:
  unregistered = set(BY_MODEL) ^ set(models.MODELS)
  if unregistered:
    raise ImportError(f"Models and families disagree on {sorted(unregistered)}: every model in "
                      "avl_jax.models.MODELS needs exactly one family.")


_check_registry()
