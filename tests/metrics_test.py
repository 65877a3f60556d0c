"""Tests of avl_jax.metrics: hand cases T1-T12 of docs/metrics.md §7 and the AVGN golden evaluator values.

Golden files (tests/testdata/avgn, README in tests/testdata): `metrics_cases.npz` + `metrics_expected.json` (64 cases
fed to the official `EvaluatorFull`), `outputs.npz` + `inputs.npz` (official `validate` on one batch).
"""
import itertools
import json

import numpy as np
import pytest

from avl_jax import resampling
from avl_jax.evaluation import gt as gt_lib
from avl_jax.metrics import aggregates
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.metrics import postprocess
from avl_jax.metrics import ranking

N_PIX = 224 * 224


def _box(rows, cols, shape=(224, 224)) -> np.ndarray:
  out = np.zeros(shape, np.float64)
  out[rows[0]:rows[1], cols[0]:cols[1]] = 1
  return out


def _values(infer, gt, **kwargs):
  """Per-map values for a given binary prediction (fixed threshold 0.5 on the 0/1 map)."""
  pred = np.asarray(infer, np.float32)[None]
  values = localization.map_values(pred, np.asarray(gt)[None], binarize="fixed", fixed_threshold=0.5,
                                   **kwargs)
  return {k: v[0] for k, v in values.items()}


def _reference_ap(labels, scores) -> float:
  """Brute-force sklearn average_precision_score: loop over the distinct scores, descending (small maps)."""
  labels, scores = np.asarray(labels, bool).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
  if not labels.any():
    return float("nan")
  ap, previous_recall = 0.0, 0.0
  for value in np.unique(scores)[::-1]:
    selected = scores >= value
    true_pos = np.count_nonzero(labels & selected)
    recall = true_pos / labels.sum()
    ap += (recall - previous_recall) * true_pos / selected.sum()
    previous_recall = recall
  return ap


def _reference_ap_argsort(labels, scores) -> float:
  """sklearn's own algorithm (argsort, cumsum, last index of each tie group), for full-size maps."""
  labels, scores = np.asarray(labels, bool).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
  if not labels.any():
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  scores, true_pos = scores[order], np.cumsum(labels[order])
  group_end = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
  recall = true_pos[group_end] / labels.sum()
  precision = true_pos[group_end] / (group_end + 1)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# ---------------------------------------------------------------------------------------------- hand cases

def test_t1_t2_ciou():
  top_half = _box((0, 112), (0, 224))
  values = _values(top_half, _box((0, 112), (0, 112)))
  assert values["ciou"] == 0.5
  assert values["tvsl_iou"] == pytest.approx((12544 + 1e-4) / (25088 + 1e-4))
  box_a = _box((0, 112), (0, 112))
  summed = box_a + _box((0, 112), (56, 168))
  assert _values(box_a, summed)["ciou"] == pytest.approx(18816 / 25088, abs=1e-12)
  assert _values(box_a, (summed > 0).astype(float))["ciou"] == pytest.approx(12544 / 18816, abs=1e-12)
  # Empty GT: 0 if something is predicted.
  assert _values(box_a, np.zeros((224, 224)))["ciou"] == 0.0


def test_t3_official_piap():
  top_half = _box((0, 112), (0, 224))
  assert _values(top_half, _box((0, 112), (0, 112)))["piap_official"] == pytest.approx(0.75, abs=1e-12)
  assert _values(top_half, np.zeros((224, 224)))["piap_official"] == pytest.approx(0.5, abs=1e-12)
  bottom_half = _box((112, 224), (0, 224))
  assert _values(bottom_half, _box((0, 112), (0, 112)))["piap_official"] == pytest.approx(0.5, abs=1e-12)
  summed = _box((0, 112), (0, 112)) + _box((0, 112), (56, 168))
  values = _values(top_half, summed)
  assert values["gt_nonbinary"]
  assert values["piap_official"] == pytest.approx(0.875, abs=1e-12)


