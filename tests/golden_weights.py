"""Seeded synthetic weights for the golden parity tests (numpy only).

The golden outputs in tests/testdata were computed by the official PyTorch models loaded with synthetic,
fully deterministic state dicts. This module rebuilds those state dicts from the `[key, shape, dtype]`
lists in `state_dict_spec*.json`, value for value, so the tests need no checkpoint and no copy of the
generator that made the golden files.

Each entry is drawn from a generator of its own, seeded with `(seed, crc32(key))`, in float64, and only then
cast to the entry's dtype: a key's value depends on the seed, the key, its shape and (for a bias) the rank of
its sibling weight, never on the other entries or their order. Which distribution a key gets is decided by
an ordered list of rules (the first that matches wins). The golden sets use two rule lists and two hash
layouts, exposed as:

  AVGN       tests/testdata/avgn/state_dict_spec.json (443 entries)
  AUDIOCLIP  tests/testdata/audioclip/state_dict_spec.json (861) and state_dict_spec_tvsl.json (896)

Both have `load_spec(path)`, `make_state_dict(spec, seed)` and `fingerprint(state_dict)`; the parity tests
compare the fingerprint with the sha256 that the golden sets were generated with. From the repository root,
`python tests/golden_weights.py {avgn,audioclip} SPEC_JSON [SEED]` prints the entry count and fingerprint.
"""
import dataclasses
import hashlib
import json
import os
import sys
from typing import Callable, Sequence
import zlib

import numpy as np

SpecEntry = tuple[str, tuple[int, ...], str]


@dataclasses.dataclass(frozen=True)
class Entry:
  """One state-dict slot as the rules see it."""
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype
  sibling_shapes: dict  # key -> shape for the whole spec (to find the `weight` beside a `bias`).

  @property
  def leaf(self) -> str:
    return self.key.split('.')[-1]

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def sibling_weight_shape(self):
    """Shape of `<module>.weight` for a `<module>.bias` key, or None if the spec has none."""
    return self.sibling_shapes.get(self.key[:-len('bias')] + 'weight')


