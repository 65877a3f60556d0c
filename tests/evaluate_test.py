"""The evaluation binary: predictions files (schema, validation, scoring, exit codes), per-host gathering, the
`--all` ledger (kill and rerun, --watch), and checkpoint evaluation outputs with an exported-maps round trip.

The checkpoint tests share one workdir with 3 tiny-AVGN checkpoints, copied per test; they and the two
subprocess runs of the binary are the slow group.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl.testing import flagsaver
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import pytest

from avl_jax import config_lib
from avl_jax import checkpointing
from avl_jax import eval_lib
from avl_jax import evaluate
from avl_jax import sharding
from avl_jax import train
from avl_jax.evaluation import gt as eval_gt
from avl_jax.evaluation import scoring
from avl_jax.evaluation import writers
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.metrics import predictions
from avl_jax.pipeline import data_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 6  # config.num_train_steps of the checkpoint tests
CHECKPOINT_STEPS = (2, 4, 6)


def _config(data_dir: str, steps: int = TRAIN_STEPS):
  return config_lib.load_config(os.path.join(REPO, "configs", "synthetic_av.py"),
                                f"tiny,steps={steps},data_dir={data_dir}")


def _subprocess_env() -> dict[str, str]:
  """The test process's environment (8 fake devices) plus its persistent compilation cache."""
  env = dict(os.environ)
  if jax.config.jax_compilation_cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _numeric(summary: dict) -> dict:
  return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


# ------------------------------------------------------------------------------------------- predictions files

def _synthetic_file(path, rng=None, **overrides):
  """4 examples x 2 slots of 7x7 maps with boxes; example 1 has one source (slot 1 holds NaN: ignored)."""
  rng = rng or np.random.default_rng(0)
  maps = rng.normal(size=(4, 2, 7, 7)).astype(np.float32)
  maps[1, 1] = np.nan
  boxes = np.full((4, 2, 3, 4), -1.0, np.float32)
  boxes[:, 0, 0] = [0.1, 0.2, 0.5, 0.6]
  boxes[:, 1, 0] = [0.5, 0.5, 0.9, 0.95]
  boxes[:, 1, 1] = [0.0, 0.0, 0.3, 0.3]
  arrays = dict(boxes=boxes, num_sources=np.array([2, 1, 2, 2]), class_ids=np.array([[3, 5]] * 4),
                ids=["a", "b", "c", "d"], map_range="logits", tau=0.03, step=7)
  arrays.update(overrides)
  predictions.save(str(path), arrays.pop("maps", maps), **arrays)
  return maps, boxes


def test_predictions_file_scores_like_score_maps(tmp_path):
  frames = np.random.default_rng(1).integers(0, 255, (4, 24, 24, 3), dtype=np.uint8)
  maps, boxes = _synthetic_file(tmp_path / "p.npz", frames=frames)
  result = eval_lib.score_predictions_file(str(tmp_path / "p.npz"), str(tmp_path / "out" / "r.json"),
                                           protocol="standard")
  # The same items scored directly: (example, slot) = (0,0) (0,1) (1,0) (2,0) (2,1) (3,0) (3,1).
  items = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
  raw = np.stack([maps[i, s] for i, s in items])
  gt = np.stack([gt_maps.boxes_to_gt_map(boxes[i, s][boxes[i, s, :, 0] >= 0]) for i, s in items])
  nbox = np.array([1 if s == 0 else 2 for _, s in items])
  _, want = localization.score_maps(raw, gt, nbox, protocol="standard", tau=0.03, map_range="logits")
  assert result["metrics"]["model"] == pytest.approx(want, nan_ok=True)
  assert (result["num_examples"], result["num_items"], result["step"]) == (4, 7, 7)
  assert set(result["metrics"]) == {"model", *scoring.BASELINES}  # a predictions file has no audio to ablate
  with open(tmp_path / "out" / "r.json") as f:
    assert json.load(f)["protocol"] == "standard"
  with open(tmp_path / "out" / "r.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["id"], int(r["source"]), int(r["class"])) for r in rows] == [
      ("a", 0, 3), ("a", 1, 5), ("b", 0, 3), ("c", 0, 3), ("c", 1, 5), ("d", 0, 3), ("d", 1, 5)]
  assert list(rows[0]) == list(writers.CSV_COLUMNS) + ["center_prior_ciou", "center_prior_ap", "random_ciou",
                                                        "random_ap"]
  assert float(rows[0]["area"]) == pytest.approx(gt[0].sum() / 224 ** 2, rel=1e-5)
  assert os.path.getsize(tmp_path / "out" / "r.png") > 1000


