"""The in-step audio front end against the official scipy spectrogram (golden/avgn/spectrogram.npz)."""
import jax
import numpy as np
import pytest

from avl_jax import audio


@pytest.mark.parametrize("rate", [16000, 11025])
def test_log_spectrogram_matches_scipy_golden(golden_dir, rate):
  ref = np.load(golden_dir / "avgn" / "spectrogram.npz")
  wave = ref[f"waveform_{rate}"]
  assert int(ref[f"samplerate_{rate}"]) == rate
  got = np.asarray(jax.jit(audio.log_spectrogram, static_argnums=1)(wave[None].astype(np.float32), rate))
  expected = ref[f"model_input_{rate}"]  # (1, 257, T): log(P + 1e-7) / 12.
  assert got.shape == (1, 257, audio.num_frames(len(wave)), 1)
  assert got[0, :, :, 0].shape == expected[0].shape
  rel = np.max(np.abs(got[0, :, :, 0] - expected[0])) / np.max(np.abs(expected[0]))
  assert rel < 1e-5, rel
  log_rel = np.abs(got[0, :, :, 0] * 12.0 - ref[f"log_spec_{rate}"]) / np.abs(ref[f"log_spec_{rate}"])
  assert np.max(log_rel) < 1e-5, np.max(log_rel)


def test_periodic_tukey_matches_closed_form():
  w = audio.periodic_tukey(512)
  assert w.shape == (512,)
  assert w[0] == 0.0 and np.isclose(w.max(), 1.0)
  # A periodic window of n is the symmetric window of n + 1 without its last point, so w[k] == w[n - k].
  np.testing.assert_allclose(w[1:], w[1:][::-1], atol=1e-12)


def test_frames_and_short_input():
  assert audio.num_frames(48000) == 200
  assert audio.num_frames(33075) == 137
  with pytest.raises(ValueError, match="shorter than one window"):
    audio.num_frames(100)


def test_int16_to_float_clips():
  x = np.array([-32768, 0, 32767], np.int16)
  np.testing.assert_array_equal(audio.int16_to_float(x), np.array([-1.0, 0.0, 1.0], np.float32))