def test_t4_pixel_ap():
  labels = _box((0, 224), (0, 112)) > 0
  ramp = np.tile((223 - np.arange(224)) / 223, (224, 1))
  ap = ranking.average_precision(np.stack([ramp, ramp[:, ::-1], np.full((224, 224), 0.3)]),
                                 np.stack([labels] * 3))
  expected_reversed = np.mean([j / (112 + j) for j in range(1, 113)])
  np.testing.assert_allclose(ap, [1.0, expected_reversed, 0.5], atol=1e-12)
  assert expected_reversed == pytest.approx(0.309080, abs=1e-6)


def test_t5_median_threshold_in_map_values():
  half = np.zeros((224, 224), np.float32)
  half[:, 112:] = 1
  ramp = np.tile(np.arange(224, dtype=np.float32) / np.float32(223), (224, 1))
  pred = np.stack([half, np.full((224, 224), 0.7, np.float32), ramp])
  values = localization.map_values(pred, np.ones((3, 224, 224), np.float32))
  np.testing.assert_array_equal(values["thr"], np.array([1, 0.7, 112 / 223], np.float32))
  np.testing.assert_array_equal(values["infer_area"], [25088, 50176, 25088])
  np.testing.assert_array_equal(values["n_ties"], [25088, 50176, 224])


def test_t6_auc():
  assert aggregates.auc_of_list([0, 0.5, 1]) == pytest.approx(0.516667, abs=1e-6)
  assert aggregates.auc_of_list([0.0]) == pytest.approx(0.025, abs=1e-12)
  assert aggregates.auc_of_list([1.0]) == pytest.approx(1.0, abs=1e-12)
  assert aggregates.auc_of_list([0.3], "official") == pytest.approx(0.275, abs=1e-12)
  assert aggregates.auc_of_list([0.3], "standard") == pytest.approx(0.325, abs=1e-12)
  # cal_auc ignores samples without boxes.
  assert aggregates.auc([1, 0], [1.0, 0.0]) == pytest.approx(1.0, abs=1e-12)


def test_t7_confidence_metrics():
  nbox, ciou, conf = [1, 1, 1, 1], [0.9, 0.1, 0.6, 0.4], [0.8, 0.7, 0.6, 0.5]
  precision, recall = aggregates.precision_recall(nbox, ciou, conf, [0.7, 0.6, 0.5], 0.5)
  np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5], atol=1e-12)
  np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1], atol=1e-12)
  assert aggregates.slavc_ap(nbox, ciou, conf, 0.5) == pytest.approx(4 / 9, abs=1e-12)
  assert aggregates.f1_score(nbox, ciou, conf, 0.5, 0.3) == pytest.approx(0.857143, abs=1e-6)
  precision, _ = aggregates.precision_recall(nbox, ciou, conf, -1000, 0.5)
  assert float(precision) == 0.5
  # Not-sounding samples are false positives when confident; empty denominators give 1.
  precision, recall = aggregates.precision_recall([0, 0], [0.0, 0.0], [0.9, 0.1], [0.5, 0.95], 0.5)
  np.testing.assert_array_equal(precision, [0.0, 1.0])
  np.testing.assert_array_equal(recall, [1.0, 1.0])


def test_t8_exact_threshold_comparisons():
  nbox, ciou, conf = [1], [0.3], [0.9]
  assert aggregates.precision_at(nbox, ciou, 0.3) == 0.0  # Strict.
  precision, recall = aggregates.precision_recall(nbox, ciou, conf, 0.5, 0.3)
  assert float(precision) == 1.0 and float(recall) == 1.0
  success = [np.mean(np.array(ciou) >= t) for t in aggregates.official_auc_thresholds()]
  assert success[6] == 0.0 and success[5] == 1.0
  assert aggregates.fraction_at_least(ciou, 0.3) == 1.0


def test_t10_tvsl_canvas_scores():
  canvas = (224, 448)
  score = np.zeros(canvas, np.float32)
  score[:112, :112] = 1
  gt = gt_lib.place_on_canvas(_box((0, 112), (0, 112))[None], np.array([0]))[0]  # Source 0: the left half.
  values = localization.map_values(score[None], gt[None], binarize="fixed", fixed_threshold=0.3)
  assert values["ciou"][0] == 1.0
  assert values["pixel_ap"][0] == 1.0
  assert values["tvsl_iou"][0] == 1.0
  assert values["infer_area"][0] == 112 * 112