def test_predictions_gt_forms_and_map_ranges_agree(tmp_path):
  maps, boxes = _synthetic_file(tmp_path / "xyxy.npz")
  xywh = boxes.copy()
  valid = boxes[..., 0] >= 0
  xywh[..., 2:] = np.where(valid[..., None], boxes[..., 2:] - boxes[..., :2], -1)
  # DSOL's xywh rasterisation floors x + w: give sizes whose sums land exactly on the same pixels.
  predictions.save(str(tmp_path / "xywh.npz"), maps, boxes=xywh, box_format="xywh", num_sources=[2, 1, 2, 2])
  items_xyxy = predictions.load(str(tmp_path / "xyxy.npz"))
  items_xywh = predictions.load(str(tmp_path / "xywh.npz"))
  assert np.abs(items_xywh.gt - items_xyxy.gt).sum() <= 4 * 224 * len(items_xyxy.gt)  # at most a row/col per side
  # GT maps given directly (with the official box counts) give the boxes' items exactly.
  gt_full = np.zeros((4, 2, 224, 224), np.float32)
  gt_full[items_xyxy.example, items_xyxy.source] = items_xyxy.gt
  num_boxes = np.zeros((4, 2), np.int64)
  num_boxes[items_xyxy.example, items_xyxy.source] = items_xyxy.nbox
  predictions.save(str(tmp_path / "gt.npz"), maps, gt_maps=gt_full, num_boxes=num_boxes, num_sources=[2, 1, 2, 2])
  items_gt = predictions.load(str(tmp_path / "gt.npz"))
  np.testing.assert_array_equal(items_gt.gt, items_xyxy.gt)
  np.testing.assert_array_equal(items_gt.nbox, items_xyxy.nbox)
  assert items_gt.map_range == "minmax" and items_gt.class_id.tolist() == [-1] * 7  # defaults
  # The map range only changes the confidence: pred-based values agree up to float32 rounding of the min-max.
  per = {r: localization.score_maps(items_xyxy.raw_maps, items_xyxy.gt, items_xyxy.nbox, map_range=r)[0]
         for r in predictions.MAP_RANGES}
  for r in ("unit", "minmax"):
    for key in ("ciou", "pixel_ap", "piap_official", "thr"):
      np.testing.assert_allclose(per[r][key], per["logits"][key], rtol=1e-4, atol=1e-5, err_msg=f"{r} {key}")
  assert not np.allclose(per["minmax"]["conf"], per["logits"]["conf"])


def _replace(path, **changes):
  data = dict(np.load(path))
  data.update(changes)
  for key in [k for k, v in changes.items() if v is None]:
    del data[key]
  np.savez(path, **data)


