"""The T-VSL family's constants: the class-text bank of a dataset and the label -> bank-row table.

Axis letters: C bank rows (the dataset's classes, then any `config.text.extra_classes`), D joint width, K sources.

The bank is `sorted(display names)` of the dataset's classes (the official order, docs/tvsl.md §7), encoded
once by the frozen AudioCLIP text tower. Datasets number their classes by the sorted underscore names
(`class_names` in the TFDS metadata), so a dataset label l maps to bank row `class_rows[l]`; with
`label_order='official'` the losses use l itself as the bank column, which reproduces the official mismatch
(VGG-SS: rows 29 and 30). Extra classes (zero-shot queries) are appended after the dataset's rows and never
appear as labels.

Constants (`make_consts`; replicated inputs of every step and localization call, never checkpointed: recomputed
from the frozen text tower on every start, so extra zero-shot classes can be added to a trained model):
'text_bank' [C, D] float32 and 'class_rows' [num_classes] int32.
"""
import functools
import os
from typing import Any

from absl import logging
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from avl_jax.datasets import metadata as metadata_lib
from avl_jax.models.audioclip import tokenizer as tokenizer_lib
from avl_jax.models.tvsl import text_bank as text_bank_lib


def dataset_class_names(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset's class names in label order (its TFDS metadata `class_names`)."""
  ds = config.dataset
  names = list((tfds.builder(ds.name, data_dir=ds.data_dir).info.metadata or {}).get("class_names", []))
  if len(names) != ds.num_classes:
    raise ValueError(f"config.dataset.num_classes={ds.num_classes}, but {ds.name!r} lists {len(names)} class "
                     "names in its metadata; T-VSL needs one name per class for its text bank.")
  return names


@functools.lru_cache(maxsize=1)
def _vggss_display_names() -> dict[str, str]:
  """{underscore name: display name} of the 221 VGG-SS classes (bundled metadata/vggss.json)."""
  entries = metadata_lib.read_json(str(metadata_lib.BUNDLED_DIR / "vggss.json"))
  return {text_bank_lib.underscore_name(e["class"]): e["class"] for e in entries}


def display_name(name: str) -> str:
  """The text the tower reads for a dataset class: the VGG-SS display name ('female speech, woman speaking')
  where the class is a VGG-SS class, else the name with underscores as spaces ('acoustic guitar')."""
  return _vggss_display_names().get(name, name.replace("_", " "))


def bank_names(config: ml_collections.ConfigDict) -> tuple[list[str], np.ndarray]:
  """(bank display names [C], class_rows [num_classes] int32: the bank row of each dataset label)."""
  labels = [display_name(n) for n in dataset_class_names(config)]
  if len(set(labels)) != len(labels):
    raise ValueError(f"Two classes of {config.dataset.name!r} have the same display name: {labels}.")
  names = text_bank_lib.official_bank_names(labels)
  extra = list(config.text.extra_classes)
  duplicates = sorted(set(extra) & set(names)) + sorted({n for n in extra if extra.count(n) > 1})
  if duplicates:
    raise ValueError(f"config.text.extra_classes: {duplicates} already in the bank (classes of "
                     f"{config.dataset.name!r} or repeated); extra classes must be new names.")
  row = {n: i for i, n in enumerate(names)}
  return names + extra, np.array([row[n] for n in labels], np.int32)


def tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  path = config.text.bpe_path
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"config.text.bpe_path={path!r}: T-VSL needs CLIP's BPE vocabulary `bpe_simple_vocab_16e6.txt.gz` "
        "(shipped with github openai/CLIP and AndreyGuzhov/AudioCLIP); pass its path, e.g. "
        "--config.text.bpe_path=/path/to/bpe_simple_vocab_16e6.txt.gz.")
  return tokenizer_lib.Tokenizer(path)


def abstract_consts(config: ml_collections.ConfigDict, embed_dim: int) -> dict[str, Any]:
  """Zero placeholders of the constants (shapes fixed by the config; filled by `make_consts`)."""
  num_rows = len(bank_names(config)[0])
  return {"text_bank": np.zeros((num_rows, embed_dim), np.float32),
          "class_rows": np.zeros((config.dataset.num_classes,), np.int32)}


def make_consts(config: ml_collections.ConfigDict, model, params: Any) -> dict[str, np.ndarray]:
  """Encodes the bank with the model's frozen text tower (`params` may be device arrays)."""
  names, class_rows = bank_names(config)
  ids = text_bank_lib.tokenize(tokenizer(config), names)
  bank = text_bank_lib.encode_text_bank({"params": params}, ids, model)
  logging.info("Encoded the T-VSL text bank: %d classes (%d from %s%s).", len(names), len(class_rows),
               config.dataset.name, f", {len(names) - len(class_rows)} extra" if len(names) > len(class_rows)
               else "")
  return {"text_bank": bank.astype(np.float32), "class_rows": class_rows}


def rows_of(class_rows_table, source_class):
  """Bank rows of dataset labels [B, K] (-1 padding kept). Works on NumPy and jax arrays."""
  return jnp.where(source_class >= 0, jnp.asarray(class_rows_table)[jnp.maximum(source_class, 0)], -1)
