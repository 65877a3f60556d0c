"""`python -m avl_jax.localize` (avl_jax/localize_lib.py and the localize_*.py files it calls): decoding,
windows, outputs, errors, and -- slow -- whether a trained model's overlay peak lands on the sounding object of
a rendered synthetic_av clip.

The binary's flags share names with avl_jax.evaluate's (imported by other test modules in this process), so the
binary itself runs in subprocesses; the library is tested in-process.
"""
import json
import os
import pathlib
import subprocess
import sys
import wave
from unittest import mock

import av
import jax
import numpy as np
import pytest
from PIL import Image

from avl_jax import checkpointing
from avl_jax import config_lib
from avl_jax import localize_clips
from avl_jax import localize_lib
from avl_jax import localize_outputs
from avl_jax import localize_synthetic
from avl_jax import sharding
from avl_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "synthetic_av.py")


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
  if jax.config.jax_compilation_cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
  return env


def _write_video_only(path: str, seconds: float = 2.0, fps: int = 10, size: int = 64) -> None:
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for _ in range(int(seconds * fps)):
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((size, size, 3), np.uint8), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def _write_audio_only(path: str, seconds: float = 2.0, rate: int = 16000) -> None:
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("aac", rate=rate, layout="mono")
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    localize_outputs.encode_audio(container, stream, tone, rate, 0, tone.size)
    for packet in stream.encode(None):
      container.mux(packet)


def _write_wav(path: str, samples: np.ndarray, rate: int) -> None:
  with wave.open(path, "wb") as writer:
    writer.setnchannels(1)
    writer.setsampwidth(2)
    writer.setframerate(rate)
    writer.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory) -> tuple[str, str]:
  """(config argument, workdir) of an untrained synthetic_av:tiny AVGN saved as a step-1 checkpoint.

  The dataset is not built: localization reads only the builder's class names, which synthetic_av has in code.
  """
  root = tmp_path_factory.mktemp("localize")
  arg = f"tiny,data_dir={root / 'tfds'}"
  config = config_lib.load_config(CONFIG, arg)
  mesh = sharding.create_mesh(config.mesh)
  setup = train.build(config, mesh)
  state = setup.init_fn(jax.random.PRNGKey(0))
  manager = checkpointing.create_manager(str(root / "wd"))
  checkpointing.save(manager, 1, state, None, force=True)
  manager.wait_until_finished()
  return arg, str(root / "wd")


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory) -> tuple[str, dict]:
  """A 3-scene 64 px clip of 1 s scenes (the tiny config's window) and its truth."""
  path = str(tmp_path_factory.mktemp("clip") / "scenes.mp4")
  return path, localize_synthetic.render_synthetic(path, num_scenes=3, size=64)


# --------------------------------------------------------------------------------------------------- windows

def test_windows_cover_the_clip_every_stride():
  windows = localize_clips.make_windows(16000 * 3 + 100, 16000, 1.0, 0.5)
  assert len(windows) == 5  # starts 0, 0.5, ..., 2.0; the 0.006 s tail after 3.0 s is not a window of its own
  assert [(w.start, w.end, w.centre) for w in windows[:2]] == [(0.0, 1.0, 0.5), (0.5, 1.5, 1.0)]
  assert windows[-1].end == 3.0 and all(w.num_samples == 16000 for w in windows)
  assert len(localize_clips.make_windows(16000, 16000, 1.0, 0.5)) == 1  # exactly one window
  # Frames go to the window whose centre is nearest (ties: the earlier one), clipped at both ends.
  assert [localize_clips.nearest_window(t, windows) for t in (0.0, 0.74, 0.76, 1.25, 9.0)] == [0, 0, 1, 1, 4]
  with pytest.raises(localize_lib.LocalizeError, match=r"clip.wav: its audio lasts 0.50 s, shorter than the "
                     r"model's window of 1.00 s"):
    localize_clips.make_windows(8000, 16000, 1.0, 0.5, "clip.wav")
  with pytest.raises(localize_lib.LocalizeError, match="--stride_seconds=0.0"):
    localize_clips.make_windows(32000, 16000, 1.0, 0.0)


def test_class_selection_follows_top_k_threshold_and_forced_classes():
  scores = np.array([0.1, 0.9, 0.3, 0.6], np.float32)
  assert localize_lib.select_classes(scores, 2, None) == [1, 3]
  assert localize_lib.select_classes(scores, 3, 0.5) == [1, 3]     # 2 is below the threshold
  assert localize_lib.select_classes(scores, 2, 0.95) == [1]       # the best class always stays
  assert localize_lib.select_classes(scores, 2, None, forced=[0, 2]) == [2, 0]  # forced, by score
  assert localize_lib.select_classes(None, 2, None) == [0]         # class-agnostic: its one map