@pytest.mark.parametrize("changes, protocol, message", [
    (dict(maps=np.zeros((4, 2, 7), np.float32)), "official", r"maps has shape \[4, 2, 7\]; expected \[N, S, h, w\]"),
    (dict(maps=np.zeros((4, 2, 7, 7), np.int32)), "official", "maps has dtype int32; expected a float dtype"),
    (dict(maps=np.zeros((0, 2, 7, 7), np.float32)), "official", "must be > 0"),
    (dict(maps=None), "official", "has no `maps` array"),
    ("nan_map", "official", r"maps\[2, 1, 3, 4\] is nan"),
    ("inf_box", "official", r"boxes\[3, 0, 0, 2\] is inf"),
    ("box_outside", "standard", r"boxes\[2, 1, 1\] = \[0.0, 0.0, 1.25, 0.3\] has coordinates outside \[0, 1\]"),
    ("inverted_box", "official",
     r"boxes\[1, 0, 0\] = \[0.5, 0.2, 0.1, 0.6\] is inverted \(x2 < x1; box_format 'xyxy'\)"),
    ("inverted_box", "standard", r"boxes\[1, 0, 0\] = \[0.5, 0.2, 0.1, 0.6\] is inverted"),
    ("inverted_xywh", "official", r"boxes\[0, 1, 1\] = \[0.0, 0.5, 0.3, -0.2\] is inverted \(negative width"),
    (dict(boxes=np.zeros((4, 3, 2, 4), np.float32)), "official",
     r"boxes has shape \[4, 3, 2, 4\]; expected \[N=4, S=2, NB, 4\]"),
    (dict(num_sources=np.array([2, 1, 3, 2])), "official", r"num_sources\[2\] = 3 is outside \[0, 2\]"),
    (dict(num_sources=np.zeros(4, np.int64)), "official", "nothing to score"),
    (dict(num_boxes=np.full((4, 2), 5)), "official", r"num_boxes\[0, 0\] = 5 is outside \[0, 3\]"),
    (dict(gt_maps=np.zeros((4, 2, 224, 224), np.float32)), "official", "exactly one of `gt_maps`"),
    (dict(box_format=np.asarray("yxyx")), "official", "box_format is 'yxyx'; expected one of"),
    (dict(map_range=np.asarray("prob")), "official", "map_range is 'prob'"),
    (dict(tau=np.asarray(-1.0)), "official", "tau is -1.0"),
    (dict(gt_map=np.zeros(3)), "official", r"unknown arrays \['gt_map'\]"),
    (dict(ids=np.array(["a", "b", "c", "d"], object)), "official", "without pickle"),
])
def test_predictions_file_errors_name_the_array_and_index(tmp_path, changes, protocol, message):
  path = str(tmp_path / "p.npz")
  _synthetic_file(path)
  if changes == "nan_map":
    maps = np.load(path)["maps"]
    maps[2, 1, 3, 4] = np.nan
    changes = dict(maps=maps)
  elif changes == "inf_box":
    boxes = np.load(path)["boxes"]
    boxes[3, 0, 0, 2] = np.inf
    changes = dict(boxes=boxes)
  elif changes in ("inverted_box", "inverted_xywh"):
    boxes = np.load(path)["boxes"]
    if changes == "inverted_box":
      boxes[1, 0, 0] = [0.5, 0.2, 0.1, 0.6]
      changes = dict(boxes=boxes)
    else:
      boxes[0, 1, 1] = [0.0, 0.5, 0.3, -0.2]
      changes = dict(boxes=boxes, box_format=np.asarray("xywh"))
  elif changes == "box_outside":
    boxes = np.load(path)["boxes"]
    boxes[2, 1, 1, 2] = 1.25
    changes = dict(boxes=boxes)
    # The official protocol clips like bbox2gtmap instead.
    _replace(path, **changes)
    assert predictions.load(path, "official").gt.shape == (7, 224, 224)
  _replace(path, **changes)
  with pytest.raises(predictions.PredictionsError, match=message):
    predictions.load(path, protocol)


def test_predictions_zero_area_padding_and_clipped_boxes_are_not_inverted(tmp_path):
  """Only a box inverted inside the image is an error: zero-area boxes, -1 padding rows (also below num_boxes)
  and, under 'official', a coordinate outside [0, 1] that clipping turns into an empty box are accepted."""
  path = str(tmp_path / "p.npz")
  _synthetic_file(path)
  boxes = np.load(path)["boxes"]
  boxes[0, 0, 1] = [0.3, 0.2, 0.3, 0.6]                      # zero width
  boxes[1, 0, 1] = [0.534375, 0.3375, -2.88e16, 0.909375]   # official VGG-SS corrupt x2: clipped, empty
  num_boxes = np.array([[2, 2], [2, 0], [1, 3], [1, 2]])    # example 2 slot 1 counts its -1 padding row
  _replace(path, boxes=boxes, num_boxes=num_boxes)
  assert predictions.load(path, "official").nbox.tolist() == [2, 2, 2, 1, 3, 1, 2]
  with pytest.raises(predictions.PredictionsError, match=r"boxes\[1, 0, 1\] .* outside \[0, 1\]"):
    predictions.load(path, "standard")  # 'standard' rejects the out-of-range value itself


def test_predictions_cli_exit_codes(tmp_path, capsys):
  missing = str(tmp_path / "missing.npz")
  with flagsaver.flagsaver(predictions=missing), pytest.raises(SystemExit) as exit_info:
    evaluate.main(["evaluate"])
  assert exit_info.value.code == 2
  assert f"error: Predictions file {missing} does not exist." in capsys.readouterr().err
  path = str(tmp_path / "p.npz")
  _synthetic_file(path)
  with flagsaver.flagsaver(predictions=path, protocol="standard", output=str(tmp_path / "r.json")):
    evaluate.main(["evaluate"])
  assert "center_prior" in capsys.readouterr().out and os.path.exists(tmp_path / "r.csv")
  with flagsaver.flagsaver(workdir=str(tmp_path)), pytest.raises(app.UsageError, match="Give --config and --workdir"):
    evaluate.main(["evaluate"])


