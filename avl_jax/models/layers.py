"""Layers shared by the avl_jax models, numerically matched to their PyTorch counterparts.

Axis letters: B batch, H height, W width, L tokens, D channels/width.

Mixed precision (`dtype` of the models): parameters are float32 (Flax's param_dtype), BatchNorm statistics, LayerNorm
statistics and softmaxes are computed in float32 whatever the computation dtype (`softmax`; Flax's LayerNorm
reduces in float32 and casts its output to `dtype`).

Flax defaults differ from PyTorch in several places that change numbers (docs/avgn.md §15): LayerNorm eps
(1e-6 vs 1e-5), GELU (tanh vs erf), BatchNorm's running variance (biased vs unbiased) and truncated-normal
initialisers (cut at 2 sigma vs an absolute 2). Everything here uses the PyTorch behaviour.
"""
import contextlib
import contextvars
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5
L2_NORM_EPS = 1e-12
# PyTorch's timm-style trunc_normal_(std=0.02) cuts at an absolute +-2, i.e. at 100 sigma: a plain normal.
DENSE_INIT_STD = 0.02

# torchvision's ResNet init and the official AVGN audio-net init: N(0, 2 / (out * kh * kw)), untruncated.
kaiming_fan_out_normal: Initializer = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_kernel_init: Initializer = nn.initializers.normal(DENSE_INIT_STD)


_REFERENCE_KERNELS = contextvars.ContextVar('avl_jax_reference_kernels', default=False)


def use_fast_kernels() -> bool:
  """False inside `reference_kernels()`: the layers then trace their plain-JAX reference formulations."""
  return not _REFERENCE_KERNELS.get()


@contextlib.contextmanager
def reference_kernels(enabled: bool = True):
  """Within this context (at trace time) `max_pool` traces the straightforward formulation its faster one replaced
  (`nn.max_pool`, whose gradient XLA computes with a select-and-scatter): the same function, up to the order of
  float additions. For A/B benchmarks (train_benchmark's fp32_reference variant) and equivalence tests."""
  token = _REFERENCE_KERNELS.set(enabled)
  try:
    yield
  finally:
    _REFERENCE_KERNELS.reset(token)


def normal_around_one(std: float) -> Initializer:
  """Initialiser N(1, std^2), used for the audio ResNet's BatchNorm scales (docs/avgn.md §5)."""

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return 1.0 + std * jax.random.normal(key, shape, dtype)

  return init


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Conv/Linear bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense(features: int, *, name: str | None = None, dtype: Any = jnp.float32) -> nn.Dense:
  """A Linear layer with the transformer init of docs/avgn.md §5 step 3: weight N(0, 0.02^2), bias 0."""
  return nn.Dense(
      features, dtype=dtype, kernel_init=dense_kernel_init, bias_init=nn.initializers.zeros, name=name)


def maybe_remat(module_class: type[nn.Module], enabled: bool, static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """`nn.remat(module_class)` (activations recomputed in the backward pass) if enabled, else the class itself.

  static_argnums count `self` as 0 (Flax's convention): e.g. (2,) for `__call__(self, x, train)`. The static
  arguments must be passed positionally (`nn.remat` specialises positional arguments only). The remat'd class
  keeps the module's name, so its parameters and statistics are the same tree as without remat.
  """
  return nn.remat(module_class, static_argnums=static_argnums) if enabled else module_class


def softmax(logits: jax.Array, axis: int, dtype: Any) -> jax.Array:
  """Softmax of `logits` computed in float32 (at least), cast to `dtype` (the computation dtype)."""
  return jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=axis).astype(dtype)