# ---------------------------------------------------------------------------------------------------- errors

def test_input_errors_name_the_file(tmp_path, tiny_workdir):
  arg, workdir = tiny_workdir
  config = config_lib.load_config(CONFIG, arg)
  silent, mute, junk = (str(tmp_path / n) for n in ("silent.mp4", "sound_only.mp4", "junk.mp4"))
  _write_video_only(silent)
  _write_audio_only(mute)
  pathlib.Path(junk).write_text("not a video")
  short = str(tmp_path / "short.mp4")
  localize_synthetic.render_synthetic(short, num_scenes=1, scene_seconds=0.5, size=64)
  cases = [(silent, f"{silent} has no audio stream"), (mute, f"{mute} has no video stream"),
           (junk, f"{junk} is unreadable"), (str(tmp_path / "none.mp4"), "no such file"),
           (short, rf"{short}: its audio lasts 0.5\d s, shorter than the model's window of 1.00 s")]
  for path, message in cases:
    with pytest.raises(localize_lib.LocalizeError, match=message):
      localize_lib.localize(config, video=path, workdir=workdir)
  clip = str(tmp_path / "ok.mp4")
  localize_synthetic.render_synthetic(clip, num_scenes=2, size=64)
  with pytest.raises(localize_lib.LocalizeError, match=r"--workdir=.*nowhere: no checkpoints/ directory"):
    localize_lib.localize(config, video=clip, workdir=str(tmp_path / "nowhere"))
  with pytest.raises(localize_lib.LocalizeError, match=r"--step=7: no checkpoint for it .* available steps: \[1\]"):
    localize_lib.localize(config, video=clip, workdir=workdir, step=7)
  with pytest.raises(localize_lib.LocalizeError, match="'violin' is not a class of this model; valid names: "
                     "red_solid_circle, green_solid_square"):
    localize_lib.localize(config, video=clip, workdir=workdir, classes=["violin"], output_dir=str(tmp_path / "o"))


def test_partial_weights_are_refused(tmp_path, tiny_workdir):
  """--weights must hold the whole model (`weights.load_whole_model`, shared with evaluate --weights)."""
  arg, _ = tiny_workdir
  config = config_lib.load_config(CONFIG, arg)
  clip = str(tmp_path / "ok.mp4")
  localize_synthetic.render_synthetic(clip, num_scenes=2, size=64)
  encoder = {"params": {"imgnet": {"conv1": {"kernel": np.zeros((7, 7, 3, 8), np.float32)}}}}
  checkpointing.save_variables(str(tmp_path / "partial"), encoder, {"format": "torchvision_resnet18"})
  with pytest.raises(localize_lib.LocalizeError, match=r"holds 1 of the \d+ variables of the model "
                     r"\(torchvision_resnet18: a partial set such as an encoder cannot be used to localize alone"):
    localize_lib.localize(config, video=clip, weights=str(tmp_path / "partial"), output_dir=str(tmp_path / "o"))
  with pytest.raises(localize_lib.LocalizeError, match="is not a converted-weights directory"):
    localize_lib.localize(config, video=clip, weights=str(tmp_path), output_dir=str(tmp_path / "o"))