def test_t11_pixel_ap_edge_cases():
  """All-zero GT: NaN (our documented choice; sklearn 1.x gives 0.0). Non-binary GT is flagged."""
  pred = np.random.default_rng(0).random((2, 224, 224)).astype(np.float32)
  gt = np.zeros((2, 224, 224))
  gt[1, :10, :10] = 2
  values = localization.map_values(pred, gt)
  assert np.isnan(values["pixel_ap"][0]) and values["empty_gt"][0]
  assert values["gt_nonbinary"][1] and not values["gt_nonbinary"][0]
  per_sample = dict(values, conf=np.array([0.5, 0.5]), nbox=np.array([1, 1]))
  summary = localization.summarize(per_sample, "official")
  assert summary["n_nonbinary_gt"] == 1
  assert summary["ap_pixel_skip"] == 0.0  # T-VSL: the non-binary item is skipped, the empty one is 0.
  assert summary["pixel_ap"] == pytest.approx(values["pixel_ap"][1])


def test_t12_music_boxes():
  box = np.array([[0.5, 0.5, 0.25, 0.25]])
  official = gt_maps.pixel_boxes_to_gt_map(gt_maps.music_pixels(box, "official"), "music_duet", "official")
  assert official.sum() == 0
  values = _values(_box((0, 112), (0, 224)), official)
  assert values["piap_official"] == pytest.approx(25088 / N_PIX)
  standard = gt_maps.pixel_boxes_to_gt_map(gt_maps.music_pixels(box, "standard"), "music_duet", "standard")
  np.testing.assert_array_equal(standard, _box((112, 168), (112, 168)))
  wide = np.array([[0.25, 0.25, 0.5, 0.5]])
  assert gt_maps.pixel_boxes_to_gt_map(gt_maps.music_pixels(wide, "standard"), "music_solo",
                                       "standard").sum() == 12544
  assert gt_maps.pixel_boxes_to_gt_map(gt_maps.music_pixels(wide, "official"), "music_solo",
                                       "official").sum() == 3136


# ------------------------------------------------------------------------------------------------ GT maps

def test_gt_map_combine_rules():
  boxes = np.array([[0, 0, 112, 112], [56, 0, 168, 112], [-1, -1, -1, -1]])  # Padding row ignored.
  summed = gt_maps.pixel_boxes_to_gt_map(boxes, "vggsound_single", "official")
  assert summed.max() == 2 and summed.sum() == 2 * 12544
  assert gt_maps.pixel_boxes_to_gt_map(boxes, "vggsound_single", "standard").max() == 1
  assert gt_maps.pixel_boxes_to_gt_map(boxes, "vggss", "official").sum() == 18816
  flickr = gt_maps.pixel_boxes_to_gt_map(boxes, "flickr", "official")
  assert set(np.unique(flickr)) == {0.0, 0.5, 1.0}
  assert gt_maps.num_valid_boxes(boxes) == 2
  np.testing.assert_array_equal(gt_maps.flickr_pixels([[0, 10, 255, 256]]), [[0, 8, 223, 224]])
  # Normalised xyxy (our datasets): truncation of 224 * v, clipping, empty and batched inputs.
  gt = gt_maps.boxes_to_gt_map(np.array([[0.25, 0.25, 0.75, 0.75]]))
  assert gt.dtype == np.float32 and gt.sum() == 112 * 112 and gt[56, 56] == 1 and gt[55, 56] == 0
  assert gt_maps.boxes_to_gt_map(np.zeros((0, 4))).sum() == 0
  assert gt_maps.boxes_to_gt_map(np.array([[-0.5, 0.0, 2.0, 1.0]])).sum() == N_PIX
  assert gt_maps.boxes_to_gt_map(np.array([[0.2, 0.0, 0.1, 1.0]])).sum() == 0
  batched = gt_maps.boxes_to_gt_map(np.array([[[0, 0, 0.5, 0.5]], [[0, 0, 1, 1]]]), combine="sum")
  assert batched.shape == (2, 224, 224)


