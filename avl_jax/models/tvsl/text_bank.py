"""T-VSL's class-text bank: the class names, their order, and their frozen text embeddings (docs/tvsl.md §3, §7).

Axis letters: C classes, L context length (77), D joint width (1024).

The bank is not part of the checkpoint: `encode_text_bank` computes it once from the frozen AudioCLIP text
tower and the caller keeps it (it is an input of every T-VSL call). Zero-shot classes are extra rows: encode
the new names with the same function and concatenate.
"""
from collections.abc import Iterable, Mapping, Sequence
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from avl_jax.models.audioclip import model as audioclip_model
from avl_jax.models.audioclip import tokenizer as tokenizer_lib
from avl_jax.models.tvsl import base

AUDIOCLIP_SUBTREE = 'audioclip'
ENCODE_CHUNK = 64  # Texts per text-tower call (one compiled shape).


def official_bank_names(annotation_classes: Iterable[str]) -> list[str]:
  """The official bank order: Python `sorted(set(...))` of the display names of `metadata/vggss.json`.

  Case- and punctuation-sensitive ASCII order (space < comma < letters), so 'cattle mooing' comes before
  'cattle, bovinae cowbell'.
  """
  return sorted(set(annotation_classes))


def underscore_name(display_name: str) -> str:
  """The dataset-list spelling of a display name: words split on commas and whitespace, joined with '_'.

  'female speech, woman speaking' -> 'female_speech_woman_speaking'.
  """
  return '_'.join(word for word in re.split(r'[,\s]+', display_name) if word)


def official_label_indices(bank_names: Sequence[str]) -> np.ndarray:
  """[C] int: the official dataset label index of each bank row.

  The loaders number classes by `sorted(underscore names)` while the bank is `sorted(display names)`; with
  label_order='official' those indices are used as bank columns. For VGG-SS the two orders differ only at
  rows 29 ('cattle mooing', label 30) and 30 ('cattle, bovinae cowbell', label 29).
  """
  underscore = [underscore_name(name) for name in bank_names]
  rank = {name: index for index, name in enumerate(sorted(underscore))}
  return np.array([rank[name] for name in underscore], np.int32)


def tokenize(tokenizer: tokenizer_lib.Tokenizer, names: Sequence[str]) -> np.ndarray:
  """[C, 77] ids of the bare class names (T-VSL's template is '{}'; too-long names raise, no truncation)."""
  return tokenizer.tokenize(list(names), truncate=False)


@functools.lru_cache(maxsize=8)
def _text_encoder(model: audioclip_model.AudioCLIP):
  return jax.jit(lambda params, ids: audioclip_model.normalize(
      model.apply({'params': params}, ids, method='encode_text')))


def audioclip_params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  """The AudioCLIP parameters inside T-VSL / AVGN-AudioCLIP variables, or AudioCLIP's own variables."""
  params = variables.get('params', variables)
  return params[AUDIOCLIP_SUBTREE] if AUDIOCLIP_SUBTREE in params else params


def encode_text_bank(variables: Mapping[str, Any], ids: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
  """The unit class-text embeddings T = n(E_text(name)) [C, D], computed once by the frozen text tower.

  Args:
    variables: T-VSL variables (their `audioclip` subtree is used) or AudioCLIP variables / params.
    ids: [C, 77] token ids (`tokenize`).
    model: the AudioCLIP whose text tower to run, or a T-VSL / AVGN-AudioCLIP model whose tower sizes to use
      (default: the released sizes).

  Returns:
    [C, D] float32 NumPy, rows in the order of ids.
  """
  if model is None:
    model = audioclip_model.AudioCLIP()
  elif not isinstance(model, audioclip_model.AudioCLIP):
    model = base.tower_model(model)
  encoder = _text_encoder(model)
  params = audioclip_params(variables)
  ids = np.asarray(ids)
  chunks = []
  for start in range(0, len(ids), ENCODE_CHUNK):
    chunk = ids[start:start + ENCODE_CHUNK]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], ENCODE_CHUNK - len(chunk), axis=0)])
    chunks.append(np.asarray(encoder(params, padded))[:len(chunk)])
  return np.concatenate(chunks).astype(np.float32)


def extend_bank(text_bank: np.ndarray, new_embeddings: np.ndarray) -> np.ndarray:
  """Appends zero-shot classes: [C, D] + [N, D] -> [C + N, D]; existing rows (and their indices) stay."""
  return np.concatenate([np.asarray(text_bank, np.float32), np.asarray(new_embeddings, np.float32)])
