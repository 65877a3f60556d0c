"""Model registry: `get_model('avgn', num_classes=37, ...)`.

How each model is trained, fed and scored (its inputs, constants, localization and metrics) is its family's
business: `avl_jax.families` maps every name here to one family.
"""
import dataclasses

import flax.linen as nn

from avl_jax.models import avgn
from avl_jax.models import ezvsl
from avl_jax.models import tvsl

AVGN = avgn.AVGN
EZVSL = ezvsl.EZVSL

MODELS: dict[str, type[nn.Module]] = {
    'avgn': AVGN, 'ezvsl': EZVSL, 'avgn_audioclip': tvsl.AVGNAudioCLIP, 'tvsl': tvsl.TVSL,
    'tvsl_single_stage': tvsl.TVSLSingleStage}

# Flax adds these dataclass fields to every Module; they are not model settings.
_FLAX_FIELDS = frozenset({'parent', 'name'})


def model_fields(model_class: type[nn.Module]) -> list[str]:
  """The constructor arguments of a registered model."""
  return [f.name for f in dataclasses.fields(model_class) if f.name not in _FLAX_FIELDS]


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a key of MODELS.
    **kwargs: the model's fields (e.g. num_classes, dim, attn_assign).

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: unknown model name or an argument that is not a field of the model.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; valid names: {sorted(MODELS)}.')
  model_class = MODELS[name]
  valid = model_fields(model_class)
  for key in kwargs:
    if key not in valid:
      raise ValueError(f'Model {name!r} has no field {key!r}; valid fields: {valid}.')
  return model_class(**kwargs)
