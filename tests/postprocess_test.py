"""Tests of avl_jax.resampling (PyTorch bicubic) and avl_jax.metrics.postprocess (the official map post-processing).

Golden files (tests/testdata/avgn, README in tests/testdata): `bicubic.npz` (torch F.interpolate outputs) and
`outputs.npz` (AVGN `validate` post-processing of the official model's `Savl`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avl_jax import resampling
from avl_jax.metrics import postprocess


@pytest.fixture(scope="module")
def bicubic_golden(golden_dir):
  return dict(np.load(golden_dir / "avgn" / "bicubic.npz"))


@pytest.fixture(scope="module")
def outputs(golden_dir):
  return dict(np.load(golden_dir / "avgn" / "outputs.npz"))


def test_bicubic_1d_hand_values():
  """docs/metrics.md T9: 1-D 7 -> 224 of [0, ..., 6] and of a delta."""
  matrix = resampling.bicubic_matrix(7, 224)
  out = matrix @ np.arange(7.0)
  np.testing.assert_allclose(out[[0, 1, 16, 111, 112, 223]],
                             [-0.0965852737, -0.1016378403, 0.0117197037, 2.9769248962, 3.0230751038,
                              6.0965852737], atol=1e-10)
  np.testing.assert_allclose(matrix[0, :3], [1.0965852737, -0.0965852737, 0.0], atol=1e-10)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-14)
  delta = matrix[:, 3]
  np.testing.assert_allclose([delta[111], delta[112]], 0.999455452, atol=1e-9)
  np.testing.assert_allclose(delta.sum(), 32.0, atol=1e-12)


def test_bicubic_2d_delta():
  """T9: 7x7 delta at (3, 3) -> max 0.9989112005 at (111, 111), min -0.1110301659."""
  delta = np.zeros((1, 7, 7))
  delta[0, 3, 3] = 1
  out = resampling.upsample_bicubic(delta, (224, 224))[0]
  assert np.unravel_index(out.argmax(), out.shape) == (111, 111)
  np.testing.assert_allclose([out.max(), out.min()], [0.9989112005, -0.1110301659], atol=1e-10)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bicubic_matches_torch(bicubic_golden, align_corners):
  """float64 to ~1e-12 of torch's float64 kernel; float32 within a few float32 ulps of torch's float32."""
  name = f"out_align_corners_{str(align_corners).lower()}"
  x = bicubic_golden["input"][:, 0]
  out64 = resampling.upsample_bicubic(x.astype(np.float64), (224, 224), align_corners)
  np.testing.assert_allclose(out64, bicubic_golden[name + "_f64"][:, 0], rtol=0, atol=1e-12)
  out32 = resampling.upsample_bicubic(x, (224, 224), align_corners)
  assert out32.dtype == np.float32
  # torch accumulates the 16 taps in float32 (|values| < 45 here: 1 ulp <= 3.8e-6).
  np.testing.assert_allclose(out32, bicubic_golden[name][:, 0], rtol=0, atol=3e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_jax_bicubic_matches_numpy(bicubic_golden, align_corners):
  x = bicubic_golden["input"][:, 0]
  expected = resampling.upsample_bicubic(x.astype(np.float64), (224, 224), align_corners)
  upsample = jax.jit(lambda m: resampling.upsample_bicubic_jax(m, (224, 224), align_corners))
  out = np.asarray(upsample(jnp.asarray(x)))
  assert out.shape == (2, 224, 224) and out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=0, atol=3e-5)
  # Non-square and batched leading axes.
  y = np.random.default_rng(0).standard_normal((3, 2, 7, 14))
  out = resampling.upsample_bicubic_jax(jnp.asarray(y, jnp.float32), (224, 448), align_corners)
  np.testing.assert_allclose(np.asarray(out), resampling.upsample_bicubic(y, (224, 448), align_corners),
                             rtol=0, atol=1e-5)


def test_avgn_official_from_upsampled_is_bit_exact(outputs):
  """Fed the captured `avl_map_up`, scores/pred/thr/infer match bit for bit; conf too (float32 mean)."""
  post = postprocess.avgn_official(outputs["avl_map_up"], tau=0.03)
  np.testing.assert_array_equal(post["upsampled"], outputs["avl_map_up"])
  np.testing.assert_array_equal(post["scores"], outputs["scores"])
  np.testing.assert_array_equal(post["pred"], outputs["pred"])
  np.testing.assert_array_equal(post["thr"], outputs["thr"])
  np.testing.assert_array_equal(post["infer"], outputs["infer"].astype(bool))
  np.testing.assert_allclose(post["conf"], outputs["conf"], rtol=2e-7, atol=0)
  assert post["scores"].dtype == post["pred"].dtype == post["conf"].dtype == np.float32
  np.testing.assert_array_equal(post["n_ties"], [np.count_nonzero(p == t) for p, t in
                                                 zip(outputs["pred"], outputs["thr"])])


def test_avgn_official_from_savl(outputs):
  """From the 7x7 `Savl`: upsampled within 2 float32 ulps, and the same binarised maps."""
  post = postprocess.avgn_official(outputs["Savl"], tau=0.03)
  np.testing.assert_allclose(post["upsampled"], outputs["avl_map_up"], rtol=0, atol=2e-5)
  np.testing.assert_allclose(post["scores"], outputs["scores"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(post["pred"], outputs["pred"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(post["thr"], outputs["thr"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(post["conf"], outputs["conf"], rtol=1e-6, atol=0)
  np.testing.assert_array_equal(post["infer"], outputs["infer"].astype(bool))


def test_scores_constants_are_float32():
  """(U + 33.333332f) / 66.666664f, the numpy-2 rounding of the official Python constants."""
  upsampled = np.array([[[-40.0, 0.0], [3.5, 100.0]]], np.float32)
  expected = (upsampled + np.float32(33.333332)) / np.float32(66.666664)
  np.testing.assert_array_equal(postprocess.avgn_scores(upsampled, 0.03), expected)


def test_median_threshold_hand_cases():
  """T5: half zeros -> thr 1 with 25,088 pixels; constant 0.7 -> everything; ramp -> 112/223."""
  half = np.zeros((224, 224), np.float32)
  half[:, 112:] = 1
  ramp = np.tile(np.arange(224, dtype=np.float32) / np.float32(223), (224, 1))
  maps = np.stack([half, np.full((224, 224), 0.7, np.float32), ramp])
  thr, n_ties = postprocess.median_threshold(maps)
  np.testing.assert_array_equal(thr, [1, np.float32(0.7), np.float32(112) / np.float32(223)])
  np.testing.assert_array_equal((maps >= thr[:, None, None]).sum(axis=(1, 2)), [25088, 50176, 25088])
  np.testing.assert_array_equal(n_ties, [25088, 50176, 224])


def test_minmax_keeps_constant_maps():
  maps = np.stack([np.full((4, 4), 3.0, np.float32), np.arange(16, dtype=np.float32).reshape(4, 4)])
  out = postprocess.minmax_normalize(maps)
  np.testing.assert_array_equal(out[0], 3.0)
  np.testing.assert_array_equal(out[1], np.arange(16, dtype=np.float32).reshape(4, 4) / np.float32(15))
  post = postprocess.avgn_official(maps[:1].repeat(56, 1).repeat(56, 2))
  assert post["infer"].all()


def test_top_quarter_mean_paths_agree():
  """The partition path and the pred-cut path (used by score_maps) give the same conf, ties included."""
  rng = np.random.default_rng(1)
  scores = rng.standard_normal((6, 32, 32)).astype(np.float32)
  scores[1] = np.round(scores[1] * 4) / 4  # Many ties at the cut.
  scores[2] = 1.5  # Constant map.
  pred = postprocess.minmax_normalize(scores)
  flat = pred.reshape(6, -1)
  cut = np.sort(flat, axis=1)[:, flat.shape[1] - flat.shape[1] // 4]
  reference = np.array([np.sort(s.reshape(-1))[-(s.size // 4):].mean() for s in scores], np.float32)
  np.testing.assert_array_equal(postprocess.top_quarter_mean(scores), reference)
  np.testing.assert_array_equal(postprocess.top_quarter_mean(scores, pred, cut), reference)


def test_tvsl_official_canvas():
  """T10: raw -1 on a box of a 224x448 canvas -> inverted score 1 on the box, infer = box."""
  raw = np.zeros((1, 224, 448), np.float32)
  raw[0, :112, :112] = -1
  post = postprocess.tvsl_official(raw, out_hw=(224, 448))
  box = np.zeros((224, 448), bool)
  box[:112, :112] = True
  np.testing.assert_array_equal(post["score"][0], box.astype(np.float32))
  np.testing.assert_array_equal(post["infer"][0], box)
  # From 7x14 logits the canvas is 224x448 and the map is finite.
  small = postprocess.tvsl_official(np.random.default_rng(0).standard_normal((2, 7, 14)))
  assert small["score"].shape == (2, 224, 448) and np.isfinite(small["score"]).all()
  assert np.isnan(postprocess.tvsl_official(np.ones((1, 7, 14)))["pred"]).all()  # No constant guard.
