"""What the converters share: reading PyTorch state dicts and matching them, key by key, onto Flax variables.

No torch import at module level: values may be numpy arrays or torch tensors (`as_numpy`); `load_state_dict`
imports torch only to read a `.pth` / `.pt` file.

The matching (`match_state_dict`) is strict: every given key must name a variable of the target with the right
shape (in PyTorch layout) and every variable must be given; the errors name the key and both shapes. Each
converter supplies its own naming (`torch_key`: Flax path -> PyTorch name), which leaves are transposed, and
which extra keys it drops (`drop`); BatchNorm `num_batches_tracked` counters of the target's BatchNorms are
always dropped (Flax BatchNorm has no step counter).
"""
from collections.abc import Callable, Mapping
import os
import zipfile
from typing import Any

from flax import traverse_util
import numpy as np

DDP_PREFIX = 'module.'
COLLECTIONS = ('params', 'batch_stats')
BN_COUNTER = '.num_batches_tracked'
_RUNNING_MEAN = '.running_mean'

# {PyTorch name: (collection, Flax path, abstract leaf with .shape and .dtype)}.
Expected = dict[str, tuple[str, tuple[str, ...], Any]]


# ------------------------------------------------------------------------------------------------ reading

def as_numpy(value: Any) -> np.ndarray:
  """numpy view of an array or of a torch tensor (detached, on CPU), without importing torch."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def unwrap_state_dict(state_dict: Mapping[str, Any], wrappers: tuple[str, ...] = ('model',)) -> dict[str, Any]:
  """Removes training-checkpoint wrappers (`{'model': state_dict, ...}`, in the order of `wrappers`) and the
  DDP `module.` prefix of the keys."""
  for wrapper in wrappers:
    if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
      state_dict = state_dict[wrapper]
  return {(key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key): value
          for key, value in state_dict.items()}


def load_state_dict(path: str, *, unsafe_pickle: bool = False) -> dict[str, Any]:
  """Reads {name: numpy array} from a .pth/.pt (torch, CPU) or an .npz file; nested dicts are kept."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'--input {path} does not exist.')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading .pth files needs PyTorch (CPU is enough): pip install -e '.[convert]'; "
                      'or save the state dict as .npz ({name: array}) and convert that.') from e
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=not unsafe_pickle)
  except Exception as e:  # pylint: disable=broad-except
    if unsafe_pickle:
      raise
    raise ValueError(f'torch.load refused {path} with the safe (weights_only) loader: {e}. If you trust the '
                     'file, rerun with --unsafe_pickle.') from e
  if not isinstance(loaded, dict):
    raise ValueError(f'{path} holds a {type(loaded).__name__}, not a state dict.')
  return loaded


def is_torchscript_archive(path: str) -> bool:
  """TorchScript archives (e.g. OpenAI's JIT CLIP files) are zips holding `code/` and `constants.pkl`."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
  return any(name.endswith('/constants.pkl') for name in names) and any('/code/' in name for name in names)


def load_torchscript_state_dict(path: str) -> dict[str, Any]:
  """The state dict of a TorchScript archive (needs torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading TorchScript archives needs PyTorch (CPU is enough): '
                      "pip install -e '.[convert]'.") from e
  return dict(torch.jit.load(path, map_location='cpu').state_dict())


# ------------------------------------------------------------------------------------------------ layouts

def torch_layout_shape(flax_shape: tuple[int, ...], leaf: str,
                       transposed_leaves: tuple[str, ...] = ('kernel',)) -> tuple[int, ...]:
  """PyTorch shape of a Flax leaf: conv HWIO -> OIHW, linear (in, out) -> (out, in) for `transposed_leaves`."""
  if leaf in transposed_leaves and len(flax_shape) == 4:  # HWIO -> OIHW
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  if leaf in transposed_leaves and len(flax_shape) == 2:  # (in, out) -> (out, in)
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def to_flax_layout(value: np.ndarray, leaf: str, transposed_leaves: tuple[str, ...] = ('kernel',)) -> np.ndarray:
  if leaf in transposed_leaves and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf in transposed_leaves and value.ndim == 2:
    return value.T
  return value


def to_torch_layout(value: np.ndarray, leaf: str, transposed_leaves: tuple[str, ...] = ('kernel',)) -> np.ndarray:
  if leaf in transposed_leaves and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if leaf in transposed_leaves and value.ndim == 2:
    return value.T
  return value


# ------------------------------------------------------------------------------------------------ matching

