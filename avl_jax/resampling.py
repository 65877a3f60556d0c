"""Resampling shared by the data pipeline and the metrics: PyTorch's bicubic and OpenCV's nearest neighbour.

Axis letters: h/w input size, H/W output size (224x224 for maps and GT: `GT_SIZE`).

* `bicubic_taps`, `bicubic_matrix`, `upsample_bicubic`, `upsample_bicubic_jax`: PyTorch's
  `F.interpolate(mode='bicubic')` (cubic-convolution A = -0.75, border taps clamped, no antialiasing), as a
  matrix product U = M_h S M_w^T: in float64 for float64 inputs (~1e-15 from torch's float64 kernel); float32
  inputs get a float32 H pass, within a few ulps of torch's float32 kernel (which also accumulates in float32).
  The metrics upsample localization maps with it (docs/metrics.md §1); the eval pipeline resizes T-VSL's test
  frames with it (`eval_resize='torch_tensor'`, docs/tvsl.md §7).
* `resize_mask_nearest`: OpenCV's INTER_NEAREST, which the official VGG-Instruments loader applies to mask GT
  (docs/metrics.md §2).
"""
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BICUBIC_A = -0.75
# The grid both official evaluators compare maps with GT on (224 x 224): maps are upsampled to it, mask GT
# resized to it (the eval batches' `gt_mask`), boxes rasterised on it (avl_jax/metrics/gt_maps.py).
GT_SIZE = 224


def _cubic_coefficients(t: np.ndarray, a: float) -> np.ndarray:
  """Returns the 4 tap weights [4, ...] for fractional offsets t, in t's dtype (torch's Horner forms)."""
  dtype = t.dtype.type
  a, one, two = dtype(a), dtype(1), dtype(2)

  def near(x):  # |x| <= 1
    return ((a + two) * x - (a + dtype(3))) * x * x + one

  def far(x):  # 1 < |x| < 2
    return ((a * x - dtype(5) * a) * x + dtype(8) * a) * x - dtype(4) * a

  return np.stack([far(t + one), near(t), near(one - t), far(two - t)])


