"""Rules on parameter paths: which parameters the optimizer freezes (`config.optimizer.frozen`).

A parameter's path is its keys joined by '/', e.g. 'audioclip/visual/conv1/kernel' or 'imgnet/layer1_0/conv1/
kernel'. A rule is a regular expression that must match the whole path (`re.fullmatch`), as big_vision's
`config.schedule` names the towers it freezes: `config.optimizer.frozen = r'audioclip/.*'`.
"""
from collections.abc import Mapping
import re
from typing import Any

from flax import traverse_util
import numpy as np
import optax

TRAINABLE, FROZEN = "trainable", "frozen"


def path_names(params: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
  """{flattened key: 'a/b/c'} of every leaf."""
  return {path: "/".join(str(k) for k in path) for path in traverse_util.flatten_dict(dict(params))}


def frozen_mask(params: Mapping[str, Any], pattern: str | None, *, field: str = "config.optimizer.frozen") -> Any:
  """Pytree like `params` with True where the leaf's path fully matches `pattern` (None / '': nothing frozen).

  Raises:
    ValueError: the pattern is not a valid regular expression, or matches no parameter (a typo would
      otherwise train the towers it meant to freeze).
  """
  names = path_names(params)
  if not pattern:
    return traverse_util.unflatten_dict({path: False for path in names})
  try:
    rule = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{field}={pattern!r} is not a regular expression: {e}.") from e
  mask = {path: rule.fullmatch(name) is not None for path, name in names.items()}
  if names and not any(mask.values()):
    tops = sorted({path[0] for path in names})
    raise ValueError(f"{field}={pattern!r} matches no parameter path (paths look like "
                     f"{next(iter(names.values()))!r}; top-level names: {tops}).")
  return traverse_util.unflatten_dict(mask)


def freeze(tx: optax.GradientTransformation, pattern: str | None) -> optax.GradientTransformation:
  """`tx` on the trainable leaves; zero updates and no optimizer state for those `pattern` matches."""
  if not pattern:
    return tx

  def labels(params):
    flat = traverse_util.flatten_dict(dict(frozen_mask(params, pattern)))
    return traverse_util.unflatten_dict({path: FROZEN if frozen else TRAINABLE for path, frozen in flat.items()})

  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def count(params: Mapping[str, Any], mask: Any | None = None, *, frozen: bool | None = None) -> int:
  """Values in `params` (arrays or ShapeDtypeStructs); with `mask`, only the frozen (True) or trainable leaves."""
  flat = traverse_util.flatten_dict(dict(params))
  flat_mask = traverse_util.flatten_dict(dict(mask)) if mask is not None else {}
  return sum(int(np.prod(leaf.shape, dtype=np.int64)) for path, leaf in flat.items()
             if frozen is None or bool(flat_mask.get(path, False)) == frozen)