def test_resize_mask_nearest_is_opencv_like():
  mask = np.arange(448 * 448).reshape(448, 448)
  out = resampling.resize_mask_nearest(mask, (224, 224))
  np.testing.assert_array_equal(out, mask[::2, ::2])  # src = 2·dst, no half-pixel offset.
  small = np.arange(300).reshape(1, 300).repeat(2, 0)
  cols = resampling.resize_mask_nearest(small, (224, 224))[0]
  np.testing.assert_array_equal(cols, np.minimum(np.floor(np.arange(224) * (1 / (224 / 300))), 299))
  assert gt_maps.mask_to_gt_map(np.full((10, 10), 3), "official").max() == 3
  assert gt_maps.mask_to_gt_map(np.full((10, 10), 3), "standard").max() == 1


def test_gt_maps_match_golden_bbox2gtmap(golden_dir):
  cases = np.load(golden_dir / "avgn" / "metrics_cases.npz")
  for boxes, nbox, fmt, expected in zip(cases["bboxes"], cases["nbox"], cases["gt_format"], cases["gt_map"]):
    np.testing.assert_array_equal(gt_maps.pixel_boxes_to_gt_map(boxes[:nbox], str(fmt), "official"),
                                  expected)
  inputs = np.load(golden_dir / "avgn" / "inputs.npz")
  np.testing.assert_array_equal(gt_maps.pixel_boxes_to_gt_map(inputs["val_bboxes"], "vggss", "official"),
                                inputs["val_gt_map"])
  np.testing.assert_array_equal(gt_maps.num_valid_boxes(inputs["val_bboxes"]), inputs["val_nbox"])


# ----------------------------------------------------------------------------------------- pixel AP engine

def test_pixel_ap_matches_brute_force_with_ties():
  rng = np.random.default_rng(3)
  for _ in range(200):
    rows, size = rng.integers(1, 5), rng.integers(1, 80)
    scores = rng.random((rows, size)).astype(np.float32)
    levels = rng.choice([0, 2, 3, 16])
    if levels:
      scores = np.round(scores * levels) / levels  # Long tie runs.
    if rng.random() < 0.3:
      scores -= np.float32(0.5)  # Negative scores use the uint64 keys.
    labels = rng.random((rows, size)) < rng.random()
    expected = [_reference_ap(l, s) for l, s in zip(labels, scores)]
    np.testing.assert_allclose(ranking.average_precision(scores, labels), expected, rtol=0, atol=1e-12)


def test_pixel_ap_long_tie_runs_and_float_ties():
  scores = np.repeat(np.arange(5, dtype=np.float32), 40)[None].repeat(2, 0)
  labels = np.random.default_rng(0).random(scores.shape) < 0.5
  np.testing.assert_allclose(ranking.average_precision(scores, labels),
                             [_reference_ap(l, s) for l, s in zip(labels, scores)], atol=1e-12)
  keys = ranking.sorted_keys(np.array([[0.5, -0.0, 0.0, -2.0]], np.float32), np.array([[1, 0, 1, 0]], bool))
  np.testing.assert_array_equal(ranking.decode_scores(keys), [[-2.0, 0.0, 0.0, 0.5]])


# ------------------------------------------------------------------------------------------- golden values

@pytest.fixture(scope="module")
def golden_cases(golden_dir):
  cases = np.load(golden_dir / "avgn" / "metrics_cases.npz")
  with open(golden_dir / "avgn" / "metrics_expected.json") as f:
    expected = json.load(f)
  per_sample = localization.score_predictions(cases["pred_f16"].astype(np.float32),
                                              cases["gt_map"].astype(np.float64), cases["nbox"], cases["conf"])
  return per_sample, expected


def _expected_array(entry):
  return np.array([np.nan if v is None else v for v in entry["values"]], np.float64)


def test_golden_per_sample_values(golden_cases):
  per_sample, expected = golden_cases
  for ours, theirs in [("thr", "thr"), ("ciou", "ciou"), ("piap_official", "piap"), ("area", "area"),
                       ("nbox", "nbox")]:
    np.testing.assert_allclose(per_sample[ours], _expected_array(expected["per_sample"][theirs]), rtol=0,
                               atol=1e-12, err_msg=ours)
  # thr, cIoU and area are bit-exact; piap (sklearn) to rounding.
  for key in ("thr", "ciou", "area"):
    np.testing.assert_array_equal(per_sample[key], _expected_array(expected["per_sample"][key]))