# ---------------------------------------------------------------------------------------------------- hosts

def test_gather_counts_every_item_once_over_unequal_hosts(monkeypatch):
  """Two fake hosts with 3 and 1 rows: padded, gathered, unpadded, bit-exact for 64-bit values."""
  other_host = {np.dtype(np.float64): np.array([np.pi]), np.dtype(np.uint8): np.full((1, 64), 7, np.uint8),
                np.dtype(bool): np.array([True])}
  expected_dtype = []

  def fake_allgather(x, tiled=False):
    x = np.asarray(x)
    if tiled:  # the row counts
      return np.concatenate([x, [1]])
    other = np.zeros_like(x)
    other_rows = other_host[expected_dtype[-1]]
    other[:1] = np.ascontiguousarray(other_rows).reshape(1, -1).view(np.uint8)
    return np.stack([x, other])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  for local in (np.array([1 + 1e-12, 2.0, -3.5]), np.arange(3 * 64, dtype=np.uint8).reshape(3, 64),
                np.array([False, True, False])):
    expected_dtype.append(local.dtype)
    got = sharding.gather_rows(local)
    want = np.concatenate([local, other_host[local.dtype]])
    assert got.dtype == local.dtype
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------------- ledger

def test_pending_splits_follow_the_ledger():
  ledger = {2: {"splits": ["a", "b"], "protocol": "official"}, 4: {"splits": ["a"], "protocol": "official"}}
  assert evaluate.pending_splits(ledger, 2, ("a", "b"), "official") == []
  assert evaluate.pending_splits(ledger, 4, ("a", "b"), "official") == ["b"]
  assert evaluate.pending_splits(ledger, 2, ("a", "b"), "standard") == ["a", "b"]
  assert evaluate.pending_splits(ledger, 6, ("a",), "official") == ["a"]
  # Predicted-class evaluations are not the oracle ones: an oracle entry leaves every split pending for them.
  assert evaluate.pending_splits(ledger, 2, ("a", "b"), "official", "predicted") == ["a", "b"]
  ledger[2]["class_source"] = "predicted"
  assert evaluate.pending_splits(ledger, 2, ("a", "b"), "official", "predicted") == []
  assert evaluate.pending_splits(ledger, 2, ("a", "b"), "official") == ["a", "b"]


def test_watch_stops_at_the_final_step_or_after_the_timeout(tmp_path, tiny_config, monkeypatch):
  """--watch on a workdir whose checkpoints are all in the ledger (nothing to evaluate, nothing compiled)."""
  workdir = str(tmp_path)
  splits = list(tiny_config.dataset.eval_splits)
  evaluate.write_ledger(workdir, {s: {"splits": splits, "protocol": "official"} for s in (2, 4)})
  monkeypatch.setattr(evaluate.CheckpointEvaluator, "steps", lambda self: [2, 4])
  now, sleeps = [0.0], []

  def sleep(seconds):
    sleeps.append(seconds)
    now[0] += seconds

  tiny_config.num_train_steps = 4  # the final step is evaluated: stop at once
  assert evaluate.evaluate_checkpoints(tiny_config, workdir, watch=True, sleep=sleep, clock=lambda: now[0]) == {}
  assert not sleeps
  tiny_config.num_train_steps = 10  # training goes on but writes nothing: stop after the timeout
  evaluate.evaluate_checkpoints(tiny_config, workdir, watch=True, poll_seconds=10, watch_timeout=25, sleep=sleep,
                                clock=lambda: now[0])
  assert sleeps == [10, 10, 10]
  monkeypatch.setattr(evaluate.CheckpointEvaluator, "steps", lambda self: [])
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    evaluate.evaluate_checkpoints(tiny_config, workdir)


def test_empty_split_is_a_clear_error(tiny_config, monkeypatch):
  monkeypatch.setattr(data_source, "open_source", lambda *args, **kwargs: [])
  mesh = sharding.create_mesh(tiny_config.mesh)
  with pytest.raises(data_source.DataError, match="Eval split 'test_duet' of 'synthetic_av/tiny' is empty"):
    eval_lib.predict_split(tiny_config, None, None, mesh, "test_duet")


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint_workdir(tiny_data_dir, tmp_path_factory) -> str:
  """A workdir with checkpoints 2, 4 and 6 of a tiny AVGN and no evaluation yet (copy it before writing to it).

  The states are the initial parameters saved under three steps: evaluation only needs restorable checkpoints,
  and skipping the train step's compilation halves the fixture's cost (train_test.py covers train -> evaluate).
  """
  config = _config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp("checkpoints") / "workdir")
  mesh = sharding.create_mesh(config.mesh)
  state = train.build(config, mesh).init_fn(jax.random.PRNGKey(0))
  manager = checkpointing.create_manager(workdir, max_to_keep=None)
  for step in CHECKPOINT_STEPS:
    checkpointing.save(manager, step, state.replace(step=jnp.asarray(step, jnp.int32)), None, force=True)
  manager.wait_until_finished()
  return workdir