def bicubic_taps(in_size: int, out_size: int, align_corners: bool = False, a: float = BICUBIC_A,
                 dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights of PyTorch's 1-D bicubic resampling.

  Args:
    in_size: input length.
    out_size: output length.
    align_corners: PyTorch's flag (False: src = (o + 0.5) * in / out - 0.5, unclamped).
    a: cubic-convolution coefficient (PyTorch: -0.75).
    dtype: arithmetic of the index and weight computation (torch uses the tensor's dtype).

  Returns:
    (indices [4, out_size] int64 clamped to [0, in_size - 1], weights [4, out_size] in `dtype`).
  """
  dtype = np.dtype(dtype).type
  if align_corners:
    scale = dtype(in_size - 1) / dtype(out_size - 1) if out_size > 1 else dtype(0)
    src = scale * np.arange(out_size, dtype=dtype)
  else:
    scale = dtype(in_size) / dtype(out_size)
    src = scale * (np.arange(out_size, dtype=dtype) + dtype(0.5)) - dtype(0.5)
  floor = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  t = np.clip(src - floor.astype(dtype), dtype(0), dtype(1))
  weights = _cubic_coefficients(t, a)
  indices = np.clip(floor[None, :] + np.arange(-1, 3)[:, None], 0, in_size - 1)
  return indices, weights


@functools.lru_cache(maxsize=64)
def _bicubic_matrix_cached(in_size: int, out_size: int, align_corners: bool, a: float) -> np.ndarray:
  indices, weights = bicubic_taps(in_size, out_size, align_corners, a, np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.broadcast_to(np.arange(out_size), indices.shape)
  np.add.at(matrix, (rows, indices), weights)
  matrix.setflags(write=False)
  return matrix


def bicubic_matrix(in_size: int, out_size: int, align_corners: bool = False,
                   a: float = BICUBIC_A) -> np.ndarray:
  """Returns M [out_size, in_size] float64 with M @ x = PyTorch bicubic resampling of x (clamped taps add up).

  The returned array is cached and read-only.
  """
  return _bicubic_matrix_cached(int(in_size), int(out_size), bool(align_corners), float(a))


def upsample_bicubic(maps: np.ndarray, out_hw: tuple[int, int], align_corners: bool = False) -> np.ndarray:
  """PyTorch bicubic upsampling of the last two axes in NumPy: U = M_h S M_w^T.

  Float64 input: computed in float64 (~1e-15 from torch's float64 kernel). Float32 (or narrower) input: the
  small W pass in float64 rounded to float32, then the H pass as a float32 matrix product; torch's float32
  kernel also accumulates in float32, and the two differ by a few float32 ulps (golden `avl_map_up` from
  `Savl`: at most 2 ulps, 1.5e-5 at |values| < 74, the same as the float64 result rounded to float32).

  Args:
    maps: [..., h, w] float array.
    out_hw: (H, W).
    align_corners: PyTorch's flag.

  Returns:
    [..., H, W], float32 for float32 (or narrower) input, else float64.
  """
  maps = np.asarray(maps)
  dtype = np.float32 if maps.dtype.itemsize <= 4 else np.float64
  *lead, in_h, in_w = maps.shape
  out_h, out_w = out_hw
  m_h = bicubic_matrix(in_h, out_h, align_corners).astype(dtype)
  m_w = bicubic_matrix(in_w, out_w, align_corners)
  rows = (maps.reshape(-1, in_h, in_w).astype(np.float64) @ m_w.T).astype(dtype)  # [B, h, W]
  # The H pass as many small GEMMs (blocks of <= 64 output rows): OpenBLAS runs those single-threaded,
  # where one large GEMM would start its thread pool, whose spinning threads slow down the caller's
  # own worker threads.
  blocks = next(b for b in range(1, out_h + 1) if out_h % b == 0 and out_h // b <= 64)
  out = np.matmul(m_h.reshape(blocks, out_h // blocks, in_h), rows[:, None])  # [B, blocks, H/blocks, W]
  return out.reshape(*lead, out_h, out_w)


def upsample_bicubic_jax(maps: jax.Array, out_hw: tuple[int, int], align_corners: bool = False) -> jax.Array:
  """PyTorch bicubic upsampling of the last two axes in JAX (usable under jit; shapes are static).

  Args:
    maps: [..., h, w] float array.
    out_hw: (H, W).
    align_corners: PyTorch's flag.

  Returns:
    [..., H, W] in maps' dtype: M_h S M_w^T with the float64 matrices of `bicubic_matrix` cast to that dtype
    and HIGHEST matmul precision (float32 result within float32 rounding of the NumPy version).
  """
  maps = jnp.asarray(maps)
  m_h = jnp.asarray(bicubic_matrix(maps.shape[-2], out_hw[0], align_corners), maps.dtype)
  m_w = jnp.asarray(bicubic_matrix(maps.shape[-1], out_hw[1], align_corners), maps.dtype)
  return jnp.einsum("oh,...hw,pw->...op", m_h, maps, m_w, precision=jax.lax.Precision.HIGHEST)


def resize_mask_nearest(mask: np.ndarray, size: Sequence[int] = (GT_SIZE, GT_SIZE)) -> np.ndarray:
  """OpenCV `cv2.resize(mask, (W, H), interpolation=INTER_NEAREST)` of a 2-D mask [h, w] -> [H, W].

  OpenCV's nearest neighbour has no half-pixel offset: src = ⌊dst · (1 / (W / w))⌋ computed in doubles,
  capped at w - 1 (likewise for rows). Values keep the mask's dtype.
  """
  mask = np.asarray(mask)
  in_h, in_w = mask.shape[:2]
  out_h, out_w = int(size[0]), int(size[1])
  inv_x = 1.0 / (out_w / in_w)
  inv_y = 1.0 / (out_h / in_h)
  cols = np.minimum(np.floor(np.arange(out_w) * inv_x).astype(np.int64), in_w - 1)
  rows = np.minimum(np.floor(np.arange(out_h) * inv_y).astype(np.int64), in_h - 1)
  return mask[rows[:, None], cols[None, :]]
