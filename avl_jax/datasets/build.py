r"""Builds a real dataset (music, vggsound, vgginstruments) from a raw manual dir, locally or on Apache Beam.

  python -m avl_jax.datasets.build --dataset=vggsound/duet --manual_dir=/data/raw/vggsound --data_dir=data/tfds
  python -m avl_jax.datasets.build --dataset=vggsound/duet --manual_dir=... --data_dir=... \
      --beam_runner=DirectRunner --set=frame_short_side=246 --set=max_missing_fraction=0.8
  python -m avl_jax.datasets.build --dataset=vggsound/duet --manual_dir=gs://b/raw --data_dir=gs://b/tfds \
      --beam_options="--runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py"

`launch/prepare_data.sh` wraps this. Locally, decoding uses every core (`--set=num_workers=N` to change); with
`--beam_runner` or `--beam_options`, the same builder runs as an Apache Beam pipeline (needs the `beam` extra).
Config fields (builder_lib.RawConfig) are overridden with `--set=FIELD=VALUE`. Prints the split sizes and the
skip reports when done.
"""
import dataclasses
import os
import shlex
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import avl_jax.datasets  # noqa: E402,F401  (registers the builders)
from avl_jax.datasets import builder_lib  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", None, "name/config, e.g. music/solo, vggsound/duet.", required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The raw files (see the builder's instructions).",
                                  required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's default).")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE overrides of the builder config (builder_lib.RawConfig).")
_BEAM_RUNNER = flags.DEFINE_string("beam_runner", None, "Run on Apache Beam with this runner (e.g. DirectRunner).")
_BEAM_OPTIONS = flags.DEFINE_string("beam_options", None, "Apache Beam pipeline options, as on a command line.")


def parse_overrides(assignments: list[str]) -> dict:
  """['frame_short_side=246', 'splits=train,test'] -> typed {field: value} of builder_lib.RawConfig."""
  fields = {f.name: f for f in dataclasses.fields(builder_lib.RawConfig)}
  result = {}
  for assignment in assignments:
    name, sep, value = assignment.partition("=")
    if not sep or name not in fields:
      raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of "
                       f"{sorted(n for n in fields if n not in ('name', 'version', 'release_notes'))}.")
    default = fields[name].default
    if isinstance(default, tuple):
      result[name] = tuple(v for v in value.split(",") if v)
    elif isinstance(default, bool):
      result[name] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      result[name] = type(default)(value)
    else:
      result[name] = value
  return result


def beam_download_config(manual_dir: str, runner: str | None, options: str | None) -> tfds.download.DownloadConfig:
  """A DownloadConfig for the local path, or for Beam when a runner or options are given."""
  if not runner and not options:
    return tfds.download.DownloadConfig(manual_dir=manual_dir)
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  beam_options = pipeline_options.PipelineOptions(shlex.split(options or ""))
  return tfds.download.DownloadConfig(manual_dir=manual_dir, beam_runner=runner, beam_options=beam_options)


def build(name: str, manual_dir: str, data_dir: str | None, overrides: dict | None = None,
          beam_runner: str | None = None, beam_options: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds `name` into ArrayRecord files; returns the builder (a prepared dataset is left as it is)."""
  builder = tfds.builder(name, data_dir=data_dir, config_overrides=overrides or {})
  builder.download_and_prepare(file_format="array_record",
                               download_config=beam_download_config(manual_dir, beam_runner, beam_options))
  return builder


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  start = time.time()
  builder = build(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, parse_overrides(_SET.value),
                  _BEAM_RUNNER.value, _BEAM_OPTIONS.value)
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"{_DATASET.value} ready in {builder.data_dir} ({time.time() - start:.1f} s): {sizes}")
  for split, summary in sorted(builder.info.metadata.get("skipped", {}).items()):
    print(f"  {split}: {summary['skipped']} of {summary['listed']} listed examples skipped {summary['reasons']}; "
          f"report {os.path.join(builder.data_dir, f'skipped_{split}.csv')}")


if __name__ == "__main__":
  app.run(main)
