"""Per-frame image ops of the pipelines: JPEG decode, normalisation (host table and jitted), the eval resize.

Images are [H, W, 3] RGB (channels last; batches [B, H, W, 3]), uint8 as decoded or float32 normalised per
channel with `IMAGE_NORMS` ((v / 255 - mean) / std, v in 0..255). S = config.dataset.image_size.
"""
import functools
import io
from typing import Any

import numpy as np
from PIL import Image

from avl_jax import resampling
from avl_jax.pipeline import data_source
from avl_jax.pipeline import data_config

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# CLIP's normalisation (the models on CLIP-trained encoders, docs/tvsl.md §7).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE_NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
EVAL_RESIZES = ("pil", "torch_tensor")


def decode_frame(record: dict[str, Any]) -> Image.Image:
  """The record's JPEG `frame` as a PIL RGB image; DataError (naming the example) when it cannot be decoded."""
  try:
    return Image.open(io.BytesIO(record["frame"])).convert("RGB")
  except Exception as e:
    raise data_source.DataError(f"Example {data_source.example_id(record)}: cannot decode its JPEG frame "
                                f"({e}).") from e


@functools.lru_cache(maxsize=4)
def _normalization_table(norm: str = "imagenet") -> np.ndarray:
  """[256 * 3] float32: entry 3v + c = (v / 255 - mean[c]) / std[c], computed with the same float32 ops."""
  if norm not in IMAGE_NORMS:
    raise ValueError(f"config.dataset.image_norm={norm!r}; expected one of {sorted(IMAGE_NORMS)}.")
  mean, std = IMAGE_NORMS[norm]
  values = np.arange(256, dtype=np.float32)[:, None]
  return ((values / 255.0 - mean) / std).astype(np.float32).reshape(-1)


@functools.lru_cache(maxsize=8)
def _channel_pattern(size: int) -> np.ndarray:
  """[size] uint16: 0, 1, 2, 0, 1, 2, ... (the channel of each value of a flattened [H, W, 3] image)."""
  return np.resize(np.arange(3, dtype=np.uint16), size)


def normalize_image(image: Image.Image, norm: str = "imagenet") -> np.ndarray:
  """PIL RGB -> [H, W, 3] float32, normalised with the ImageNet (default) or CLIP mean and std.

  A lookup in a table of the 256 x 3 possible values: bit-identical to the arithmetic and ~5x faster
  (broadcasting over a trailing axis of 3 is slow in NumPy).
  """
  pixels = np.asarray(image, np.uint8)
  index = pixels.reshape(-1) * np.uint16(3)
  index += _channel_pattern(index.size)
  return _normalization_table(norm).take(index).reshape(pixels.shape)


def eval_image(image: Image.Image, cfg: data_config.DataConfig) -> tuple[np.ndarray, Image.Image]:
  """The eval frame: (normalised [S, S, 3] float32, the PIL frame at S x S for display and uint8 output).

  eval_resize 'pil' (docs/avgn.md §11): PIL bicubic resize (antialiased when shrinking), then normalise.
  'torch_tensor' (docs/tvsl.md §7): the frame as a float tensor in [0, 1], resized by
  PyTorch's tensor bicubic (A = -0.75, no antialias, values not clamped), then normalised.
  """
  size = (cfg.image_size, cfg.image_size)
  resized = image.resize(size, Image.BICUBIC)
  if cfg.eval_resize == "pil":
    return normalize_image(resized, cfg.image_norm), resized
  if cfg.eval_resize != "torch_tensor":
    raise ValueError(f"config.dataset.eval_resize={cfg.eval_resize!r}; expected one of {EVAL_RESIZES}.")
  pixels = np.asarray(image, np.float32).transpose(2, 0, 1) / np.float32(255.0)  # [3, H, W]
  tensor = resampling.upsample_bicubic(pixels, size).transpose(1, 2, 0)
  mean, std = IMAGE_NORMS[cfg.image_norm]
  return ((tensor - mean) / std).astype(np.float32), resized


def device_normalize_image(images, norm: str = "imagenet"):
  """uint8 [..., H, W, 3] -> float32 normalised, in jnp (called inside the jitted train step): the float32 ops of
  `normalize_image`, (v / 255 - mean) / std, so both paths agree (tests/input_pipeline_test.py). Float inputs
  are taken as already normalised (dataset.normalize_on_device=False) and returned unchanged."""
  import jax.numpy as jnp  # the host-side module does not otherwise need JAX
  if images.dtype != jnp.uint8:
    return images
  if norm not in IMAGE_NORMS:
    raise ValueError(f"config.dataset.image_norm={norm!r}; expected one of {sorted(IMAGE_NORMS)}.")
  mean, std = (jnp.asarray(v) for v in IMAGE_NORMS[norm])
  return (images.astype(jnp.float32) / jnp.float32(255.0) - mean) / std


def denormalize_image(image: np.ndarray, norm: str = "imagenet") -> np.ndarray:
  """Inverse of `normalize_image` on [..., H, W, 3] float32 -> uint8 (exact: the 256 levels stay distinct)."""
  mean, std = IMAGE_NORMS[norm]
  return np.clip(np.rint((np.asarray(image, np.float32) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def train_pixels(image: Image.Image, cfg: data_config.DataConfig) -> np.ndarray:
  """A training frame as it leaves the host: uint8 (normalised in the step) or normalised float32."""
  if cfg.normalize_on_device:
    return np.asarray(image, np.uint8)
  return normalize_image(image, cfg.image_norm)
