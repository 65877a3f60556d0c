r"""Localizes the sounding objects of your own clip with a trained model (docs/localize.md).

A video with its sound, or an image plus a sound file, and a training workdir (latest checkpoint, or --step) or
converted weights:
  python -m avl_jax.localize --config=configs/synthetic_av.py --workdir=workdirs/demo_avgn --video=clip.mp4
  python -m avl_jax.localize --config=configs/synthetic_av.py --workdir=workdirs/demo_avgn \
      --image=frame.jpg --audio=sound.wav
  python -m avl_jax.localize --config=configs/avgn_vggsound_duet.py --weights=weights/avgn_official \
      --video=clip.mp4 --output_dir=out/clip
A synthetic test clip (synthetic_av scenes with their sound, and the sounding objects' boxes in
clip.truth.json), no model needed:
  python -m avl_jax.localize --render_synthetic=clip.mp4

Writes to --output_dir (default WORKDIR/localize/{input stem}): `localize.json` (per window: times, class
scores, predicted classes, each mapped class's peak), `windows/w{index}_t{start}s_{class}.png` (one heat-map
overlay per window and mapped class) and `overlay.mp4` (every frame under its window's top-class map, with the
clip's audio).

Exit codes: 0 success; 1 bad flags; 2 a bad input (a file without a video or audio stream, an unreadable file,
a clip shorter than the model's window, a missing workdir, checkpoint or weights, an unknown class name).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from avl_jax import cli  # noqa: E402
from avl_jax import localize_lib  # noqa: E402
from avl_jax import localize_synthetic  # noqa: E402
from avl_jax import logs  # noqa: E402
from avl_jax import resolve  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The model's experiment config, e.g. configs/synthetic_av.py (its dataset fixes the window, "
    "sample rate, frame size and class names).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir whose checkpoint is used (default: the latest).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Converted-weights directory (python -m avl_jax.convert) instead "
                               "of a workdir checkpoint.")
_VIDEO = flags.DEFINE_string("video", None, "The clip: a video with an audio track (mp4, or anything FFmpeg "
                             "decodes).")
_IMAGE = flags.DEFINE_string("image", None, "A still image (JPEG, PNG) to localize in, with --audio.")
_AUDIO = flags.DEFINE_string("audio", None, "With --image: the sound (wav, or any audio file FFmpeg decodes).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory (default: WORKDIR/localize/{input stem}).")
_STRIDE = flags.DEFINE_float("stride_seconds", None, "Seconds between window starts (default: half the model's "
                             "window, config.dataset.audio_seconds).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Classes mapped per window (default: config.model.top_k, else "
                              f"{localize_lib.DEFAULT_TOP_K}).")
_THRESHOLD = flags.DEFINE_float("score_threshold", None, "Drop the 2nd..K-th class of a window when its score is "
                                "below this (default: config.model.score_threshold, else keep all K).")
_CLASSES = flags.DEFINE_list("classes", None, "Map these classes in every window instead of the predicted ones "
                             "(names of the model's vocabulary; text-conditioned models take any text: new names "
                             "become zero-shot classes of their text bank).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Windows per model call.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Log progress every this many windows.")
_WRITE_VIDEO = flags.DEFINE_boolean("write_video", True, "Also write overlay.mp4.")
_RENDER = flags.DEFINE_string("render_synthetic", None, "Render a synthetic test clip (synthetic_av scenes with "
                              "their sound) to this mp4, its truth to {stem}.truth.json, and exit.")
_RENDER_SCENES = flags.DEFINE_integer("render_scenes", 8, "With --render_synthetic: number of 1-window scenes.")
_RENDER_SEED = flags.DEFINE_integer("render_seed", 0, "With --render_synthetic: the scenes' seed.")


def _check_flags() -> None:
  """Flag combinations; raises app.UsageError (exit 1) on a conflict."""
  if _RENDER.value:
    return
  if _CONFIG.value is None:
    raise app.UsageError("Give --config (the model's experiment config), or --render_synthetic=PATH.")
  if _WEIGHTS.value and _STEP.value is not None:
    raise app.UsageError("--step picks a checkpoint of --workdir; with --weights there is none, drop --step.")
  if not _WEIGHTS.value and not _WORKDIR.value:
    raise app.UsageError("Give --workdir [--step] (a training checkpoint) or --weights=DIR (converted weights; "
                         "--workdir then only places the default --output_dir).")
  if bool(_VIDEO.value) == bool(_IMAGE.value):
    raise app.UsageError("Give either --video=CLIP or --image=FRAME --audio=SOUND.")
  if bool(_IMAGE.value) != bool(_AUDIO.value):
    raise app.UsageError("--image needs --audio (the sound to localize), and --audio needs --image.")


def _render() -> None:
  config = _CONFIG.value
  kwargs = {}
  if config is not None:  # the config's window, rate and classes
    kwargs = dict(scene_seconds=float(config.dataset.audio_seconds), sample_rate=int(config.dataset.sample_rate),
                  num_classes=int(config.dataset.num_classes))
  truth = localize_synthetic.render_synthetic(_RENDER.value, num_scenes=_RENDER_SCENES.value,
                                              seed=_RENDER_SEED.value, **kwargs)
  print(f"Wrote {_RENDER.value} ({len(truth['scenes'])} scenes of {truth['scene_seconds']:g} s) and "
        f"{os.path.splitext(_RENDER.value)[0]}.truth.json; localize it with --video={_RENDER.value} "
        f"--stride_seconds={truth['scene_seconds']:g}.")


def _run() -> None:
  config = resolve.resolve(_CONFIG.value, check_data=False)
  summary = localize_lib.localize(
      config, video=_VIDEO.value, image=_IMAGE.value, audio=_AUDIO.value, workdir=_WORKDIR.value, step=_STEP.value,
      weights=_WEIGHTS.value, output_dir=_OUTPUT_DIR.value, stride_seconds=_STRIDE.value, top_k=_TOP_K.value,
      score_threshold=_THRESHOLD.value, classes=_CLASSES.value or (), batch_size=_BATCH_SIZE.value,
      log_every=_LOG_EVERY.value, write_video=_WRITE_VIDEO.value)
  out, outputs = summary["output_dir"], summary["outputs"]
  files = [os.path.join(out, outputs["json"])] + ([os.path.join(out, outputs["video"])] if outputs["video"] else [])
  message = (f"Wrote {', '.join(files)} and {outputs['pngs']} PNGs in {os.path.join(out, outputs['png_dir'])} "
             f"({summary['num_windows']} windows).")
  logging.info("%s", message)
  print(message)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.setup()
  _check_flags()
  try:
    if _RENDER.value:
      _render()
    else:
      _run()
  except localize_lib.LocalizeError as e:
    cli.fail(e, 2)
  except resolve.ConfigError as e:
    cli.fail(e, 1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
