"""The one feature schema shared by every avl_jax dataset builder (synthetic and real).

Every builder (synthetic_av, music, vggsound, vgginstruments) stores examples with exactly these features, so
the grain pipelines, the evaluation and the metrics never special-case a dataset.

| feature        | type / shape                 | meaning |
|----------------|------------------------------|---------|
| `id`           | Text                         | example id (clip or frame id of the official lists) |
| `frame`        | Image [H, W, 3] uint8, JPEG  | the video frame the sources are localized in |
| `waveform`     | Tensor [N] int16             | mono audio of the clip (all sounding sources mixed), full scale 32767 |
| `sample_rate`  | Scalar int32                 | sample rate of `waveform` in Hz |
| `label`        | Tensor [K] float32           | scene-level multi-hot over the K classes of the builder config |
| `num_sources`  | Scalar int32                 | S, the number of annotated sounding sources |
| `source_class` | Tensor [S] int32             | class id of each sounding source (source order = annotation order) |
| `boxes`        | Tensor [NB, 4] float32       | every GT box, normalised xyxy in [0, 1] (a source may have several) |
| `box_source`   | Tensor [NB] int32            | index in [0, S) of the source each box belongs to |

Conventions: boxes are always stored as normalised [x1, y1, x2, y2] (builders convert other formats, e.g.
MUSIC's xywh, when writing); the raw official box values and masks of real datasets are extra, builder-specific
features documented in that builder.
"""
import numpy as np
import tensorflow_datasets as tfds

FEATURE_NAMES = ("id", "frame", "waveform", "sample_rate", "label", "num_sources", "source_class",
                 "boxes", "box_source")


def make_features(num_classes: int) -> tfds.features.FeaturesDict:
  """Returns the shared FeaturesDict for a dataset with `num_classes` classes."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "frame": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      # Stored as raw bytes: 3x faster to write and smaller than TFDS's default per-element int64 list.
      "waveform": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
      "sample_rate": tfds.features.Scalar(dtype=np.int32),
      "label": tfds.features.Tensor(shape=(num_classes,), dtype=np.float32),
      "num_sources": tfds.features.Scalar(dtype=np.int32),
      "source_class": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "box_source": tfds.features.Tensor(shape=(None,), dtype=np.int32),
  })
