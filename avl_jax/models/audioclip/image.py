"""CLIP's ModifiedResNet-50 image tower with attention pooling (AudioCLIP's `visual.*`), NHWC.

Axis letters: B batch, H/W image height/width, h/w feature-map height/width, L tokens, N heads, K head
width, D channels / token width, E output width.

Spec tvsl.md §2.2: a 3-conv stem, anti-aliased strides (AvgPool before the strided 1x1 paths) and an
attention pool. Global mode (CLIP) prepends the token mean and returns its output; token mode (T-VSL)
returns every spatial token, with the positional table interpolated to the token count. Names mirror the
official state dict (`conv1`, `layer2_0/downsample_0`, `attnpool/q_proj`, ...).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avl_jax.models.audioclip import common

POS_INTERP_MODES = ('official_1d', 'grid_2d')


class Bottleneck(nn.Module):
  """CLIP's anti-aliased bottleneck, `visual.layer{i}.{j}`.

  1x1 -> BN -> ReLU -> 3x3 (pad 1) -> BN -> ReLU -> AvgPool(s) -> 1x1 -> BN; the shortcut is
  AvgPool(s) -> 1x1 -> BN (`downsample_0/1`) when s > 1 or the width changes; add; ReLU. All convolutions
  are bias-free and have stride 1.

  Attributes:
    planes: p; the block outputs 4p channels.
    strides: s, applied by the average pools.
    dtype: computation dtype.
    bn_groups: train-mode BatchNorm statistics per group of the batch (common.batch_norm).
  """
  planes: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, H, W, D_in] -> [B, H // s, W // s, 4p]."""
    y = common.conv(self.planes, (1, 1), name='conv1', dtype=self.dtype)(x)
    y = nn.relu(common.batch_norm('bn1', dtype=self.dtype, groups=self.bn_groups)(y, train=train))
    y = common.conv(self.planes, (3, 3), padding=(1, 1), name='conv2', dtype=self.dtype)(y)
    y = nn.relu(common.batch_norm('bn2', dtype=self.dtype, groups=self.bn_groups)(y, train=train))
    y = common.avg_pool(y, self.strides)
    y = common.conv(4 * self.planes, (1, 1), name='conv3', dtype=self.dtype)(y)
    y = common.batch_norm('bn3', dtype=self.dtype, groups=self.bn_groups)(y, train=train)
    residual = x
    if self.strides > 1 or x.shape[-1] != 4 * self.planes:
      residual = common.conv(4 * self.planes, (1, 1), name='downsample_0', dtype=self.dtype)(
          common.avg_pool(x, self.strides))
      residual = common.batch_norm('downsample_1', dtype=self.dtype, groups=self.bn_groups)(
          residual, train=train)
    return nn.relu(y + residual)


def linear_align_corners_1d(table: jax.Array, size: int) -> jax.Array:
  """F.interpolate(mode='linear', align_corners=True) along axis 0: [n, D] -> [size, D].

  Sample j sits at source position j (n - 1) / (size - 1), computed in float32 as PyTorch does; the two
  neighbours are mixed with weights 1 - frac and frac.
  """
  length = table.shape[0]
  if size == length:
    return table
  scale = np.float32(length - 1) / np.float32(size - 1) if size > 1 else np.float32(0)
  position = (scale * np.arange(size, dtype=np.float32)).astype(np.float32)
  lower = np.floor(position).astype(np.int64)
  upper = np.minimum(lower + 1, length - 1)
  frac = (position - lower.astype(np.float32)).astype(np.float32)
  return (1.0 - frac)[:, None] * table[lower] + frac[:, None] * table[upper]


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PyTorch's linear interpolation with align_corners=False (half-pixel centres)."""
  matrix = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    source = max((i + 0.5) * scale - 0.5, 0.0)
    lower = min(int(np.floor(source)), in_size - 1)
    upper = min(lower + 1, in_size - 1)
    frac = source - lower
    matrix[i, lower] += 1.0 - frac
    matrix[i, upper] += frac
  return matrix.astype(np.float32)


def bilinear_grid_2d(table: jax.Array, grid: int, out_hw: tuple[int, int]) -> jax.Array:
  """Bilinear (align_corners=False) resize of a [grid * grid, D] row-major table to [h * w, D]."""
  height, width = out_hw
  if (height, width) == (grid, grid):
    return table
  rows, cols = _bilinear_matrix(grid, height), _bilinear_matrix(grid, width)
  resized = jnp.einsum('hi,wj,ijd->hwd', rows, cols, table.reshape(grid, grid, -1),
                       precision=jax.lax.Precision.HIGHEST)
  return resized.reshape(height * width, -1)


