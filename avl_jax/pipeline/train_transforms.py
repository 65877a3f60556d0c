"""Training transforms (grain random maps): decode + augment one example, then mix it with a partner's audio.

Per-example outputs: image [S, S, 3] uint8 (normalised float32 with dataset.normalize_on_device=False; [S, 2S, 3]
with dataset.canvas), waveform [N] float32 (int16 / 32767; a sum of two windows after mixing, so in [-2, 2]),
visual_class int32, audio_label [K] float32 (one- or two-hot), source_class [1] int32 ([2]: own, partner).
S = image_size, N = num_samples, K = num_classes. Randomness comes only from the `rng` grain passes each
element (keyed on its global index): the same element always gets the same crop, flip and partner.
"""
import grain
import numpy as np
from PIL import Image

from avl_jax.pipeline import audio_ops
from avl_jax.pipeline import data_config
from avl_jax.pipeline import data_source
from avl_jax.pipeline import image_ops


def _one_hot(index: int, num_classes: int) -> np.ndarray:
  """[num_classes] float32, 1 at `index`."""
  out = np.zeros((num_classes,), np.float32)
  out[index] = 1.0
  return out


class TrainDecode(grain.transforms.RandomMap):
  """Decode + augment (docs/avgn.md §11): resize the short side, random crop, random horizontal flip."""

  def __init__(self, cfg: data_config.DataConfig):
    self.cfg = cfg

  def random_map(self, record, rng: np.random.Generator):
    cfg = self.cfg
    own_class = data_source.primary_class(record, cfg.num_classes)
    return {
        "image": image_ops.train_pixels(augment_frame(image_ops.decode_frame(record), cfg, rng), cfg),
        "waveform": audio_ops.audio_window(record, cfg.sample_rate, cfg.num_samples).astype(np.float32) / 32767.0,
        "visual_class": np.int32(own_class),
        "audio_label": _one_hot(own_class, cfg.num_classes),
        "source_class": np.array([own_class], np.int32),
    }


def augment_frame(image: Image.Image, cfg: data_config.DataConfig, rng: np.random.Generator) -> Image.Image:
  """Short side to resize_size (bicubic), random image_size crop, horizontal flip with probability 0.5."""
  scale = cfg.resize_size / min(image.size)
  size = (max(cfg.image_size, round(image.size[0] * scale)), max(cfg.image_size, round(image.size[1] * scale)))
  left = int(rng.integers(0, size[0] - cfg.image_size + 1))
  top = int(rng.integers(0, size[1] - cfg.image_size + 1))
  # Resize-then-crop in one step: PIL resamples only the crop's box, with the filter taps of the whole-image
  # resize to `size` (equal up to float rounding: +-1 in ~0.1 % of values; 1.7x faster).
  if size == image.size:  # frames stored at the resize size: the resize is the identity, as in PIL
    image = image.crop((left, top, left + cfg.image_size, top + cfg.image_size))
  else:
    sx, sy = image.size[0] / size[0], image.size[1] / size[1]
    box = (left * sx, top * sy, (left + cfg.image_size) * sx, (top + cfg.image_size) * sy)
    image = image.resize((cfg.image_size, cfg.image_size), Image.BICUBIC, box=box)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return image


class MixWithPartner(grain.transforms.RandomMap):
  """Training-time mixing (docs/avgn.md §12): add the waveform of a random partner of a different class.

  The partner is uniform over all training examples whose primary class differs (O(1) per draw from a
  class-sorted index); the image stays the element's own frame; audio_label becomes own + partner and
  source_class [own, partner]. With `canvas` the image becomes [own | partner] [S, 2S, 3], the
  partner's frame augmented independently.
  """

  def __init__(self, source, primary_classes: np.ndarray, cfg: data_config.DataConfig):
    self.source = source
    self.cfg = cfg
    self.order = np.argsort(primary_classes, kind="stable")
    counts = np.bincount(primary_classes, minlength=cfg.num_classes)
    self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.class_count = counts
    if np.count_nonzero(counts) < 2:
      raise data_source.DataError("Training-time mixing needs at least two classes in the training split; "
                                  f"found class counts {counts.tolist()}.")

  def random_map(self, element, rng: np.random.Generator):
    own = int(element["visual_class"])
    start, count = self.class_start[own], self.class_count[own]
    r = int(rng.integers(0, len(self.order) - count))
    if r >= start:
      r += count  # Skip the own-class block of the class-sorted index.
    record = self.source[int(self.order[r])]
    partner = audio_ops.audio_window(record, self.cfg.sample_rate, self.cfg.num_samples).astype(np.float32) / 32767.0
    partner_class = data_source.primary_class(record, self.cfg.num_classes)
    out = dict(element)
    out["waveform"] = element["waveform"] + partner  # Raw sum, no rescaling (official behaviour).
    out["audio_label"] = element["audio_label"] + _one_hot(partner_class, self.cfg.num_classes)
    out["source_class"] = np.array([own, partner_class], np.int32)
    if self.cfg.canvas:  # [own | partner] on the width, each frame augmented on its own (docs/tvsl.md §7).
      partner_image = augment_frame(image_ops.decode_frame(record), self.cfg, rng)
      out["image"] = np.concatenate([element["image"], image_ops.train_pixels(partner_image, self.cfg)], axis=1)
    return out