def test_golden_aggregates(golden_cases):
  per_sample, expected = golden_cases
  nbox, ciou, conf = per_sample["nbox"], per_sample["ciou"], per_sample["conf"]
  ours = {
      "precision_at_10": aggregates.precision_at(nbox, ciou, 0.1),
      "precision_at_30": aggregates.precision_at(nbox, ciou, 0.3),
      "precision_at_50": aggregates.precision_at(nbox, ciou, 0.5),
      "ap_at_30": aggregates.slavc_ap(nbox, ciou, conf, 0.3),
      "ap_at_50": aggregates.slavc_ap(nbox, ciou, conf, 0.5),
      "calc_ap_75": aggregates.slavc_ap(nbox, ciou, conf, 0.75),
      "cal_auc": aggregates.auc(nbox, ciou, "official"),
      "piap_average": float(np.mean(per_sample["piap_official"])),
      "f1_at_30": aggregates.f1_score(nbox, ciou, conf, 0.5, 0.3),
      "f1_at_50": aggregates.f1_score(nbox, ciou, conf, 0.5, 0.5),
      "precision_recall_conf0.5_iou0.5": [float(x) for x in aggregates.precision_recall(nbox, ciou, conf,
                                                                                       0.5, 0.5)],
  }
  assert set(ours) == set(expected["aggregates"])
  for key, entry in expected["aggregates"].items():
    np.testing.assert_allclose(ours[key], entry["value"], rtol=0, atol=1e-6, err_msg=key)
  summary = localization.summarize(per_sample, "official")
  for ours_key, theirs in [("precision_at_30", "precision_at_30"), ("auc", "cal_auc"),
                           ("piap_official", "piap_average"), ("slavc_ap@0.5", "ap_at_50"),
                           ("slavc_ap@0.3", "ap_at_30"), ("f1_at_30", "f1_at_30"), ("f1_at_50", "f1_at_50")]:
    assert summary[ours_key] == pytest.approx(expected["aggregates"][theirs]["value"], abs=1e-6), ours_key


def test_golden_finalize_stats(golden_cases):
  per_sample, expected = golden_cases
  stats = localization.official_finalize_stats(per_sample, strict=True)
  theirs = expected["finalize_stats"]["value"]
  assert set(stats) == set(theirs)
  for key, value in theirs.items():
    if isinstance(value, str):
      assert stats[key] == value, key
    else:
      assert stats[key] == pytest.approx(value, abs=1e-6), key


def test_finalize_stats_empty_subset():
  args = ([1, 1], [0.5, 0.2], [0.6, 0.4], [0.5, 0.5], [100.0, 200.0])  # Only "small" boxes.
  with pytest.raises(ValueError):
    aggregates.finalize_stats(*args, strict=True)
  stats = aggregates.finalize_stats(*args)
  assert np.isnan(stats["AP-huge@50"]) and stats["Precision-small@50"] == 0.5


