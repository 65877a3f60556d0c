"""Converts PyTorch weight files into avl_jax variables checkpoints (the library behind `python -m avl_jax.convert`).

`convert(format, input, output_dir)` reads the file (`state_dicts.load_state_dict`: `.pth`/`.pt` with torch, or an
`.npz` of {PyTorch name: array}), maps it with the format's converter (`avgn_weights`, `audioclip_weights`,
`tvsl_weights`) and writes `{output_dir}/variables/` (Orbax) plus `{output_dir}/avl_jax_variables.json`
(`checkpointing.save_variables`): the format, the source file and its SHA-256, the model fields the weights fit,
the number of values. The formats are described in `avl_jax/convert/__main__.py`.
"""
from collections.abc import Iterator, Mapping
import hashlib
import os
from typing import Any

import numpy as np

from avl_jax import checkpointing
from avl_jax.convert import audioclip_weights
from avl_jax.convert import avgn_weights
from avl_jax.convert import state_dicts
from avl_jax.convert import tvsl_weights
from avl_jax.models import avgn

FORMATS = ("avgn_torch", "torchvision_resnet18", "audioclip", "tvsl")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _leaves(tree: Any) -> Iterator[Any]:
  if isinstance(tree, Mapping):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def _source(fmt: str, input_path: str) -> dict[str, Any]:
  return {"format": fmt, "source": os.path.abspath(input_path), "source_sha256": file_sha256(input_path)}


def _save(output_dir: str, variables: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
  metadata["num_parameters"] = int(sum(np.size(leaf) for leaf in _leaves(variables)))
  checkpointing.save_variables(output_dir, variables, metadata)
  return metadata


def convert(fmt: str, input_path: str, output_dir: str, *, num_heads: int = 8,
            unsafe_pickle: bool = False) -> dict[str, Any]:
  """Converts `input_path` into `output_dir`; returns the metadata written next to the variables."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; expected one of {FORMATS}.")
  if fmt == "audioclip":
    return convert_audioclip(input_path, output_dir, unsafe_pickle=unsafe_pickle)
  if fmt == "tvsl":
    return convert_tvsl(input_path, output_dir, unsafe_pickle=unsafe_pickle)
  raw = state_dicts.load_state_dict(input_path, unsafe_pickle=unsafe_pickle)
  state_dict = avgn_weights.unwrap_state_dict(raw)
  metadata = _source(fmt, input_path)
  if fmt == "avgn_torch":
    fields = avgn_weights.infer_avgn_fields(state_dict, num_heads)
    model = avgn.AVGN(**fields)
    variables = avgn_weights.torch_state_dict_to_variables(state_dict, model)
    metadata.update(model_name="avgn", model={k: v for k, v in fields.items() if k != "num_classes"},
                    num_classes=fields["num_classes"], subtree="")
  else:
    encoder = avgn_weights.resnet18_torchvision_to_variables(state_dict)
    variables = {collection: {"imgnet": tree} for collection, tree in encoder.items()}
    metadata.update(model_name="", model={"resnet_width": 64, "resnet_blocks": (2, 2, 2, 2)}, subtree="imgnet")
  return _save(output_dir, variables, metadata)


def convert_audioclip(input_path: str, output_dir: str, *, unsafe_pickle: bool = False) -> dict[str, Any]:
  """--format=audioclip: a full, CLIP-only or audio-only AudioCLIP checkpoint -> (part of) the variables."""
  if os.path.exists(input_path) and state_dicts.is_torchscript_archive(input_path):
    raw = state_dicts.load_torchscript_state_dict(input_path)
  else:
    raw = state_dicts.load_state_dict(input_path, unsafe_pickle=unsafe_pickle)
  state_dict = audioclip_weights.unwrap_state_dict(raw)
  kind = audioclip_weights.checkpoint_kind(state_dict)
  variables = audioclip_weights.torch_state_dict_to_variables(state_dict)
  metadata = _source("audioclip", input_path)
  metadata.update(model_name="audioclip", model={}, checkpoint_kind=kind,
                  parts=list(audioclip_weights.PARTS[kind]), subtree="")
  return _save(output_dir, variables, metadata)


def convert_tvsl(input_path: str, output_dir: str, *, unsafe_pickle: bool = False, model=None) -> dict[str, Any]:
  """--format=tvsl: a T-VSL checkpoint (or an AudioCLIP one: towers only) -> T-VSL variables.

  `model` (tests): the target T-VSL sizes; default the released model.
  """
  raw = state_dicts.load_state_dict(input_path, unsafe_pickle=unsafe_pickle)
  state_dict = audioclip_weights.unwrap_state_dict(raw)
  complete = tvsl_weights.is_tvsl_state_dict(state_dict)
  variables = tvsl_weights.torch_state_dict_to_variables(state_dict, model)
  metadata = _source("tvsl", input_path)
  metadata.update(model_name="tvsl", model={}, checkpoint_kind="tvsl" if complete else "audioclip",
                  subtree="" if complete else "audioclip")
  return _save(output_dir, variables, metadata)