def _copy(workdir: str, tmp_path) -> str:
  target = str(tmp_path / "workdir")
  shutil.copytree(workdir, target)
  return target


@pytest.mark.slow
def test_evaluate_step_outputs_and_predictions_round_trip(checkpoint_workdir, tiny_data_dir, tmp_path):
  """One checkpoint: JSON, CSV, PNG, TensorBoard, ledger; its exported maps scored by `--predictions` (a
  subprocess, no model) give the in-process summaries of the model and both baselines."""
  workdir = _copy(checkpoint_workdir, tmp_path)
  config = _config(tiny_data_dir)
  results = evaluate.evaluate(config, workdir, step=4, save_predictions=True)
  eval_dir = os.path.join(workdir, "eval")
  for split, result in results.items():
    with open(os.path.join(eval_dir, f"{split}_4.json")) as f:
      written = json.load(f)
    assert written["metrics"]["model"] == pytest.approx(result["metrics"]["model"], nan_ok=True)
    assert result["step"] == 4 and result["protocol"] == "official" and result["num_examples"] == 12
    with open(os.path.join(eval_dir, f"{split}_4.csv")) as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == result["num_items"] == (24 if split == "test_duet" else 12)
    ciou = np.array([float(r["ciou"]) for r in rows])
    assert np.mean(ciou[[int(r["nbox"]) > 0 for r in rows]]) == pytest.approx(
        result["metrics"]["model"]["ciou_mean"], abs=1e-5)
    assert len({(r["id"], r["source"]) for r in rows}) == len(rows)
    assert os.path.getsize(os.path.join(eval_dir, f"{split}_4.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(eval_dir, "tensorboard")))
  assert evaluate.read_ledger(workdir)[4]["splits"] == sorted(config.dataset.eval_splits)

  output = str(tmp_path / "scores" / "duet.json")
  cmd = [sys.executable, "-m", "avl_jax.evaluate", f"--predictions={eval_dir}/test_duet_4_predictions.npz",
         "--protocol=official", f"--output={output}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=_subprocess_env(),
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(output) as f:
    scored = json.load(f)
  want = results["test_duet"]
  assert (scored["step"], scored["num_examples"], scored["num_items"]) == (4, 12, 24)
  for method in ("model", *scoring.BASELINES):
    assert _numeric(scored["metrics"][method]) == pytest.approx(_numeric(want["metrics"][method]), nan_ok=True)


@pytest.mark.slow
def test_all_resumes_after_being_killed(checkpoint_workdir, tiny_data_dir, tmp_path):
  """`--all` in a subprocess, SIGKILLed right after its first ledger write; the rerun evaluates exactly the
  checkpoints the ledger lacks, and a third run finds nothing to do."""
  workdir = _copy(checkpoint_workdir, tmp_path)
  config_arg = f"--config={REPO}/configs/synthetic_av.py:tiny,steps={TRAIN_STEPS},data_dir={tiny_data_dir}"
  cmd = [sys.executable, "-m", "avl_jax.evaluate", config_arg, f"--workdir={workdir}", "--all"]
  log_path = tmp_path / "all.log"
  with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the child
    proc = subprocess.Popen(cmd, cwd=REPO, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    ledger_file = evaluate.ledger_path(workdir)
    deadline = time.monotonic() + 300
    try:
      while not os.path.exists(ledger_file) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
  assert os.path.exists(ledger_file), log_path.read_text()[-3000:]
  done = set(evaluate.read_ledger(workdir))
  assert done and done < set(CHECKPOINT_STEPS), f"killed too late: {done}"

  config = _config(tiny_data_dir)
  evaluated = evaluate.evaluate_checkpoints(config, workdir)
  assert set(evaluated) == set(CHECKPOINT_STEPS) - done
  ledger = evaluate.read_ledger(workdir)
  assert sorted(ledger) == list(CHECKPOINT_STEPS)
  assert all(entry["splits"] == sorted(config.dataset.eval_splits) for entry in ledger.values())
  for step in CHECKPOINT_STEPS:
    for split in config.dataset.eval_splits:
      with open(os.path.join(workdir, "eval", f"{split}_{step}.json")) as f:
        assert json.load(f)["step"] == step
  assert evaluate.evaluate_checkpoints(config, workdir) == {}
  # A missing step is an error of the single-step mode.
  with pytest.raises(FileNotFoundError, match="No checkpoint for step 3"):
    evaluate.evaluate(config, workdir, step=3)


def _ids(names):
  out = np.zeros((len(names), 64), np.uint8)
  for i, name in enumerate(names):
    out[i, :len(name)] = np.frombuffer(name.encode(), np.uint8)
  return out


def test_official_duet_gt_bug_scores_against_the_partners_gt():
  """Official AVGN vggsound_duet GT: source 0 <- the partner's boxes, source 1 <- the partner's partner's boxes
  (here: a -> b -> c; c's partner is missing from the split, so its source 1 has no GT)."""
  boxes = np.full((3, 4, 4), -1.0, np.float32)
  box_source = np.full((3, 4), -1, np.int32)
  corners = {"a": 0.0, "b": 0.2, "c": 0.4, "z": 0.6}
  own = {k: np.asarray([v, v, v + 0.1, v + 0.1], np.float32) for k, v in corners.items()}
  pairs = [("a", "b"), ("b", "c"), ("c", "z")]
  for i, (example, partner) in enumerate(pairs):
    boxes[i, 0], boxes[i, 1] = own[example], own[partner]
    box_source[i, :2] = [0, 1]
  pred = {"id": _ids([p[0] for p in pairs]), "partner_id": _ids([p[1] for p in pairs]), "boxes": boxes,
          "boxes_raw": boxes.astype(np.float64), "box_source": box_source,
          "source_class": np.zeros((3, 2), np.int32), "gt_format": "vggsound_duet"}
  out, missing = eval_gt.official_duet_gt_bug(pred)
  assert missing == 1
  np.testing.assert_array_equal(out["boxes"][0, :2], [own["b"], own["c"]])  # a: partner b, b's partner c
  np.testing.assert_array_equal(out["box_source"][0, :2], [0, 1])
  np.testing.assert_array_equal(out["boxes"][1, :2], [own["c"], own["z"]])
  np.testing.assert_array_equal(out["boxes"][2, 0], own["z"])
  assert out["box_source"][2].tolist() == [0, -1, -1, -1]  # z is not in the split
  _, _, gt, nbox = eval_gt.source_items(out, "official")
  assert nbox.tolist() == [1, 1, 1, 1, 1, 0] and gt[5].sum() == 0
  np.testing.assert_array_equal(gt[0], gt_maps.pixel_boxes_to_gt_map(
      gt_maps.normalized_to_pixels(own["b"][None].astype(np.float64)), "vggsound_duet", "official"))


def test_summarize_puts_oracle_and_predicted_results_in_one_table(tmp_path):
  def result(step, source, ciou):
    summary = {k: ciou for k in writers.TABLE_KEYS}
    return {"split": "test_duet", "step": step, "num_examples": 4, "num_items": 8, "protocol": "official",
            "class_source": source, "metrics": {"model": summary, "silent_audio": summary,
                                                "center_prior": summary, "random": summary},
            "audio_classification": {"map": 0.7, "chance": 0.25, "top1": 0.9}}
  eval_dir = tmp_path / "eval"
  for step, source, name in ((2, "oracle", "test_duet_2"), (4, "oracle", "test_duet_4"),
                             (4, "predicted", "test_duet_4_predicted")):
    writers.write_json(str(eval_dir / f"{name}.json"), result(step, source, 0.1 * step))
  writers.write_json(str(eval_dir / "evaluated.json"), {"4": {"splits": ["test_duet"]}})  # not a result
  text = evaluate.summarize(str(tmp_path))
  lines = text.splitlines()
  assert lines[0].startswith("test_duet (step 4")
  labels = [line[:34].strip() for line in lines[3:9]]
  assert labels == ["model (oracle classes)", "silent_audio (oracle classes)", "model (predicted classes)",
                    "silent_audio (predicted classes)", "center_prior", "random"]
  assert "0.4000" in lines[3] and "audio classifier (predicted run): mAP 0.7000" in text
  with pytest.raises(FileNotFoundError, match="test_single"):
    evaluate.summarize(str(tmp_path), ["test_single"])