@pytest.mark.parametrize("source", ["avl_map_up", "Savl"])
def test_golden_validate_outputs(golden_dir, source):
  outputs = np.load(golden_dir / "avgn" / "outputs.npz")
  inputs = np.load(golden_dir / "avgn" / "inputs.npz")
  per_sample, summary = localization.score_maps(outputs[source], inputs["val_gt_map"], inputs["val_nbox"],
                                                protocol="official", tau=0.03)
  np.testing.assert_allclose(per_sample["ciou"], outputs["val_ciou"], rtol=0, atol=1e-12)
  np.testing.assert_allclose(per_sample["piap_official"], outputs["val_piap"], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(per_sample["area"], outputs["val_area"])
  np.testing.assert_array_equal(per_sample["nbox"], outputs["val_nbox"])
  np.testing.assert_allclose(per_sample["conf"], outputs["conf"], rtol=1e-6)
  assert summary["precision_at_30"] == pytest.approx(float(outputs["val_precision_at_30"]), abs=1e-12)
  assert summary["piap_official"] == pytest.approx(float(outputs["val_piap_average"]), abs=1e-12)
  assert summary["f1_at_30"] == pytest.approx(float(outputs["val_f1_at_30"]), abs=1e-12)


# -------------------------------------------------------------------------------------------- score_maps

def _random_items(num, seed=0):
  rng = np.random.default_rng(seed)
  raw = (10 * rng.standard_normal((num, 7, 7))).astype(np.float32)
  boxes = np.sort(rng.random((num, 1, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(num, 1, 4)
  gt = gt_maps.boxes_to_gt_map(boxes[:, :, [0, 2, 1, 3]])
  gt[0] = 0  # One empty GT.
  return raw, gt, np.ones(num, np.int64)


def test_score_maps_matches_per_map_reference():
  raw, gt, nbox = _random_items(12)
  per_sample, summary = localization.score_maps(raw, gt, nbox, chunk_size=5, num_threads=2)
  single, _ = localization.score_maps(raw, gt, nbox, chunk_size=64, num_threads=1)
  for key, value in per_sample.items():
    np.testing.assert_array_equal(value, single[key], err_msg=key)
  post = postprocess.avgn_official(raw)
  np.testing.assert_array_equal(per_sample["conf"], post["conf"].astype(np.float64))
  np.testing.assert_array_equal(per_sample["thr"], post["thr"].astype(np.float64))
  for n in range(len(raw)):
    infer, g = post["infer"][n], gt[n].astype(np.float64)
    with np.errstate(invalid="ignore"):
      ciou = (infer * g).sum() / (g.sum() + (infer * (g == 0)).sum())
    assert per_sample["ciou"][n] == ciou
    np.testing.assert_allclose(per_sample["pixel_ap"][n], _reference_ap_argsort(g > 0, post["pred"][n]),
                               atol=1e-12)
    np.testing.assert_allclose(per_sample["piap_official"][n], _reference_ap_argsort(infer, g), atol=1e-12)
  required = {"ciou_mean", "ciou_frac@0.3", "ciou_frac@0.5", "precision_at_30", "precision_at_50", "auc",
              "pixel_ap", "piap_official", "slavc_ap@0.5", "n_samples", "protocol"}
  assert required <= set(summary) and summary["protocol"] == "official" and summary["n_samples"] == 12


def test_standard_protocol_drops_empty_gt():
  raw, gt, nbox = _random_items(6)
  per_sample, standard = localization.score_maps(raw, gt, nbox, protocol="standard")
  official = localization.summarize(per_sample, "official")
  assert standard["protocol"] == "standard" and standard["n_empty_gt"] == 1
  kept = per_sample["ciou"][1:]
  assert standard["ciou_mean"] == pytest.approx(kept.mean())
  assert official["ciou_mean"] == pytest.approx(per_sample["ciou"].mean())
  assert standard["ap"] == standard["pixel_ap"]
  assert standard["auc"] == pytest.approx(aggregates.auc(np.ones(5), kept, "standard"))


def test_summarize_multi_and_permutation_piap():
  raw, gt, nbox = _random_items(8, seed=2)
  per_sample, _ = localization.score_maps(raw, gt, nbox)
  multi = localization.summarize_multi(per_sample, num_sources=2)
  per_source = [localization.summarize({k: v[s::2] for k, v in per_sample.items()}) for s in range(2)]
  assert multi["avgn_multi/precision_at_10"] == pytest.approx(
      np.mean([s["precision_at_10"] for s in per_source]))
  assert multi["cap"] == multi["pixel_ap"] and multi["num_sources"] == 2
  ap = np.random.default_rng(0).random((5, 3, 3))
  expected = [max(np.mean([a[k, p[k]] for k in range(3)]) for p in itertools.permutations(range(3)))
              for a in ap]
  np.testing.assert_allclose(aggregates.permutation_invariant_piap(ap), expected)


def test_empty_input():
  per_sample, summary = localization.score_maps(np.zeros((0, 7, 7)), np.zeros((0, 224, 224)), np.zeros(0))
  assert summary["n_samples"] == 0 and np.isnan(summary["ciou_mean"])
  assert set(per_sample) >= {"ciou", "pixel_ap", "conf"}