def test_binary_exits_2_naming_the_file(tmp_path):
  silent = str(tmp_path / "silent.mp4")
  _write_video_only(silent)
  result = subprocess.run(
      [sys.executable, "-m", "avl_jax.localize", f"--config={CONFIG}:tiny", f"--workdir={tmp_path / 'wd'}",
       f"--video={silent}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"error: {silent} has no audio stream" in result.stderr


# --------------------------------------------------------------------------------------------------- outputs

def _decoded_frames(path: str) -> tuple[int, int]:
  """(video frames, audio samples) decoded from an mp4."""
  with av.open(path) as container:
    frames = sum(1 for _ in container.decode(video=0))
    container.seek(0)
    samples = sum(f.samples for f in container.decode(audio=0))
  return frames, samples


def test_video_outputs_and_json_schema(tmp_path, tiny_workdir, synthetic_clip):
  arg, workdir = tiny_workdir
  clip, truth = synthetic_clip
  config = config_lib.load_config(CONFIG, arg)
  summary = localize_lib.localize(config, video=clip, workdir=workdir, top_k=2, classes=["Green solid square",
                                                                                        "red_solid_circle"])
  out = pathlib.Path(workdir) / "localize" / "scenes"  # the default output_dir
  assert summary["output_dir"] == str(out)
  written = json.loads((out / "localize.json").read_text())
  assert written == json.loads(json.dumps(summary))
  assert written["window_seconds"] == 1.0 and written["stride_seconds"] == 0.5 and written["num_windows"] == 5
  assert written["model"]["step"] == 1 and written["model"]["class_mode"] == "forced"
  assert written["input"]["width"] == written["input"]["height"] == truth["size"] == 64
  for i, window in enumerate(written["windows"]):
    assert window["index"] == i and window["start"] == 0.5 * i and window["end"] == 0.5 * i + 1
    assert abs(window["frame_time"] - window["centre"]) <= 0.05  # the frame nearest the centre (10 fps)
    assert set(window["class_scores"]) == set(written["model"]["classes"]) and len(window["class_scores"]) == 8
    assert sorted(window["predicted"]) == ["green_solid_square", "red_solid_circle"]
    for item in window["localized"]:
      peak = item["peak"]
      assert 0 < peak["x"] < 1 and 0 < peak["y"] < 1 and peak["x_px"] == pytest.approx(peak["x"] * 64, abs=0.1)
      assert np.isfinite(peak["value"]) and item["score"] == window["class_scores"][item["class"]]
      assert item["png"].startswith(f"windows/w{i:04d}_t") and item["png"].endswith(f"_{item['class']}.png")
      with Image.open(out / item["png"]) as png:
        assert png.size == (64, 64)
  assert written["outputs"]["pngs"] == len(os.listdir(out / "windows")) == 10
  frames, samples = _decoded_frames(str(out / "overlay.mp4"))
  assert frames == 30 and abs(samples - 3 * 16000) <= 2048  # every frame, and the clip's 3 s of sound


def test_image_and_resampled_wav(tmp_path, tiny_workdir):
  arg, workdir = tiny_workdir
  config = config_lib.load_config(CONFIG, arg)
  image, sound = str(tmp_path / "frame.png"), str(tmp_path / "sound.wav")
  Image.fromarray(np.full((48, 80, 3), 128, np.uint8)).save(image)
  _write_wav(sound, 0.2 * np.sin(np.arange(int(1.6 * 22050)) * 0.3), 22050)
  with mock.patch.object(localize_lib.logging, "info", wraps=localize_lib.logging.info) as info:
    summary = localize_lib.localize(config, image=image, audio=sound, workdir=workdir, stride_seconds=0.25,
                                    top_k=1, output_dir=str(tmp_path / "out"), log_every=1)
  messages = [call.args[0] % call.args[1:] for call in info.call_args_list
              if call.args and isinstance(call.args[0], str) and call.args[0].startswith(("Resampling", "Localized"))]
  assert any(m.startswith(f"Resampling the audio of {sound} from 22050 Hz to 16000 Hz") for m in messages)
  assert any(m.startswith("Localized 3/3 windows") for m in messages)
  assert summary["input"]["kind"] == "image" and summary["input"]["resampled_to"] == 16000
  assert summary["input"]["audio_rate"] == 22050 and summary["num_windows"] == 3
  assert [len(w["localized"]) for w in summary["windows"]] == [1, 1, 1]
  assert summary["windows"][0]["localized"][0]["peak"]["x_px"] <= 80
  frames, samples = _decoded_frames(str(tmp_path / "out" / "overlay.mp4"))
  assert frames == 16 and abs(samples - int(1.6 * 22050)) <= 2048  # 10 fps stills, the wav at its own rate


# ------------------------------------------------------------------------------------------------------ slow

# A small EZ-VSL on synthetic_av/default, 128 px frames (4 x 4 maps): 500 steps localize the sounding object
# (test_single pixel AP 0.47 vs the centre prior's 0.34). Measured on 2 CPU cores shared with other jobs (load
# ~10): the whole test 5.6 min (dataset build 0.5, training 4, the binary 0.5). The AVGN demo
# architecture does not localize yet at this budget (measured: 600 steps, pixel AP 0.17, below random), so the
# peak test runs the class-agnostic family; AVGN's class handling is covered by the fast tests.
SLOW_OVERRIDES = {"dataset.image_size": 128, "dataset.resize_size": 142, "model.resnet_width": 8, "model.dim": 64,
                  "model.tau": 0.3}  # the EZ-VSL tau this test was validated with (the demo AVGN uses 1.0)


def _inside(box, peak) -> bool:
  return box[0] <= peak["x"] <= box[2] and box[1] <= peak["y"] <= box[3]


@pytest.mark.slow
def test_trained_model_peaks_on_the_sounding_object(tmp_path):
  from avl_jax import datasets  # pylint: disable=g-import-not-at-top
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "wd")
  datasets.prepare("synthetic_av/default", data_dir)
  arg = f"data_dir={data_dir},model=ezvsl"
  config = config_lib.load_config(CONFIG, arg)
  for name, value in SLOW_OVERRIDES.items():
    group, field = name.split(".")
    config[group][field] = value
  config.num_train_steps = config.checkpoint_every_steps = 500
  config.dataset.num_workers, config.dataset.eval_splits = 0, ("test_single",)
  config.eval.audio_ablations = config.eval.class_ablation = False
  train.train_and_evaluate(config, workdir)

  clip = str(tmp_path / "scenes.mp4")
  truth = localize_synthetic.render_synthetic(clip, num_scenes=48, seed=0)  # sounding boxes never hold the centre
  result = subprocess.run(
      [sys.executable, "-m", "avl_jax.localize", f"--config={CONFIG}:{arg}", f"--workdir={workdir}",
       f"--video={clip}", "--stride_seconds=1"] + [f"--config.{k}={v}" for k, v in SLOW_OVERRIDES.items()],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = pathlib.Path(workdir) / "localize" / "scenes"
  assert f"Wrote {out / 'localize.json'}, {out / 'overlay.mp4'} and 48 PNGs" in result.stdout
  windows = json.loads((out / "localize.json").read_text())["windows"]
  scenes = truth["scenes"]
  assert len(windows) == len(scenes) == 48  # window i is scene i
  peaks = [w["localized"][0]["peak"] for w in windows]
  sounding = np.mean([_inside(s["box"], p) for s, p in zip(scenes, peaks)])
  distractor = np.mean([any(_inside(d["box"], p) for d in s["distractors"]) for s, p in zip(scenes, peaks)])
  centre = np.mean([_inside(s["box"], {"x": 0.5, "y": 0.5}) for s in scenes])
  area = np.mean([(s["box"][2] - s["box"][0]) * (s["box"][3] - s["box"][1]) for s in scenes])
  print(f"peak in the sounding box {sounding:.3f}, in a distractor's {distractor:.3f}; centre prior {centre:.3f}, "
        f"uniform random {area:.3f}")
  # Measured: 0.396 in the sounding box, 0.06-0.08 in a distractor's (centre prior 0, uniform peak 0.120).
  assert centre == 0.0 and sounding >= 0.25 and sounding >= 2 * area and sounding >= 2 * distractor
  frames, samples = _decoded_frames(str(out / "overlay.mp4"))
  assert frames == 480 and abs(samples - 48 * 16000) <= 2048


@pytest.mark.slow
def test_tvsl_maps_named_and_zero_shot_classes(tmp_path, golden_dir):
  """T-VSL (tiny towers): a name of the bank and a new one, encoded by the model's text tower on loading."""
  arg = (f"runlocal,data_dir={tmp_path / 'tfds'},"
         f"bpe_path={golden_dir / 'audioclip' / 'bpe_simple_vocab_16e6.txt.gz'}")
  config = config_lib.load_config(str(REPO / "configs" / "tvsl_music_solo.py"), arg)
  setup = train.build(config, sharding.create_mesh(config.mesh))
  manager = checkpointing.create_manager(str(tmp_path / "wd"))
  checkpointing.save(manager, 1, setup.init_fn(jax.random.PRNGKey(0)), None, force=True)
  manager.wait_until_finished()
  clip = str(tmp_path / "clip.mp4")
  localize_synthetic.render_synthetic(clip, num_scenes=2, size=64)
  summary = localize_lib.localize(config, video=clip, workdir=str(tmp_path / "wd"), write_video=False,
                                  classes=["violin", "red solid circle"])
  assert summary["model"]["kind"] == "tvsl" and summary["model"]["classes"][-1] == "violin"
  assert len(summary["model"]["classes"]) == 9  # the 8 synthetic_av classes, then the zero-shot one
  for window in summary["windows"]:
    assert sorted(window["predicted"]) == ["red solid circle", "violin"]
    assert set(window["class_scores"]) == set(summary["model"]["classes"])
