"""`DataConfig`: the parts of `config.dataset` the host-side transforms read, as a picklable frozen dataclass.

Every field's default and meaning is written once, in `config_lib.base_config` (config.dataset); `from_config`
reads them from there. Sizes are in pixels (S = image_size) and samples (N = num_samples).
"""
import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The parts of `config.dataset` the host-side transforms need (picklable for worker processes).

  `eval_mix_partner_audio` (sum a duet partner's audio into `waveform`), `per_source_frames` (emit
  `source_image`) and `gt_masks` (emit `gt_mask`; set from the dataset's features, not the config) are eval
  switches of the real datasets.
  """
  num_classes: int
  image_size: int
  resize_size: int
  sample_rate: int
  num_samples: int
  max_sources: int
  max_boxes: int
  eval_mix_partner_audio: bool
  per_source_frames: bool
  image_norm: str
  canvas: bool
  eval_resize: str
  normalize_on_device: bool
  gt_masks: bool = False

  @classmethod
  def from_config(cls, ds: ml_collections.ConfigDict) -> "DataConfig":
    return cls(num_classes=ds.num_classes, image_size=ds.image_size, resize_size=ds.resize_size,
               sample_rate=ds.sample_rate, num_samples=int(round(ds.audio_seconds * ds.sample_rate)),
               max_sources=ds.max_sources, max_boxes=ds.max_boxes,
               eval_mix_partner_audio=bool(ds.eval_mix_partner_audio),
               per_source_frames=bool(ds.per_source_frames), image_norm=ds.image_norm, canvas=bool(ds.canvas),
               eval_resize=ds.eval_resize, normalize_on_device=bool(ds.normalize_on_device))
