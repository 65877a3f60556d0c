r"""Converts PyTorch weights researchers already have into avl_jax variables checkpoints.

  python -m avl_jax.convert --format=avgn_torch --input=best.pth --output=weights/avgn_vgginstruments
  python -m avl_jax.convert --format=torchvision_resnet18 --input=resnet18-f37072fd.pth --output=weights/resnet18
  python -m avl_jax.convert --format=audioclip --input=AudioCLIP-Full-Training.pt --output=weights/audioclip
  python -m avl_jax.convert --format=tvsl --input=model_best.pth --output=weights/tvsl

Formats:
  avgn_torch            an official AVGN checkpoint (stoneMo/AVGN `train.py` saves `{'model': state_dict, ...}`;
                        a bare state dict and DDP `module.` keys work too). The model's hyperparameters
                        (classes, width D, depths, ResNet widths and blocks, MLP ratio) are read from the
                        tensor shapes; the number of heads cannot be and comes from --num_heads (official: 8).
                        The dead audio `han_encoder` branch is skipped with one log line; any other unknown,
                        missing or mis-shaped key is an error naming the key and both shapes.
  torchvision_resnet18  torchvision's ImageNet ResNet-18 (`resnet18-f37072fd.pth`, the IMAGENET1K_V1 weights,
                        from https://download.pytorch.org/models/resnet18-f37072fd.pth) -> the visual encoder
                        `imgnet` of AVGN / EZ-VSL. Training configs load it with `config.init_from`.
  audioclip             AudioCLIP release weights (github AndreyGuzhov/AudioCLIP, release v0.1):
                        `AudioCLIP-Full-Training.pt` / `AudioCLIP-Partial-Training.pt` (the whole model),
                        `CLIP.pt` (image + text towers, a state dict or a TorchScript archive) or `ESRNXFBSP.pt`
                        (audio tower) -> the variables of `avl_jax.models.audioclip.AudioCLIP` (a partial file
                        gives its part of the tree). Unknown, missing or mis-shaped keys are errors; the
                        recomputed `audio.window`, the empty `audio.fbsp.bias` and BatchNorm counters are dropped.
  tvsl                  a T-VSL training checkpoint (github enyac-group/T-VSL `main.py` saves `model_latest.pth`
                        and `model_best.pth` = `{'model': DDP state dict, 'optimizer': ..., ...}`; 896 entries:
                        AudioCLIP's 861 with their re-estimated BatchNorm statistics, plus the adapters, gates,
                        `fusion_proj` and `logit_scale_ml`) -> the variables of `avl_jax.models.tvsl.TVSL`
                        (released sizes). An AudioCLIP checkpoint gives only the `audioclip` subtree (merge it into
                        freshly initialised T-VSL variables with `tvsl.params.with_audioclip`). Strict like
                        `audioclip`. The class-text bank is not in the checkpoint: `tvsl.encode_text_bank`.

Input: a `.pth`/`.pt` file (needs torch: `pip install -e .[convert]`) or an `.npz` of {PyTorch name: array}
(no torch needed). Output: `{output}/variables/` (Orbax) and `{output}/avl_jax_variables.json` recording the
format, the source file and its SHA-256, and the model fields the weights fit. Use the output with
`python -m avl_jax.main ... --config.init_from={output}` (initialisation) or
`python -m avl_jax.evaluate ... --weights={output}` (evaluation without training).
"""
import hashlib
import os
import re
import sys
import zipfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

from avl_jax import checkpointing  # noqa: E402
from avl_jax.convert import audioclip_weights  # noqa: E402
from avl_jax.convert import avgn_weights  # noqa: E402
from avl_jax.convert import tvsl_weights  # noqa: E402
from avl_jax.models import avgn  # noqa: E402

FORMATS = ("avgn_torch", "torchvision_resnet18", "audioclip", "tvsl")

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Layout of --input (see the module docstring).")
_INPUT = flags.DEFINE_string("input", None, "The PyTorch checkpoint (.pth / .pt) or an .npz of named arrays.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to create (must not hold converted weights yet).")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 8, "avgn_torch: attention heads (not recoverable from shapes).")
_UNSAFE_PICKLE = flags.DEFINE_bool(
    "unsafe_pickle", False, "Load a .pth with full pickle (torch.load(weights_only=False)) when the safe loader "
    "refuses it. Only for files you trust: unpickling can run arbitrary code.")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def load_state_dict(path: str, *, unsafe_pickle: bool = False) -> dict[str, Any]:
  """Reads {name: numpy array} from a .pth/.pt (torch, CPU) or an .npz file; nested dicts are kept."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--input {path} does not exist.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading .pth files needs PyTorch (CPU is enough): pip install -e '.[convert]'; "
                      "or save the state dict as .npz ({name: array}) and convert that.") from e
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
  except Exception as e:  # pylint: disable=broad-except
    if unsafe_pickle:
      raise
    raise ValueError(f"torch.load refused {path} with the safe (weights_only) loader: {e}. If you trust the "
                     "file, rerun with --unsafe_pickle.") from e
  if not isinstance(loaded, dict):
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
  return loaded


def _count_numbered(keys, prefix: str) -> int:
  """Number of distinct `{prefix}{N}.` children, e.g. transformer blocks or ResNet blocks of a stage."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return len({int(m.group(1)) for key in keys if (m := pattern.match(key))})


