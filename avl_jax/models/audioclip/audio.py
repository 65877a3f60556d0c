"""AudioCLIP's audio tower ESResNeXt-fbsp: FBSP front end + ResNeXt-50 32x4d with attention gates, NHWC.

Axis letters: B batch, L samples, T frames, N samples per frame (n_fft), F frequency bins, H/W feature-map
height/width (H = frequency within a band, W = time), D channels, K tokens.

Spec tvsl.md §2.1. Submodule and parameter names are the official state-dict names under `audio.`
(`fbsp.{m,fb,fc}`, `conv1`, `layer2_0/conv2`, `att3/conv_point`, `fc`, ...), so conversion is a rename.
The front end runs in float32 whatever `dtype` is: its log power spans ~100 dB and its learned basis is
evaluated at |fc * t| up to ~3200 rad, where float32 arguments already carry 1e-4 rad of rounding.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from avl_jax.models.audioclip import common

# AudioCLIP's constructor values (docs/tvsl.md §2.1).
N_FFT = 2048
HOP_LENGTH = 561
WIN_LENGTH = 1654
NUM_BANDS = 3  # Input channels of conv1: the spectrogram is cut into 3 frequency bands.
EMBED_DIM = 1024
FBSP_EPS = 1e-8
POWER_FLOOR = 1e-18  # Powers <= 0 are replaced by this before the log.
INT16_MIN, INT16_MAX = -32768.0, 32767.0
COMPENSATED_CHUNK = 64  # Samples per chunk of compensated_matmul.

# Depthwise kernel and padding of the gates att1..att5 (the pointwise conv maps to the gated stage width).
GATE_KERNELS = {1: ((3, 1), (1, 0)), 2: ((1, 5), (0, 2)), 3: ((3, 1), (1, 0)), 4: ((1, 5), (0, 2)),
                5: ((3, 5), (1, 2))}


def periodic_blackman_harris(length: int = WIN_LENGTH) -> np.ndarray:
  """scipy.signal.get_window('blackmanharris', length, fftbins=True) as float32 [length] (`audio.window`)."""
  return scipy.signal.get_window('blackmanharris', length, fftbins=True).astype(np.float32)


def num_frames(num_samples: int, win_length: int = WIN_LENGTH, hop_length: int = HOP_LENGTH) -> int:
  """Frames of the official framing: 1 + ceil((L - win) / hop), at least 1 (392 for 5 s at 44.1 kHz)."""
  if num_samples <= win_length:
    return 1
  return 1 + math.ceil((num_samples - win_length) / hop_length)


def rescale_int16(waveform: jax.Array) -> jax.Array:
  """Maps int16-range samples to [-1, 1] as the official front end does: (x + 32768) * 2 / 65535 - 1.

  Every step rounds in float32 in this order, so a [-1, 1] input (T-VSL's loader) keeps only the bits of
  (2x + 1) / 65535 that survive next to 1.0 (docs/tvsl.md §10 `audio_scale`).
  """
  shifted = (waveform - INT16_MIN) * 2.0
  return common.exact_divide(shifted, INT16_MAX - INT16_MIN) - 1.0


def frame_signal(waveform: jax.Array, window: np.ndarray, hop_length: int = HOP_LENGTH) -> jax.Array:
  """Official framing: zero-pad to whole frames (half left, rest right), cut, multiply by the window.

  Args:
    waveform: [B, L] float32.
    window: [N_win] float32.
    hop_length: samples between frame starts.

  Returns:
    frames [B, T, N_win].
  """
  win_length = window.shape[0]
  length = waveform.shape[-1]
  frames = num_frames(length, win_length, hop_length)
  pad = max((frames - 1) * hop_length + win_length - length, 0)
  waveform = jnp.pad(waveform, ((0, 0), (pad // 2, pad - pad // 2)))
  index = hop_length * np.arange(frames)[:, None] + np.arange(win_length)[None, :]
  return waveform[:, index] * jnp.asarray(window)


def fbsp_time_grid(num_samples: int = N_FFT) -> np.ndarray:
  """t_j = pi * linspace(-1, 1, N)_j + 1e-8 in float32, rounded as PyTorch does; [N]."""
  linspace = common.pytorch_linspace_f32(-1.0, 1.0, num_samples)
  return np.float32(np.pi) * linspace + np.float32(FBSP_EPS)


def fbsp_basis(m: jax.Array, fb: jax.Array, fc: jax.Array,
               num_samples: int = N_FFT) -> tuple[jax.Array, jax.Array]:
  """The LinearFBSP weights W = sqrt(fb) * w^m * exp(-i fc t) / sqrt(N), w = sinc(fb t / (m + 1e-8)).

  Computed in float32 with the official rounding points (the arguments fc * t of cos/sin are rounded as in
  PyTorch, which is what matters at |fc t| ~ 3000). The complex power of the real window is
  |w|^m e^{i m phi} with phi = atan2(+0, w) in {0, pi}. Where w is exactly 0 the official formula adds
  0 * log(0) to the phase and yields NaN; here that basis entry is 0 (the m > 0 limit).

  Args:
    m, fb, fc: [F] exponent, bandwidth and centre frequency of each output bin.
    num_samples: N, the frame length the basis multiplies (n_fft).

  Returns:
    (real, imag) [F, N] float32.
  """
  m, fb, fc = (v.astype(jnp.float32)[:, None] for v in (m, fb, fc))
  t = jnp.asarray(fbsp_time_grid(num_samples))[None, :]
  angle = fc * t
  kernel_real, kernel_imag = jnp.cos(angle), -jnp.sin(angle)
  window_arg = common.exact_divide(fb * t, m + FBSP_EPS)
  safe_arg = jnp.where(window_arg == 0, 1.0, window_arg)
  window = jnp.where(window_arg == 0, 1.0, jnp.sin(safe_arg) / safe_arg)
  is_zero = window == 0
  squared = jnp.where(is_zero, 1.0, window * window)
  magnitude = jnp.where(is_zero, 0.0, squared ** (0.5 * m))
  phase = jnp.where(window < 0, m * np.float32(np.pi), 0.0)
  power_real, power_imag = magnitude * jnp.cos(phase), magnitude * jnp.sin(phase)
  scale = jnp.sqrt(fb)
  real = scale * (power_real * kernel_real - power_imag * kernel_imag)
  imag = scale * (power_real * kernel_imag + power_imag * kernel_real)
  norm = float(num_samples) ** 0.5
  return common.exact_divide(real, norm), common.exact_divide(imag, norm)


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth's TwoSum)."""
  total = a + b
  b_part = total - a
  return total, (a - (total - b_part)) + (b - b_part)


def compensated_matmul(x: jax.Array, weights: jax.Array, chunk: int = COMPENSATED_CHUNK) -> jax.Array:
  """x [B, T, K] @ weights [F, K]^T in float32 with a compensated sum over K.

  The sum runs in chunks of `chunk` terms (one float32 matmul each); the chunk results are added with
  TwoSum and their rounding errors carried along, so the error is that of a `chunk`-term float32 sum
  instead of a K-term one (4-10x smaller here). Bins ~100 dB below the peak are sums of cancelling terms:
  a plain float32 matmul on XLA:CPU rounds them several times coarser than the official PyTorch (MKL) run,
  and the difference grows through the ResNeXt (T-VSL's audio tokens of an unscaled waveform: 2e-4
  relative error instead of 8e-5).

  Returns:
    [B, T, F] float32.
  """
  batch, time, depth = x.shape
  chunks = -(-depth // chunk)
  pad = chunks * chunk - depth
  x = jnp.pad(x, ((0, 0), (0, 0), (0, pad))).reshape(batch, time, chunks, chunk).transpose(2, 0, 1, 3)
  weights = jnp.pad(weights, ((0, 0), (0, pad))).reshape(weights.shape[0], chunks, chunk).transpose(1, 0, 2)

  def add_chunk(carry, operands):
    total, error = carry
    partial = jnp.einsum('btk,fk->btf', *operands, precision=jax.lax.Precision.HIGHEST)
    total, rounding = _two_sum(total, partial)
    return (total, error + rounding), None

  zeros = jnp.zeros((batch, time, weights.shape[1]), jnp.float32)
  (total, error), _ = jax.lax.scan(add_chunk, (zeros, zeros), (x, weights))
  return total + error


class LinearFBSP(nn.Module):
  """The learned Fourier-basis layer (`audio.fbsp`): frames -> complex spectrum through fbsp_basis.

  Attributes:
    num_bins: F = n_fft // 2 + 1 (one-sided).
    compensated: use compensated_matmul (closest to the official numbers; ~3x the time of the front end's
      matmul on CPU, still small next to the ResNeXt); otherwise one float32 matmul at full precision.
  """
  num_bins: int = N_FFT // 2 + 1
  compensated: bool = True

  def setup(self):
    # Official init: m = 0 (w^0 = 1), fb = 1, fc = k, i.e. a plain DFT basis.
    self.m = self.param('m', nn.initializers.zeros, (self.num_bins,), jnp.float32)
    self.fb = self.param('fb', nn.initializers.ones, (self.num_bins,), jnp.float32)
    self.fc = self.param('fc', lambda key, shape: jnp.arange(shape[0], dtype=jnp.float32), (self.num_bins,))

  def basis(self, num_samples: int = N_FFT) -> tuple[jax.Array, jax.Array]:
    """(real, imag) [F, N] float32."""
    return fbsp_basis(self.m, self.fb, self.fc, num_samples)

  def __call__(self, frames: jax.Array, pad_left: int = 0, num_samples: int | None = None):
    """frames [B, T, N_win] (conceptually zero-padded to N by pad_left / the rest) -> (real, imag) [B, T, F].

    The zero padding is not materialised: the frames meet only columns [pad_left, pad_left + N_win) of
    the basis.
    """
    num_samples = num_samples or frames.shape[-1]
    real, imag = self.basis(num_samples)
    columns = slice(pad_left, pad_left + frames.shape[-1])
    weights = jnp.concatenate([real[:, columns], imag[:, columns]], axis=0)
    if self.compensated:
      spectrum = compensated_matmul(frames, weights)
    else:
      spectrum = jnp.einsum('btn,fn->btf', frames, weights, precision=jax.lax.Precision.HIGHEST)
    return spectrum[..., :self.num_bins], spectrum[..., self.num_bins:]

  def norm_loss(self, num_samples: int = N_FFT) -> jax.Array:
    """The official `loss_ttf`: mean over bins of (||W_k||_2 - 1)^2 (normalized basis); scalar."""
    real, imag = self.basis(num_samples)
    norms = jnp.sqrt(jnp.sum(real * real + imag * imag, axis=-1))
    return jnp.mean(jnp.square(norms - 1.0))


class Bottleneck(nn.Module):
  """ResNeXt bottleneck (torchvision layout, stride on the grouped 3x3), `audio.layer{i}.{j}`.

  1x1 -> BN -> ReLU -> 3x3 grouped (stride s, pad 1) -> BN -> ReLU -> 1x1 -> BN, plus the shortcut
  (1x1 conv stride s + BN as `downsample_0/1` when `downsample`), ReLU.

  Attributes:
    planes: p; the block outputs 4p channels.
    width: channels of the grouped 3x3 (2p for 32x4d).
    strides: stride of the 3x3 and of the shortcut.
    groups: groups of the 3x3.
    downsample: whether the shortcut is a projection.
    dtype: computation dtype.
    bn_groups: train-mode BatchNorm statistics per group of the batch (common.batch_norm).
  """
  planes: int
  width: int
  strides: int = 1
  groups: int = 32
  downsample: bool = False
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, H, W, D_in] -> [B, ceil(H / s), ceil(W / s), 4p]."""
    y = common.conv(self.width, (1, 1), name='conv1', dtype=self.dtype)(x)
    y = nn.relu(common.batch_norm('bn1', dtype=self.dtype, groups=self.bn_groups)(y, train=train))
    y = common.conv(self.width, (3, 3), strides=self.strides, padding=(1, 1), groups=self.groups,
                    name='conv2', dtype=self.dtype)(y)
    y = nn.relu(common.batch_norm('bn2', dtype=self.dtype, groups=self.bn_groups)(y, train=train))
    y = common.conv(4 * self.planes, (1, 1), name='conv3', dtype=self.dtype)(y)
    y = common.batch_norm('bn3', dtype=self.dtype, groups=self.bn_groups)(y, train=train)
    residual = x
    if self.downsample:
      residual = common.conv(4 * self.planes, (1, 1), strides=self.strides, name='downsample_0',
                             dtype=self.dtype)(x)
      residual = common.batch_norm('downsample_1', dtype=self.dtype, groups=self.bn_groups)(
          residual, train=train)
    return nn.relu(y + residual)


class AttentionGate(nn.Module):
  """`audio.att{i}`: sigmoid(BN(pointwise(depthwise(AdaptiveMaxPool(x))))) with biased convolutions.

  Attributes:
    features: output channels (those of the gated map).
    kernel_size: depthwise kernel (kh, kw).
    padding: depthwise padding (ph, pw).
    dtype: computation dtype.
    bn_groups: train-mode BatchNorm statistics per group of the batch (common.batch_norm).
  """
  features: int
  kernel_size: tuple[int, int]
  padding: tuple[int, int]
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, out_hw: tuple[int, int], *, train: bool) -> jax.Array:
    """x [B, H, W, D_in] (the gated stage's input) -> gate [B, h, w, features] in (0, 1)."""
    channels = x.shape[-1]
    x = common.adaptive_max_pool(x, out_hw)
    x = common.conv(channels, self.kernel_size, padding=self.padding, groups=channels, use_bias=True,
                    name='conv_depth', dtype=self.dtype)(x)
    x = common.conv(self.features, (1, 1), use_bias=True, name='conv_point', dtype=self.dtype)(x)
    return nn.sigmoid(common.batch_norm('bn', dtype=self.dtype, groups=self.bn_groups)(x, train=train))


class ESResNeXtFBSP(nn.Module):
  """AudioCLIP's audio tower (`audio.*`): waveform -> 1024-d embedding, or T-VSL's 143 tokens.

  Sows to 'intermediates': `spec_db` [B, 341, T, 3] (front end), `layer4` (before its gate) and
  `layer4_att` [B, h, w, 2048] (gated, the map both heads read), `pooled` [B, 2048].

  Attributes:
    layers: bottlenecks per stage (ResNeXt-50: 3, 4, 6, 3).
    groups: cardinality of the grouped 3x3 convolutions.
    width_per_group: channels per group at stage 1 (32x4d: 4).
    embed_dim: output width of `fc`.
    n_fft: frame length after zero padding (N).
    hop_length: samples between frames.
    win_length: Blackman-Harris window length.
    fbsp_compensated: LinearFBSP.compensated.
    dtype: computation dtype of the ResNeXt and `fc` (the front end always runs in float32; parameters
      and BatchNorm statistics stay float32).
    bn_groups: train-mode BatchNorm statistics per group of the batch (1 = the whole batch; k = per-device
      statistics on k devices, T-VSL's DDP without SyncBN).
  """
  layers: Sequence[int] = (3, 4, 6, 3)
  groups: int = 32
  width_per_group: int = 4
  embed_dim: int = EMBED_DIM
  n_fft: int = N_FFT
  hop_length: int = HOP_LENGTH
  win_length: int = WIN_LENGTH
  fbsp_compensated: bool = True
  dtype: Any = jnp.float32
  bn_groups: int = 1

  def setup(self):
    # Attribute names are the official module names; list entries become `layer{i}_{j}`.
    self.fbsp = LinearFBSP(self.n_fft // 2 + 1, self.fbsp_compensated)
    self.conv1 = common.conv(64, (7, 7), strides=2, padding=(3, 3), dtype=self.dtype)
    self.bn1 = common.batch_norm(dtype=self.dtype, groups=self.bn_groups)
    for stage, num_blocks in enumerate(self.layers):
      planes = 64 * 2**stage
      width = planes * self.width_per_group * self.groups // 64
      blocks = [Bottleneck(planes, width, 2 if stage > 0 and index == 0 else 1, self.groups,
                           downsample=index == 0, dtype=self.dtype, bn_groups=self.bn_groups)
                for index in range(num_blocks)]
      setattr(self, f'layer{stage + 1}', blocks)
      kernel, padding = GATE_KERNELS[stage + 1]
      setattr(self, f'att{stage + 1}', AttentionGate(4 * planes, kernel, padding, dtype=self.dtype,
                                                     bn_groups=self.bn_groups))
    kernel, padding = GATE_KERNELS[5]
    self.att5 = AttentionGate(4 * 64 * 2**(len(self.layers) - 1), kernel, padding, dtype=self.dtype,
                              bn_groups=self.bn_groups)
    self.fc = nn.Dense(self.embed_dim, dtype=self.dtype)

  def spectrogram(self, waveform: jax.Array) -> jax.Array:
    """waveform [B, L] or [B, 1, L] in int16 range (AudioCLIP's convention) -> log power [B, H, T, 3] in dB,
    float32.

    H = (F - 2) // 3 bins per band (341): bins 0..1022 in 3 consecutive bands as the 3 input channels.
    """
    if waveform.ndim == 3 and waveform.shape[1] == 1:  # T-VSL's loader adds a channel axis.
      waveform = waveform[:, 0]
    if waveform.ndim != 2:
      raise ValueError(f'Expected mono waveforms [B, L] or [B, 1, L]; got shape {waveform.shape}.')
    window = periodic_blackman_harris(self.win_length)
    frames = frame_signal(rescale_int16(waveform.astype(jnp.float32)), window, self.hop_length)
    pad = self.n_fft - self.win_length
    real, imag = self.fbsp(frames, pad_left=pad // 2, num_samples=self.n_fft)
    bins_per_band = (self.n_fft // 2 + 1) // NUM_BANDS
    power = jnp.square(real) + jnp.square(imag)
    power = power[..., :NUM_BANDS * bins_per_band]
    power = jnp.where(power <= 0.0, POWER_FLOOR, power)
    decibels = 10.0 * jnp.log10(power)
    batch, time = decibels.shape[:2]
    return decibels.reshape(batch, time, NUM_BANDS, bins_per_band).transpose(0, 3, 1, 2)

  def __call__(self, waveform: jax.Array, *, train: bool = False, return_tokens: bool = False):
    """Encodes waveforms.

    Args:
      waveform: [B, L] (or [B, 1, L]) samples in int16 range (AudioCLIP feeds x * 32768; T-VSL feeds
        [-1, 1] as is).
      train: BatchNorm with batch statistics (and running-stat updates in 'batch_stats').
      return_tokens: also return T-VSL's tokens. The global head still runs afterwards, as in T-VSL,
        so train-mode BatchNorm updates `att5.bn` twice (tokens first, then the 1x1 map).

    Returns:
      embedding [B, embed_dim]; with return_tokens, (tokens [B, h * w, embed_dim] row-major over
      (frequency, time), embedding).
    """
    spec = self.spectrogram(waveform)
    self.sow('intermediates', 'spec_db', spec)
    x = nn.relu(self.bn1(self.conv1(spec.astype(self.dtype)), train=train))
    x = common.max_pool_3x3_s2(x)
    for stage in range(len(self.layers)):
      stage_input = x
      for block in getattr(self, f'layer{stage + 1}'):
        x = block(x, train=train)
      gate = getattr(self, f'att{stage + 1}')(stage_input, x.shape[1:3], train=train)
      if stage == len(self.layers) - 1:
        self.sow('intermediates', 'layer4', x)
      x = x * gate
    self.sow('intermediates', 'layer4_att', x)

    tokens = None
    if return_tokens:
      gated = x * self.att5(x, x.shape[1:3], train=train)
      tokens = self.fc(gated.reshape(gated.shape[0], -1, gated.shape[-1]))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True) * self.att5(x, (1, 1), train=train)
    pooled = pooled.reshape(pooled.shape[0], -1)
    self.sow('intermediates', 'pooled', pooled)
    embedding = self.fc(pooled)
    return (tokens, embedding) if return_tokens else embedding

  def fbsp_norm_loss(self) -> jax.Array:
    """The official `loss_ttf` of this tower's basis (scalar)."""
    return self.fbsp.norm_loss(self.n_fft)
