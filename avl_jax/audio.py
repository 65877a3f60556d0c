"""Audio front end that runs inside the jitted step (hosts only slice waveforms).

AVGN's "log_mel_spectrogram" is a linear-frequency power spectrogram (docs/avgn.md §10):
`scipy.signal.spectrogram(w, fs=sr, nperseg=512, noverlap=274)` = periodic Tukey(0.25) window, hop 238,
per-segment mean removed, nfft 512, one-sided, density scaling |X|^2 / (sr * sum(w^2)) with bins 1..255 doubled;
then log(P + 1e-7) / 12.

Axis letters: B batch, N samples, T frames, F = nfft // 2 + 1 frequency bins.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

NPERSEG = 512
NOVERLAP = 274
LOG_EPS = 1e-7
SPEC_STD = 12.0


def num_frames(num_samples: int, nperseg: int = NPERSEG, noverlap: int = NOVERLAP) -> int:
  """Number of spectrogram frames scipy produces for `num_samples` samples."""
  if num_samples < nperseg:
    raise ValueError(f"Waveform of {num_samples} samples is shorter than one window ({nperseg}).")
  return (num_samples - nperseg) // (nperseg - noverlap) + 1


def periodic_tukey(n: int, alpha: float = 0.25) -> np.ndarray:
  """scipy.signal.get_window(('tukey', alpha), n) (periodic, i.e. sym=False), float64 [n]."""
  m = n + 1  # Periodic window: symmetric window of n + 1 points without its last sample.
  x = np.arange(m, dtype=np.float64)
  width = int(np.floor(alpha * (m - 1) / 2.0))
  w = np.ones(m, dtype=np.float64)
  left = x[:width + 1]
  w[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * left / alpha / (m - 1))))
  right = x[m - width - 1:]
  w[m - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * right / alpha / (m - 1))))
  return w[:n]


@functools.lru_cache(maxsize=8)
def _dft_matrices(nperseg: int, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
  """Windowed real-DFT matrices [nperseg, F] with the density scaling folded in (float32)."""
  window = periodic_tukey(nperseg)
  scale = np.sqrt(1.0 / (sample_rate * np.sum(window ** 2)))
  n = np.arange(nperseg)[:, None]
  k = np.arange(nperseg // 2 + 1)[None, :]
  angle = 2.0 * np.pi * n * k / nperseg
  cos = (window[:, None] * np.cos(angle) * scale).astype(np.float32)
  sin = (window[:, None] * -np.sin(angle) * scale).astype(np.float32)
  return cos, sin


def power_spectrogram(waveform: jnp.ndarray, sample_rate: float, nperseg: int = NPERSEG,
                      noverlap: int = NOVERLAP) -> jnp.ndarray:
  """scipy.signal.spectrogram(..., scaling='density') of real waveforms.

  Args:
    waveform: [B, N] float, in [-1, 1].
    sample_rate: Hz (a Python number; it sets the density scaling).
  Returns:
    [B, F, T] float32 power spectral density (F = nperseg // 2 + 1).
  """
  hop = nperseg - noverlap
  frames = num_frames(waveform.shape[-1], nperseg, noverlap)
  index = np.arange(frames)[:, None] * hop + np.arange(nperseg)[None, :]
  segments = waveform.astype(jnp.float32)[:, index]  # [B, T, nperseg]
  segments = segments - jnp.mean(segments, axis=-1, keepdims=True)  # detrend='constant'
  cos, sin = _dft_matrices(nperseg, float(sample_rate))
  # A DFT as a matmul (F x 512) is exact enough in float32 at HIGHEST precision and maps to the MXU on TPU.
  real = jnp.einsum("btn,nf->bft", segments, cos, precision=jax.lax.Precision.HIGHEST)
  imag = jnp.einsum("btn,nf->bft", segments, sin, precision=jax.lax.Precision.HIGHEST)
  power = real ** 2 + imag ** 2
  # One-sided spectrum: double every bin except DC and (for even nperseg) Nyquist.
  doubling = np.full((nperseg // 2 + 1, 1), 2.0, np.float32)
  doubling[0] = 1.0
  if nperseg % 2 == 0:
    doubling[-1] = 1.0
  return power * doubling


def log_spectrogram(waveform: jnp.ndarray, sample_rate: float) -> jnp.ndarray:
  """AVGN's model input: log(P + 1e-7) / 12, as an NHWC image (H = frequency, W = time).

  Args:
    waveform: [B, N] float in [-1, 1].
    sample_rate: Hz.
  Returns:
    [B, F, T, 1] float32.
  """
  power = power_spectrogram(waveform, sample_rate)
  return (jnp.log(power + LOG_EPS) / SPEC_STD)[..., None]


def int16_to_float(waveform: np.ndarray) -> np.ndarray:
  """PyAV-style s16 -> float: divide by 32767 and clip to [-1, 1] (docs/avgn.md §10)."""
  return np.clip(waveform.astype(np.float32) / 32767.0, -1.0, 1.0)