def expected_entries(abstract_variables: Mapping[str, Any],
                     torch_key: Callable[[str, tuple[str, ...]], str]) -> Expected:
  """{PyTorch name: (collection, path, abstract leaf)} of the 'params' and 'batch_stats' of a variable tree."""
  expected = {}
  for collection in COLLECTIONS:
    for path, leaf in traverse_util.flatten_dict(dict(abstract_variables.get(collection, {}))).items():
      expected[torch_key(collection, path)] = (collection, path, leaf)
  return expected


def match_state_dict(state_dict: Mapping[str, Any], expected: Expected, *,
                     transposed_leaves: tuple[str, ...] = ('kernel',),
                     drop: Callable[[str, Any], bool] | None = None,
                     missing_label: str = 'key(s)') -> tuple[dict[str, dict[tuple[str, ...], np.ndarray]], int]:
  """Maps a PyTorch state dict onto `expected`, checking every key.

  Args:
    state_dict: {PyTorch name: array} in PyTorch layouts (already unwrapped).
    expected: the target variables by PyTorch name (`expected_entries`); only shapes and dtypes are used.
    transposed_leaves: Flax leaf names stored transposed by PyTorch (conv OIHW, linear (out, in)).
    drop: `drop(key, value)` -> True for a key to leave out (called first, on every key; it may check the
      value and raise, and keeps its own account of what it dropped).
    missing_label: what the missing entries are called in the error ('key(s)', 'T-VSL key(s)').

  Returns:
    ({collection: {Flax path: numpy array in Flax layout and the target dtype}} for each collection of
    `expected` (empty ones included), the number of BatchNorm `num_batches_tracked` counters dropped).

  Raises:
    ValueError: a key the target does not have, a shape mismatch (naming the key and both shapes), or
      missing keys.
  """
  bn_modules = {key[:-len(_RUNNING_MEAN)] for key in expected if key.endswith(_RUNNING_MEAN)}
  converted = {collection: {} for collection in COLLECTIONS}
  counters = 0
  for key, value in state_dict.items():
    if drop is not None and drop(key, value):
      continue
    if key.endswith(BN_COUNTER) and key[:-len(BN_COUNTER)] in bn_modules:
      counters += 1  # PyTorch's step counter; Flax BatchNorm has no equivalent.
      continue
    value = as_numpy(value)
    if key not in expected:
      raise ValueError(f'Unexpected key {key!r} (shape {tuple(value.shape)}): the target model has no such '
                       'variable.')
    collection, path, target = expected[key]
    torch_shape = torch_layout_shape(tuple(target.shape), path[-1], transposed_leaves)
    if value.shape != torch_shape:
      raise ValueError(f'Shape mismatch for {key!r}: state dict has {value.shape}, the model expects '
                       f'{torch_shape} (PyTorch layout; Flax {"/".join(path)} {tuple(target.shape)}).')
    converted[collection][path] = to_flax_layout(value, path[-1], transposed_leaves).astype(target.dtype,
                                                                                             order='C')
  missing = [key for key, (collection, path, _) in expected.items() if path not in converted[collection]]
  if missing:
    raise ValueError(f'{len(missing)} {missing_label} missing from the state dict, e.g. {missing[:5]}.')
  return converted, counters


def unflatten(converted: Mapping[str, Mapping[tuple[str, ...], np.ndarray]], *,
              drop_empty: bool = False) -> dict[str, Any]:
  """{collection: {path: array}} -> {collection: nested dict}; `drop_empty` leaves out empty collections."""
  return {collection: traverse_util.unflatten_dict(dict(leaves)) for collection, leaves in converted.items()
          if leaves or not drop_empty}


def variables_to_state_dict(variables: Mapping[str, Any], torch_key: Callable[[str, tuple[str, ...]], str], *,
                            transposed_leaves: tuple[str, ...] = ('kernel',)) -> dict[str, np.ndarray]:
  """The inverse of the matching: Flax variables -> {PyTorch name: array in PyTorch layout}, with a
  `num_batches_tracked` = 0 per BatchNorm (as PyTorch state dicts have)."""
  state_dict = {}
  for collection in COLLECTIONS:
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      key = torch_key(collection, path)
      state_dict[key] = np.asarray(to_torch_layout(np.asarray(value), path[-1], transposed_leaves))
      if key.endswith(_RUNNING_MEAN):
        state_dict[key[:-len(_RUNNING_MEAN)] + BN_COUNTER] = np.zeros((), np.int64)
  return state_dict
