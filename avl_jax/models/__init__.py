"""Model registry: `get_model('avgn', num_classes=37, ...)`.

Two families:
* AVGN-style (`avgn`, `ezvsl`, `avgn_audioclip`): (image [B, H, W, 3], spec, visual_class [B], audio_label
  [B, C], train=...) -> (losses, outputs); `localize(image, spec, class_ids [B, S])` -> maps [B, S, h, w].
  `spec` is the log spectrogram [B, F, T, 1], except for the models in WAVEFORM_INPUT, which take the
  waveform [B, N] there.
* T-VSL-style (`tvsl`, `tvsl_single_stage`, TEXT_MODELS): (canvas [B, H, W, 3], waveform [B, N], text_bank
  [C, D], class_rows [B, K], labels [B, K], train=...) -> (losses, outputs); `localize(canvas, waveform,
  text_bank, class_rows)` -> maps [B, K, h, w]. Their class vocabulary is the text bank, not `num_classes`.
Models in FROZEN_TOWER_MODELS carry a frozen `audioclip` subtree that the optimizer must leave untouched
(`avl_jax.models.tvsl.params`) and expect CLIP-normalised images (config.dataset.image_norm='clip').
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
TEXT_MODELS = frozenset({'tvsl', 'tvsl_single_stage'})
WAVEFORM_INPUT = frozenset({'avgn_audioclip'})
FROZEN_TOWER_MODELS = frozenset({'avgn_audioclip', 'tvsl', 'tvsl_single_stage'})

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