def infer_avgn_fields(state_dict: dict[str, Any], num_heads: int) -> dict[str, Any]:
  """AVGN constructor fields read from the shapes of an (unwrapped) official state dict."""
  def shape(key):
    if key not in state_dict:
      raise ValueError(f"Not an AVGN state dict: missing key {key!r} (have e.g. {sorted(state_dict)[:5]}).")
    return np.shape(state_dict[key])

  num_classes, dim = shape("av_token")
  blocks = tuple(_count_numbered(state_dict, f"imgnet.layer{stage}.") for stage in range(1, 5))
  fields = dict(
      num_classes=int(num_classes), dim=int(dim), resnet_width=int(shape("imgnet.conv1.weight")[0]),
      resnet_blocks=blocks,
      depth_vis=_count_numbered(state_dict, "visual_encoder.blocks."),
      depth_aud=_count_numbered(state_dict, "audio_encoder.blocks."),
      mlp_ratio=float(shape("visual_encoder.blocks.0.mlp.fc1.weight")[0]) / float(dim),
      num_heads=num_heads)
  if dim % num_heads:
    raise ValueError(f"--num_heads={num_heads} does not divide the token width D={dim}.")
  return fields


def convert(fmt: str, input_path: str, output_dir: str, *, num_heads: int = 8,
            unsafe_pickle: bool = False) -> dict[str, Any]:
  """Converts `input_path` into `output_dir`; returns the metadata written next to the variables."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; expected one of {FORMATS}.")
  if fmt == "audioclip":
    return _convert_audioclip(input_path, output_dir, unsafe_pickle=unsafe_pickle)
  if fmt == "tvsl":
    return _convert_tvsl(input_path, output_dir, unsafe_pickle=unsafe_pickle)
  raw = load_state_dict(input_path, unsafe_pickle=unsafe_pickle)
  state_dict = avgn_weights.unwrap_state_dict(raw)
  metadata = {"format": fmt, "source": os.path.abspath(input_path), "source_sha256": file_sha256(input_path)}
  if fmt == "avgn_torch":
    fields = infer_avgn_fields(state_dict, num_heads)
    model = avgn.AVGN(**fields)
    variables = avgn_weights.torch_state_dict_to_variables(state_dict, model)
    metadata.update(model_name="avgn", model={k: v for k, v in fields.items() if k != "num_classes"},
                    num_classes=fields["num_classes"], subtree="")
  else:
    encoder = avgn_weights.resnet18_torchvision_to_variables(state_dict)
    variables = {collection: {"imgnet": tree} for collection, tree in encoder.items()}
    metadata.update(model_name="", model={"resnet_width": 64, "resnet_blocks": (2, 2, 2, 2)}, subtree="imgnet")
  count = sum(np.size(v) for collection in variables.values() for v in _leaves(collection))
  metadata["num_parameters"] = int(count)
  checkpointing.save_variables(output_dir, variables, metadata)
  return metadata


def _is_torchscript_archive(path: str) -> bool:
  """TorchScript archives (e.g. OpenAI's JIT CLIP files) are zips holding `code/` and `constants.pkl`."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
  return any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names)


def _convert_audioclip(input_path: str, output_dir: str, *, unsafe_pickle: bool) -> dict[str, Any]:
  """--format=audioclip: a full, CLIP-only or audio-only AudioCLIP checkpoint -> (part of) the variables."""
  if os.path.exists(input_path) and _is_torchscript_archive(input_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("Reading TorchScript archives needs PyTorch (CPU is enough): "
                        "pip install -e '.[convert]'.") from e
    raw = dict(torch.jit.load(input_path, map_location="cpu").state_dict())
  else:
    raw = load_state_dict(input_path, unsafe_pickle=unsafe_pickle)
  state_dict = audioclip_weights.unwrap_state_dict(raw)
  kind = audioclip_weights.checkpoint_kind(state_dict)
  variables = audioclip_weights.torch_state_dict_to_variables(state_dict)
  metadata = {"format": "audioclip", "source": os.path.abspath(input_path),
              "source_sha256": file_sha256(input_path), "model_name": "audioclip", "model": {},
              "checkpoint_kind": kind, "parts": list(audioclip_weights.PARTS[kind]), "subtree": ""}
  metadata["num_parameters"] = int(sum(np.size(v) for collection in variables.values() for v in _leaves(collection)))
  checkpointing.save_variables(output_dir, variables, metadata)
  return metadata


def _convert_tvsl(input_path: str, output_dir: str, *, unsafe_pickle: bool, model=None) -> dict[str, Any]:
  """--format=tvsl: a T-VSL checkpoint (or an AudioCLIP one: towers only) -> T-VSL variables.

  `model` (tests): the target T-VSL sizes; default the released model.
  """
  state_dict = audioclip_weights.unwrap_state_dict(load_state_dict(input_path, unsafe_pickle=unsafe_pickle))
  complete = tvsl_weights.is_tvsl_state_dict(state_dict)
  variables = tvsl_weights.torch_state_dict_to_variables(state_dict, model)
  metadata = {"format": "tvsl", "source": os.path.abspath(input_path), "source_sha256": file_sha256(input_path),
              "model_name": "tvsl", "model": {}, "checkpoint_kind": "tvsl" if complete else "audioclip",
              "subtree": "" if complete else "audioclip"}
  metadata["num_parameters"] = int(sum(np.size(v) for tree in variables.values() for v in _leaves(tree)))
  checkpointing.save_variables(output_dir, variables, metadata)
  return metadata


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name, flag in (("format", _FORMAT), ("input", _INPUT), ("output", _OUTPUT)):
    if flag.value is None:
      raise app.UsageError(f"--{name} is required.")
  try:
    metadata = convert(_FORMAT.value, _INPUT.value, _OUTPUT.value, num_heads=_NUM_HEADS.value,
                       unsafe_pickle=_UNSAFE_PICKLE.value)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Converted {metadata['format']} {_INPUT.value} -> {os.path.abspath(_OUTPUT.value)} "
        f"({metadata['num_parameters']:,} values; model fields {metadata['model']}).")


if __name__ == "__main__":
  app.run(main)
