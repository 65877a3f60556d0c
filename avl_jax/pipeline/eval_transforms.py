"""Eval transforms: the deterministic per-example decode (a grain map over indices), its features and `EvalData`.

Per-example outputs (S = max_sources, NB = max_boxes, S' = image_size, N = num_samples): image [S', S', 3]
float32 normalised and image_uint8, waveform [N] float32, source_class [S] int32 (padded with PAD_CLASS), boxes
[NB, 4] float32 normalised xyxy and box_source [NB] int32 (padded with -1), id [64] uint8, mask (0: a padding
element). Real datasets add source_image [S, S', S', 3], boxes_raw [NB, 4] float64, partner_id [64] uint8 and,
with mask GT, gt_mask [S, 224, 224] + has_gt_mask [S].
"""
import dataclasses
from typing import Any

import grain
import numpy as np
from PIL import Image

from avl_jax import resampling
from avl_jax.pipeline import audio_ops
from avl_jax.pipeline import data_config
from avl_jax.pipeline import data_source
from avl_jax.pipeline import image_ops

PAD_CLASS = -1


class EvalDecode(grain.transforms.Map):
  """Deterministic eval decode: resize to a square (docs/avgn.md §11), window the audio, pad the sources.

  Outputs per example: image [S', S', 3] (the own frame) and image_uint8, waveform [N], source_class [S],
  boxes [NB, 4], box_source [NB], id [64], mask; with a real dataset also source_image [S, S', S', 3] (with
  per_source_frames), boxes_raw [NB, 4] float64 and, with mask GT, gt_mask [S, 224, 224] + has_gt_mask [S]
  (S = max_sources, NB = max_boxes, S' = image_size).
  """

  def __init__(self, cfg: data_config.DataConfig, source, num_local: int, real: bool = False):
    self.cfg = cfg
    self.source = source
    self.num_local = num_local
    self.real = real

  def map(self, index):
    cfg = self.cfg
    index = int(index)
    valid = index < self.num_local
    # Padding elements repeat record 0 and carry mask 0: shapes stay static and nothing is counted twice.
    record = self.source[index if valid else 0]
    normalized, image = image_ops.eval_image(image_ops.decode_frame(record), cfg)
    classes = np.asarray(record["source_class"], np.int32)
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    box_source = np.asarray(record["box_source"], np.int32)
    name = data_source.example_id(record)
    if classes.size > cfg.max_sources or boxes.shape[0] > cfg.max_boxes:
      raise data_source.DataError(f"Example {name}: {classes.size} sources / {boxes.shape[0]} boxes exceed "
                                  f"max_sources={cfg.max_sources} / max_boxes={cfg.max_boxes}.")
    if box_source.shape != (boxes.shape[0],) or np.any(box_source >= classes.size) or np.any(box_source < 0):
      raise data_source.DataError(f"Example {name}: box_source {box_source.tolist()} does not index its "
                                  f"{classes.size} sources.")
    source_class = np.full((cfg.max_sources,), PAD_CLASS, np.int32)
    source_class[:classes.size] = classes
    padded_boxes = np.full((cfg.max_boxes, 4), -1.0, np.float32)
    padded_boxes[:boxes.shape[0]] = boxes
    padded_box_source = np.full((cfg.max_boxes,), -1, np.int32)
    padded_box_source[:boxes.shape[0]] = box_source
    out = {
        "image": normalized,
        "image_uint8": np.asarray(image, np.uint8),
        "waveform": eval_waveform(record, cfg),
        "source_class": source_class,
        "boxes": padded_boxes,
        "box_source": padded_box_source,
        "id": data_source.encode_id(name.encode()),
        "mask": np.float32(valid),
    }
    if self.real:
      out.update(_real_eval_features(record, normalized, classes.size, cfg))
    return out


def eval_waveform(record: dict[str, Any], cfg: data_config.DataConfig) -> np.ndarray:
  """The audio the model hears at test time [N] float32: own window + the duet partner's (raw sum, no
  rescaling, as the official mixtures), or the own window only without partner / with the official
  VGGSound-Instruments-multi behaviour (eval_mix_partner_audio=False)."""
  waveform = audio_ops.audio_window(record, cfg.sample_rate, cfg.num_samples).astype(np.float32) / 32767.0
  partner = np.asarray(record.get("partner_waveform", np.zeros((0,), np.int16)))
  if partner.size and cfg.eval_mix_partner_audio:
    partner_record = {"id": record.get("id"), "sample_rate": record["sample_rate"], "waveform": partner}
    partner_window = audio_ops.audio_window(partner_record, cfg.sample_rate, cfg.num_samples)
    waveform = waveform + partner_window.astype(np.float32) / 32767.0
  return waveform


def _real_eval_features(record: dict[str, Any], normalized: np.ndarray, num_sources: int,
                        cfg: data_config.DataConfig) -> dict[str, np.ndarray]:
  """source_image, boxes_raw and (mask GT) gt_mask / has_gt_mask of a real-dataset record."""
  out = {}
  raw_boxes = np.asarray(record["boxes_raw"], np.float64).reshape(-1, 4)
  padded_raw = np.full((cfg.max_boxes, 4), -1.0, np.float64)
  padded_raw[:raw_boxes.shape[0]] = raw_boxes
  out["boxes_raw"] = padded_raw
  # The fixed duet partner's id ('' if none), for official_duet_gt_bug.
  raw_partner = record.get("partner_id", b"")
  out["partner_id"] = data_source.encode_id(raw_partner if isinstance(raw_partner, bytes)
                                            else str(raw_partner).encode())
  if cfg.per_source_frames:
    # Source 0 is the own frame; source 1 the partner's frame when the example stores one (fixed duet pairs),
    # else the same frame (MUSIC's natural duets: "same frame twice", docs/datasets.md §6). Padding: own frame.
    frames = [normalized] * cfg.max_sources
    for s, partner_frame in enumerate(record.get("partner_frame", [])[:cfg.max_sources - 1]):
      partner_image = Image.fromarray(np.asarray(partner_frame, np.uint8)).convert("RGB")
      frames[s + 1] = image_ops.eval_image(partner_image, cfg)[0]
    out["source_image"] = np.stack(frames)
  if cfg.gt_masks:
    masks = list(record.get("masks", []))
    gt = np.zeros((cfg.max_sources, resampling.GT_SIZE, resampling.GT_SIZE), np.float32)
    has = np.zeros((cfg.max_sources,), np.float32)
    for s, mask in enumerate(masks[:min(num_sources, cfg.max_sources)]):
      # OpenCV INTER_NEAREST to 224 x 224, values as stored (docs/metrics.md §2); binarising is the metric's job.
      gt[s] = resampling.resize_mask_nearest(np.asarray(mask)[..., 0]).astype(np.float32)
      has[s] = 1.0
    out["gt_mask"], out["has_gt_mask"] = gt, has
  return out


@dataclasses.dataclass
class EvalData:
  """The eval batches of one split on this host (`input_pipeline.create_eval_dataset`) and what they hold."""
  dataset: grain.MapDataset
  num_examples: int   # examples in the whole split (all hosts)
  num_batches: int    # batches per host (equal on every host)
  # Official GT format of a real dataset (avl_jax.metrics.gt_maps.FORMATS, e.g. 'music_solo'), '' otherwise.
  gt_format: str = ""
  # The examples store the duet partner's own frame (vggsound/duet, vgginstruments/multi): `source_image[:, 1]`
  # is a different picture (a family may score on the [own | partner] canvas).
  partner_frames: bool = False