def layer_norm(*, name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  """PyTorch nn.LayerNorm: eps 1e-5, affine, scale 1 and bias 0 at init."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, PyTorch's nn.GELU default."""
  return jax.nn.gelu(x, approximate=False)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """PyTorch F.normalize: x / max(||x||_2, 1e-12) along `axis`; same shape as x."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, L2_NORM_EPS)


class BatchNorm(nn.Module):
  """BatchNorm2d over the last axis with PyTorch's semantics.

  Train: normalises with the biased batch variance; the running variance is updated with the unbiased one
  (x n/(n-1)) when `torch_running_var` (PyTorch), with the biased one otherwise (Flax). Eval: running stats.
  Statistics are reduced over every axis but the last of the array this call sees; under `jit` on a
  sharded global batch that is the global batch (a SyncBN). `groups` > 1 reproduces the official per-GPU
  statistics (DDP without SyncBN): the batch is split into `groups` consecutive equal parts, each normalised
  with its own statistics; the running statistics move towards the mean of the groups' statistics (PyTorch
  keeps one replica's, rank 0's, which no single-program run can single out).

  Attributes:
    momentum: Flax convention, running = momentum * running + (1 - momentum) * batch (0.9 = PyTorch 0.1).
    epsilon: added to the variance.
    torch_running_var: update the running variance with the unbiased batch variance.
    groups: batch-statistics groups (1 = the whole batch; k = the official run's number of GPUs).
    scale_init: initialiser of the affine scale (PyTorch default: ones).
    dtype: output dtype; the statistics are always computed in float32.
  """
  momentum: float = 0.9
  epsilon: float = BATCH_NORM_EPS
  torch_running_var: bool = True
  groups: int = 1
  scale_init: Initializer = nn.initializers.ones
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Normalises x [B, ..., D]; returns the same shape."""
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x = x.astype(jnp.float32)
    if train:
      shape = x.shape
      groups = self.groups if not self.is_initializing() else 1
      if groups < 1 or shape[0] % groups:
        raise ValueError(f'BatchNorm groups={groups} must divide the batch size {shape[0]}.')
      x = x.reshape(groups, shape[0] // groups, *shape[1:])
      reduce_axes = tuple(range(1, x.ndim - 1))
      mean = jnp.mean(x, axis=reduce_axes, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=reduce_axes, keepdims=True)
      y = ((x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias).reshape(shape)
      if not self.is_initializing():
        count = math.prod(x.shape[1:-1])
        update_var = var * (count / max(count - 1, 1)) if self.torch_running_var else var
        mean_update = jnp.mean(mean.reshape(groups, features), axis=0)
        var_update = jnp.mean(update_var.reshape(groups, features), axis=0)
        running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * mean_update
        running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * var_update
      return y.astype(self.dtype)
    y = (x - running_mean.value) * (scale * jax.lax.rsqrt(running_var.value + self.epsilon)) + bias
    return y.astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample (timm DropPath).

  Train: keeps each sample with probability 1 - rate and scales kept ones by 1 / (1 - rate); needs the
  'dropout' RNG stream. Eval: identity.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, ...] -> same shape."""
    if not train or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, mask_shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 over the last axis (timm Mlp, dropouts 0).

  Attributes:
    hidden_features: width of fc1.
    out_features: width of fc2; defaults to the input width.
    dtype: computation dtype.
  """
  hidden_features: int
  out_features: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., D_in] -> [..., out_features or D_in]."""
    out_features = self.out_features or x.shape[-1]
    hidden = gelu(dense(self.hidden_features, name='fc1', dtype=self.dtype)(x))
    return dense(out_features, name='fc2', dtype=self.dtype)(hidden)


def max_over_axes(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """max of x over `axes`, whose gradient goes to the first maximal element only (PyTorch's max-pool backward).

  Written as a sum against a stop-gradient one-hot of the argmax: the forward value is exactly the max, and it
  sidesteps `jnp.max`'s tie-splitting gradient, which under jit on a batch-sharded array with train-mode
  BatchNorm gave gradients differing by up to 100% from the 1-device result (XLA:CPU, jax 0.10.2, measured
  on 8 fake devices); this form agrees to 1e-5.
  """
  axes = tuple(a % x.ndim for a in axes)
  kept = [a for a in range(x.ndim) if a not in axes]
  moved = jnp.transpose(x, kept + list(axes))
  flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
  one_hot = jax.nn.one_hot(jnp.argmax(flat, axis=-1), flat.shape[-1], dtype=x.dtype)
  return jnp.sum(flat * jax.lax.stop_gradient(one_hot), axis=-1)


def _max_pool_forward(xp: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                      out_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """(max over each window of the padded xp, int8 row-major offset of the window's first maximal element)."""
  best, index = None, None
  for i in range(window[0]):
    for j in range(window[1]):
      limit = (xp.shape[0], i + strides[0] * (out_hw[0] - 1) + 1, j + strides[1] * (out_hw[1] - 1) + 1, xp.shape[3])
      piece = jax.lax.slice(xp, (0, i, j, 0), limit, (1, strides[0], strides[1], 1))
      if best is None:
        best, index = piece, jnp.zeros(piece.shape, jnp.int8)
      else:
        index = jnp.where(piece > best, jnp.int8(i * window[1] + j), index)  # strict: the first maximum wins
        best = jnp.maximum(best, piece)  # lax.max, as reduce_window: NaNs propagate
  return best, index


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """2-D max pool of x [B, H, W, D] padded with -inf (PyTorch MaxPool2d / `nn.max_pool` with explicit padding).

  The forward value is exactly `nn.max_pool`'s. The gradient of each window goes to its first maximal element in
  row-major order, as PyTorch's (and XLA's select-and-scatter with `ge`) does, but it is computed from an int8
  index kept from the forward pass (9 compares and selects, then 9 strided pads summed) instead of the
  select-and-scatter that XLA:CPU expands into a reduce-window over four int32 iota arrays and a scatter
  (~10% of the paper-size AVGN train step on CPU, docs in avl_jax/benchmarks/train_benchmark.py).

  Returns:
    [B, (H + pads - window) // stride + 1, (W + pads - window) // stride + 1, D].
  """
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if x.ndim != 4 or len(window) != 2 or len(strides) != 2 or len(padding) != 2:
    raise ValueError(f'max_pool expects x [B, H, W, D] and 2-D window/strides/padding; got {x.shape}, {window}, '
                     f'{strides}, {padding}.')
  if window[0] * window[1] > 127:
    raise ValueError(f'max_pool keeps an int8 window index; window {window} is too large.')
  if not use_fast_kernels():
    return nn.max_pool(x, window, strides=strides, padding=padding)
  shape = x.shape
  padded_hw = (shape[1] + sum(padding[0]), shape[2] + sum(padding[1]))
  out_hw = tuple((padded_hw[a] - window[a]) // strides[a] + 1 for a in range(2))

  def pad(v):
    return jax.lax.pad(v, jnp.array(-jnp.inf, v.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))

  @jax.custom_vjp
  def pool(v):
    return _max_pool_forward(pad(v), window, strides, out_hw)[0]

  def pool_fwd(v):
    return _max_pool_forward(pad(v), window, strides, out_hw)

  def pool_bwd(index, g):
    grad = None
    for i in range(window[0]):
      for j in range(window[1]):
        part = jnp.where(index == i * window[1] + j, g, jnp.zeros((), g.dtype))
        # Scatter the window's element (i, j) back with a strided pad, cropping the input's padding on the way.
        config = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
        for axis, offset in ((1, i), (2, j)):
          a = axis - 1
          low = offset - padding[a][0]
          extent = offset + strides[a] * (out_hw[a] - 1) + 1
          config[axis] = (low, padded_hw[a] - extent - padding[a][1], strides[a] - 1)
        part = jax.lax.pad(part, jnp.zeros((), g.dtype), config)
        grad = part if grad is None else grad + part
    return (grad,)

  pool.defvjp(pool_fwd, pool_bwd)
  return pool(x)


def select_top_classes(scores: jax.Array, num_sources: int,
                       threshold: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The K highest-scoring classes per sample, optionally only those at or above a threshold.

  Args:
    scores: [B, C] class scores (stage-1 probabilities, or the single-stage channel scores).
    num_sources: K, the number of slots (static).
    threshold: if given, slots whose score is below it are marked invalid; the best class always stays valid,
      so every sample gets at least one map.

  Returns:
    (class_rows [B, K] int32, slot scores [B, K], valid [B, K] bool), best first.
  """
  if not 1 <= num_sources <= scores.shape[-1]:
    raise ValueError(f'Cannot pick {num_sources} classes from a bank of {scores.shape[-1]}.')
  top_scores, rows = jax.lax.top_k(scores, num_sources)
  valid = jnp.ones(rows.shape, bool)
  if threshold is not None:
    valid = (top_scores >= threshold) | (jnp.arange(num_sources) == 0)
  return rows.astype(jnp.int32), top_scores, valid
