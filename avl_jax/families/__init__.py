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
