"""Small pieces shared by the AudioCLIP towers: PyTorch-exact arithmetic, convolutions, norms.

Axis letters: B batch, H height, W width, D channels.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avl_jax.models import layers


def exact_divide(numerator: jax.Array, denominator: jax.Array | float) -> jax.Array:
  """numerator / denominator rounded once, as PyTorch divides (IEEE), broadcast to numerator's shape.

  XLA rewrites a division by a broadcast value into a multiplication by its reciprocal, which is off by one
  ulp for some elements. That matters where a quotient close to 1 is then reduced by 1 (the FBSP input
  rescale of a [-1, 1] waveform keeps only ~10 significant bits), so the divisor is materialised at full
  shape behind an optimisation barrier, which keeps the rewrite away.
  """
  denominator = jnp.broadcast_to(jnp.asarray(denominator, numerator.dtype), numerator.shape)
  return numerator / jax.lax.optimization_barrier(denominator)


def pytorch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
  """torch.linspace(start, end, num) in float32 on CPU, bit for bit.

  PyTorch steps from the nearer end: element i < num // 2 is start + step * i, the others end - step *
  (num - 1 - i), with step = float32((end - start) / (num - 1)) and one rounding per element (the float64
  products here are exact). np.linspace(...).astype(float32) differs in the last bit for many elements.
  """
  step = np.float64(np.float32((end - start) / (num - 1)))
  index = np.arange(num, dtype=np.float64)
  values = np.where(index < num // 2, start + step * index, end - step * (num - 1 - index))
  return values.astype(np.float32)


def conv(features: int, kernel_size: tuple[int, int], *, strides: int = 1,
         padding: tuple[int, int] = (0, 0), groups: int = 1, use_bias: bool = False,
         name: str | None = None, dtype: Any = jnp.float32) -> nn.Conv:
  """nn.Conv with PyTorch's explicit symmetric padding (never 'SAME', which pads stride 2 asymmetrically).

  Args:
    features: output channels.
    kernel_size: (kh, kw).
    strides: the same stride on both axes.
    padding: (ph, pw) zeros on both sides of H and W.
    groups: feature groups (32 for ResNeXt, = channels for a depthwise conv).
    use_bias: add a bias.
    name: module name (the official state-dict name, numbered children joined with '_'); None inside
      `setup`, where the attribute name is used.
    dtype: computation dtype (the kernel stays float32).
  """
  return nn.Conv(
      features, kernel_size, strides=(strides, strides),
      padding=((padding[0], padding[0]), (padding[1], padding[1])), feature_group_count=groups,
      use_bias=use_bias, kernel_init=layers.kaiming_fan_out_normal, bias_init=nn.initializers.zeros,
      dtype=dtype, name=name)


def batch_norm(name: str | None = None, *, dtype: Any = jnp.float32, groups: int = 1) -> layers.BatchNorm:
  """PyTorch BatchNorm2d (eps 1e-5, momentum 0.1, unbiased running variance); statistics in float32.

  groups > 1: train-mode statistics per consecutive group of the batch (DDP without SyncBN, one group per
  device; see layers.BatchNorm).
  """
  return layers.BatchNorm(dtype=dtype, groups=groups, name=name)


def avg_pool(x: jax.Array, stride: int) -> jax.Array:
  """PyTorch AvgPool2d(stride): non-overlapping windows, a remainder row/column is dropped; [B, H, W, D]."""
  if stride == 1:
    return x
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding='VALID')


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch MaxPool2d(3, stride 2, padding 1): padding is -inf, the init value of reduce_window."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def adaptive_max_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """PyTorch AdaptiveMaxPool2d: x [B, H, W, D] -> [B, h, w, D].

  Output cell i of an axis of length n -> m covers [floor(i n / m), ceil((i + 1) n / m)); for non-integer
  ratios neighbouring windows overlap. Separable: the max over a rectangle is the max over its rows of the
  max over its columns.
  """
  for axis, out_size in ((1, out_hw[0]), (2, out_hw[1])):
    in_size = x.shape[axis]
    if in_size == out_size:
      continue
    starts = [(i * in_size) // out_size for i in range(out_size)]
    ends = [-((-(i + 1) * in_size) // out_size) for i in range(out_size)]
    width = max(e - s for s, e in zip(starts, ends))
    # Windows shorter than `width` repeat their last index, which does not change a max.
    index = np.array([[min(s + k, e - 1) for k in range(width)] for s, e in zip(starts, ends)])
    gathered = jnp.take(x, index.reshape(-1), axis=axis)
    shape = x.shape[:axis] + (out_size, width) + x.shape[axis + 1:]
    x = jnp.max(gathered.reshape(shape), axis=axis + 1)
  return x
