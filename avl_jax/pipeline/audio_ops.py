"""Per-record waveform op of the pipelines: the centre window of a clip's int16 samples.

A record's `waveform` is [n] int16 at its `sample_rate`; windows are [N] int16 (N = num_samples =
round(config.dataset.audio_seconds * sample_rate)), which the transforms turn into float32 by / 32767.
The spectrogram is computed on the devices (avl_jax/audio.py).
"""
from typing import Any

import numpy as np

from avl_jax.pipeline import data_source


def audio_window(record: dict[str, Any], sample_rate: int, num_samples: int) -> np.ndarray:
  """Centre window of `num_samples` int16 samples, tiled when the clip is shorter (docs/avgn.md §10)."""
  rate = int(record["sample_rate"])
  if rate != sample_rate:
    raise data_source.DataError(f"Example {data_source.example_id(record)}: sample rate {rate} Hz, the config "
                                f"expects {sample_rate} Hz (prepare the dataset at the configured rate).")
  wave = np.asarray(record["waveform"])
  if wave.ndim != 1 or wave.size == 0:
    raise data_source.DataError(f"Example {data_source.example_id(record)}: empty or malformed waveform of "
                                f"shape {wave.shape}.")
  if wave.size < num_samples:  # Official: the crop starts at 0, the clip is tiled and truncated.
    return np.tile(wave, num_samples // wave.size + 1)[:num_samples]
  start = (wave.size - num_samples) // 2
  return wave[start:start + num_samples]