Draw = Callable[[np.random.Generator, Entry], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  matches: Callable[[Entry], bool]
  draw: Draw


# --------------------------------------------------------------------------------------------- draws


def _gaussian(std: float, mean: float | None = None) -> Draw:
  """mean + std * N(0, 1) in float64 (no `mean` term at all when mean is None, as the golden recipe)."""
  def draw(rng, entry):
    noise = std * rng.standard_normal(entry.shape)
    return noise if mean is None else mean + noise
  return draw


def _uniform(low: float, high: float) -> Draw:
  return lambda rng, entry: rng.uniform(low, high, entry.shape)


def _zeros(rng, entry):  # pylint: disable=unused-argument
  return np.zeros(entry.shape)


def _fan_in(shape: Sequence[int]) -> int:
  # PyTorch layouts: Linear (out, in), Conv (out, in / groups, kh, kw).
  return int(np.prod(shape[1:]))


def _scaled_by_inverse_sqrt_fan_in(rng, entry):
  """AVGN: N(0, 1) times the reciprocal of sqrt(fan_in)."""
  factor = 1.0 / np.sqrt(_fan_in(entry.shape))
  return rng.standard_normal(entry.shape) * factor


def _divided_by_sqrt(axis_product: Callable[[tuple[int, ...]], int]) -> Draw:
  """AudioCLIP: N(0, 1) divided by sqrt(n) (a division, not a multiplication by 1/sqrt(n))."""
  def draw(rng, entry):
    return rng.standard_normal(entry.shape) / np.sqrt(axis_product(entry.shape))
  return draw


def _constant(value: float) -> Draw:
  return lambda rng, entry: np.full(entry.shape, value)


def _index_ramp(rng, entry):  # pylint: disable=unused-argument
  return np.arange(entry.shape[0], dtype=np.float64).reshape(entry.shape)


# Four-term Blackman-Harris coefficients (those of scipy.signal.windows.blackmanharris).
_BH_COEFFICIENTS = (0.35875, 0.48829, 0.14128, 0.01168)


def periodic_blackman_harris(length: int) -> np.ndarray:
  """float64 periodic Blackman-Harris window: the symmetric window of length + 1 without its last point.

  The terms are accumulated in the order scipy uses (general cosine over linspace(-pi, pi)), so the values
  equal scipy.signal.get_window('blackmanharris', length, fftbins=True) bit for bit.
  """
  phase = np.linspace(-np.pi, np.pi, length + 1)
  total = np.zeros(length + 1)
  for order, coefficient in enumerate(_BH_COEFFICIENTS):
    total += coefficient * np.cos(order * phase)
  return total[:length]


def _window(rng, entry):  # pylint: disable=unused-argument
  return periodic_blackman_harris(entry.shape[0])


# --------------------------------------------------------------------------------------------- rules


def _leaf_is(*names: str) -> Callable[[Entry], bool]:
  return lambda entry: entry.leaf in names


def _key_ends(*suffixes: str) -> Callable[[Entry], bool]:
  return lambda entry: entry.key.endswith(suffixes)


def _bias_beside_vector_weight(entry: Entry) -> bool:
  sibling = entry.sibling_weight_shape()
  return entry.leaf == 'bias' and sibling is not None and len(sibling) == 1


def _bias_beside_matrix_weight(entry: Entry) -> bool:
  sibling = entry.sibling_weight_shape()
  return entry.leaf == 'bias' and sibling is not None and len(sibling) != 1


_ANYTHING = lambda entry: True

AVGN_RULES = (
    Rule('class tokens', lambda e: e.key == 'av_token', _gaussian(0.02)),
    Rule('BatchNorm running mean', _leaf_is('running_mean'), _gaussian(0.1)),
    Rule('BatchNorm running variance', _leaf_is('running_var'), _uniform(0.5, 1.5)),
    Rule('BatchNorm step counter', _leaf_is('num_batches_tracked'), _zeros),
    Rule('conv / linear weight', lambda e: e.leaf == 'weight' and e.ndim >= 2, _scaled_by_inverse_sqrt_fan_in),
    Rule('norm scale', _leaf_is('weight'), _gaussian(0.1, mean=1.0)),
    Rule('norm bias', _bias_beside_vector_weight, _gaussian(0.1)),
    Rule('conv / linear bias', _bias_beside_matrix_weight, _gaussian(0.02)),
    Rule('anything else', _ANYTHING, _gaussian(0.02)),
)

TVSL_GATES = frozenset({'ap_w', 'acp_w', 'vp_w', 'icp_w', 'aip_w', 'iap_w'})

AUDIOCLIP_RULES = (
    Rule('counter or integer entry',
         lambda e: e.key.endswith('num_batches_tracked') or np.issubdtype(e.dtype, np.integer), _zeros),
    Rule('BatchNorm running mean', _key_ends('running_mean'), _gaussian(0.1)),
    Rule('BatchNorm running variance', _key_ends('running_var'), _uniform(0.5, 1.5)),
    Rule('temperature', lambda e: e.leaf.startswith('logit_scale'), _constant(np.log(100.0))),
    Rule('T-VSL gate', lambda e: e.leaf in TVSL_GATES, _gaussian(0.1, mean=0.5)),
    Rule('FBSP m', _key_ends('fbsp.m'), _gaussian(0.01)),
    Rule('FBSP fb', _key_ends('fbsp.fb'), _gaussian(0.01, mean=1.0)),
    Rule('FBSP fc', _key_ends('fbsp.fc'), _index_ramp),
    Rule('STFT window', lambda e: e.leaf == 'window' and e.ndim == 1, _window),
    Rule('embedding tables',
         lambda e: e.key.endswith('token_embedding.weight') or e.leaf == 'positional_embedding', _gaussian(0.02)),
    Rule('text projection', _leaf_is('text_projection'), _divided_by_sqrt(lambda shape: shape[0])),
    Rule('norm scale', lambda e: e.leaf == 'weight' and e.ndim == 1, _gaussian(0.1, mean=1.0)),
    Rule('norm bias', _bias_beside_vector_weight, _gaussian(0.1)),
    Rule('conv / linear / attention weight',
         lambda e: (e.leaf == 'weight' or e.leaf.endswith('_weight')) and e.ndim >= 2, _divided_by_sqrt(_fan_in)),
    Rule('anything else (other biases included)', _ANYTHING, _gaussian(0.02)),
)


# ---------------------------------------------------------------------------------------- fingerprints


def _avgn_record(key: str, array: np.ndarray) -> bytes:
  little = array.dtype.newbyteorder('<')
  return b''.join([key.encode(), str(array.shape).encode(), little.str.encode(), array.astype(little).tobytes()])


def _audioclip_record(key: str, array: np.ndarray) -> bytes:
  little = array.dtype.newbyteorder('<')
  header = key.encode('utf-8') + b'\0' + str(array.shape).encode() + array.dtype.str.encode() + b'\0'
  return header + array.astype(little, copy=False).tobytes()


# ------------------------------------------------------------------------------------------- recipes


def load_spec(path) -> list[SpecEntry]:
  """`[[key, shape, dtype], ...]` from a spec json, as (str, tuple of ints, str) in file order."""
  with open(path) as f:
    rows = json.load(f)
  return _normalised(rows)


def _normalised(rows) -> list[SpecEntry]:
  return [(str(key), tuple(int(n) for n in shape), str(dtype)) for key, shape, dtype in rows]


def entry_generator(seed: int, key: str) -> np.random.Generator:
  return np.random.default_rng([int(seed), zlib.crc32(key.encode('utf-8'))])


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One golden set's weight recipe: rules for the values and the layout of its fingerprint."""
  name: str
  rules: tuple[Rule, ...]
  record: Callable[[str, np.ndarray], bytes]

  load_spec = staticmethod(load_spec)

  def rule_for(self, entry: Entry) -> Rule:
    return next(rule for rule in self.rules if rule.matches(entry))

  def make_state_dict(self, spec, seed: int) -> dict[str, np.ndarray]:
    """{key: array} in spec order; `spec` is a list of [key, shape, dtype] or the path of a spec json."""
    rows = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else _normalised(spec)
    shapes = {key: shape for key, shape, _ in rows}
    state_dict = {}
    for key, shape, dtype in rows:
      entry = Entry(key, shape, np.dtype(dtype), shapes)
      value = self.rule_for(entry).draw(entry_generator(seed, key), entry)
      state_dict[key] = np.asarray(value).astype(entry.dtype).reshape(shape)
    return state_dict

  def fingerprint(self, state_dict: dict[str, np.ndarray]) -> str:
    """sha256 over every entry's key, shape, dtype and little-endian bytes, in dict order."""
    digest = hashlib.sha256()
    for key, value in state_dict.items():
      digest.update(self.record(key, np.ascontiguousarray(value)))
    return digest.hexdigest()


AVGN = Recipe('avgn', AVGN_RULES, _avgn_record)
AUDIOCLIP = Recipe('audioclip', AUDIOCLIP_RULES, _audioclip_record)  # AudioCLIP and T-VSL.
RECIPES = {recipe.name: recipe for recipe in (AVGN, AUDIOCLIP)}


def main(argv: Sequence[str]) -> None:
  if len(argv) not in (3, 4) or argv[1] not in RECIPES:
    sys.exit(f'usage: python {argv[0]} {{{",".join(RECIPES)}}} SPEC_JSON [SEED]')
  recipe = RECIPES[argv[1]]
  state_dict = recipe.make_state_dict(argv[2], int(argv[3]) if len(argv) == 4 else 0)
  values = sum(int(v.size) for v in state_dict.values())
  print(f'{len(state_dict)} entries, {values} values, sha256 {recipe.fingerprint(state_dict)}')


if __name__ == '__main__':
  main(sys.argv)