class AttentionPool2d(nn.Module):
  """CLIP's attention pool (`visual.attnpool`): multi-head attention over the feature-map tokens.

  Attributes:
    spatial_size: side of the grid the positional table was trained for (7 for 224 px).
    num_heads: heads (32 for RN50: 2048 / 64).
    output_dim: width of `c_proj` (the joint embedding, 1024).
    pos_interp: token-mode positional table for other token counts: 'official_1d' (T-VSL: keep row 0,
      interpolate rows 1.. linearly over the flattened sequence, so the CLS embedding lands on token 0)
      or 'grid_2d' (bilinear resize of the 7x7 grid to the feature map, no CLS embedding).
    dtype: computation dtype (softmax in float32).
  """
  spatial_size: int = 7
  num_heads: int = 32
  output_dim: int = 1024
  pos_interp: str = 'official_1d'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, return_tokens: bool = False) -> jax.Array:
    """x [B, h, w, D] -> [B, E] (global: output of the mean token), or [B, h * w, E] (token mode)."""
    if self.pos_interp not in POS_INTERP_MODES:
      raise ValueError(f'pos_interp={self.pos_interp!r}; expected one of {POS_INTERP_MODES}.')
    batch, height, width, channels = x.shape
    table = self.param('positional_embedding', nn.initializers.normal(channels**-0.5),
                       (self.spatial_size**2 + 1, channels), jnp.float32)
    tokens = x.reshape(batch, height * width, channels)
    if return_tokens:
      positions = self._token_positions(table, (height, width))
    else:
      tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
      positions = self._global_positions(table, (height, width))
    tokens = tokens + positions.astype(self.dtype)[None]
    queries = tokens if return_tokens else tokens[:, :1]  # Global mode only reads output 0.
    attended = self._attention(queries, tokens, channels)
    out = nn.Dense(self.output_dim, kernel_init=nn.initializers.normal(channels**-0.5), dtype=self.dtype,
                   name='c_proj')(attended)
    return out if return_tokens else out[:, 0]

  def _dense(self, channels: int, name: str) -> nn.Dense:
    return nn.Dense(channels, kernel_init=nn.initializers.normal(channels**-0.5), dtype=self.dtype, name=name)

  def _attention(self, queries: jax.Array, tokens: jax.Array, channels: int) -> jax.Array:
    """Multi-head attention with separate q/k/v projections: [B, Lq, D], [B, L, D] -> [B, Lq, D]."""
    head_width = channels // self.num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, head_width)
    query = split(self._dense(channels, 'q_proj')(queries)) * head_width**-0.5
    key = split(self._dense(channels, 'k_proj')(tokens))
    value = split(self._dense(channels, 'v_proj')(tokens))
    logits = jnp.einsum('blnk,bmnk->bnlm', query, key).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attended = jnp.einsum('bnlm,bmnk->blnk', weights, value)
    return attended.reshape(queries.shape[0], queries.shape[1], channels)

  def _global_positions(self, table: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """[1 + h * w, D] for the mean token and the spatial tokens."""
    if grid_hw == (self.spatial_size, self.spatial_size):
      return table
    if self.pos_interp != 'grid_2d':
      raise ValueError(f'Global attention pooling of a {grid_hw[0]}x{grid_hw[1]} map needs the '
                       f'{self.spatial_size}x{self.spatial_size} grid of the positional table (CLIP fails '
                       "here); use pos_interp='grid_2d' to resize the table.")
    spatial = bilinear_grid_2d(table[1:], self.spatial_size, grid_hw)
    return jnp.concatenate([table[:1], spatial], axis=0)

  def _token_positions(self, table: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """[h * w, D] for the spatial tokens in token mode."""
    count = grid_hw[0] * grid_hw[1]
    if self.pos_interp == 'grid_2d':
      return bilinear_grid_2d(table[1:], self.spatial_size, grid_hw)
    if count == table.shape[0]:  # T-VSL uses the table unchanged when the counts happen to agree.
      return table
    return jnp.concatenate([table[:1], linear_align_corners_1d(table[1:], count - 1)], axis=0)


class ModifiedResNet(nn.Module):
  """CLIP RN50 image tower: 3-conv stem, anti-aliased bottleneck stages, attention pool.

  Sows `layer4` [B, h, w, 4 * 8 * width] to 'intermediates'.

  Attributes:
    layers: bottlenecks per stage (RN50: 3, 4, 6, 3).
    width: stem width w (64); stage i has planes w * 2^i.
    num_heads: attention-pool heads.
    output_dim: embedding width.
    input_resolution: the resolution the positional table was trained for (224 -> a 7x7 grid).
    pos_interp: see AttentionPool2d.
    dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    bn_groups: train-mode BatchNorm statistics per group of the batch (1 = the whole batch; k = per-device
      statistics on k devices, T-VSL's DDP without SyncBN).
  """
  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_heads: int = 32
  output_dim: int = 1024
  input_resolution: int = 224
  pos_interp: str = 'official_1d'
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False, return_tokens: bool = False) -> jax.Array:
    """Encodes images.

    Args:
      image: [B, H, W, 3], CLIP-normalised.
      train: BatchNorm with batch statistics.
      return_tokens: T-VSL's token mode.

    Returns:
      [B, output_dim], or tokens [B, (H / 32) * (W / 32), output_dim] row-major over (rows, columns).
    """
    x = image.astype(self.dtype)
    stem = ((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))
    for index, (features, strides) in enumerate(stem, start=1):
      x = common.conv(features, (3, 3), strides=strides, padding=(1, 1), name=f'conv{index}',
                      dtype=self.dtype)(x)
      x = nn.relu(common.batch_norm(f'bn{index}', dtype=self.dtype, groups=self.bn_groups)(x, train=train))
    x = common.avg_pool(x, 2)
    for stage, num_blocks in enumerate(self.layers):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = Bottleneck(self.width * 2**stage, strides, dtype=self.dtype, bn_groups=self.bn_groups,
                       name=f'layer{stage + 1}_{index}')(x, train=train)
    self.sow('intermediates', 'layer4', x)
    return AttentionPool2d(
        self.input_resolution // 32, self.num_heads, self.output_dim, self.pos_interp, dtype=self.dtype,
        name='attnpool')(x, return_tokens=return_tokens)
