"""The one feature schema shared by every avl_jax dataset builder (synthetic and real).

Every builder (synthetic_av, music, vggsound, vgginstruments) stores examples with these shared features, so
the grain pipelines, the evaluation and the metrics never special-case a dataset; the real datasets add the
extras of `make_real_features` (list below), which the pipelines use when present.

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
MUSIC's xywh, when writing, and clip them to [0, 1]).

The real datasets (music, vggsound, vgginstruments; `make_real_features`) add, after the shared features:

- `boxes_raw` Tensor [NB, 4] float64: the official box values as in the metadata (MUSIC: xywh; VGG-SS: xyxy,
  unclipped), rows as in `boxes`; the `official` metric protocol rasterises these.
- `box_format_raw` Text: 'xyxy', 'xywh', or '' when the GT are masks.
- `partner_id` Text: duet test: the fixed partner's id (source 1), else ''.
- `partner_frame` Sequence(Image) [P] JPEG: duet test: the partner's frame (P = 1), else empty (P = 0).
- `partner_waveform` Tensor [N2] int16: duet test: the partner's audio (the model hears waveform +
  partner_waveform), else empty.
- `masks` Sequence(Image [H, W, 1]) PNG: mask GT (VGGSound-Instruments test), one per source, values as stored.
- `resampled_from_hz` Scalar int32: the file's sample rate when the audio was resampled to `sample_rate`, else 0.
- `audio_fill` Text: 'none', or 'tiled' / 'padded' when the clip was shorter than the stored window.
- `preprocessing` Text (JSON): every decision per clip (and partner): source files, frame size before resizing
  and frame time, audio rate, window offset, fill, clipped samples, whether boxes were clipped.

Frames of real datasets are stored at a fixed short side (default 256, aspect kept) so training can crop.
"""
import numpy as np
import tensorflow_datasets as tfds

FEATURE_NAMES = ("id", "frame", "waveform", "sample_rate", "label", "num_sources", "source_class",
                 "boxes", "box_source")
REAL_FEATURE_NAMES = FEATURE_NAMES + ("boxes_raw", "box_format_raw", "partner_id", "partner_frame",
                                      "partner_waveform", "masks", "resampled_from_hz", "audio_fill",
                                      "preprocessing")


def make_features(num_classes: int) -> tfds.features.FeaturesDict:
  """Returns the shared FeaturesDict for a dataset with `num_classes` classes."""
  return tfds.features.FeaturesDict(_shared_features(num_classes))


def _shared_features(num_classes: int) -> dict[str, tfds.features.FeatureConnector]:
  return {
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
  }


def make_real_features(num_classes: int) -> tfds.features.FeaturesDict:
  """The shared features plus the real datasets' extras (table in the module docstring)."""
  features = _shared_features(num_classes)
  features.update({
      # Bytes: TFDS would store float64 in a float32 list; the official protocol needs the published values.
      "boxes_raw": tfds.features.Tensor(shape=(None, 4), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
      "box_format_raw": tfds.features.Text(),
      "partner_id": tfds.features.Text(),
      "partner_frame": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
      "partner_waveform": tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                               encoding=tfds.features.Encoding.BYTES),
      "masks": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png")),
      "resampled_from_hz": tfds.features.Scalar(dtype=np.int32),
      "audio_fill": tfds.features.Text(),
      "preprocessing": tfds.features.Text(),
  })
  return tfds.features.FeaturesDict(features)
