"""Heat-map PNG grids: frame with GT boxes, then per source the heat map overlay, its GT box and the binarised
region outline. PIL + NumPy only."""
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

SOURCE_COLOURS = ((0, 255, 0), (255, 0, 255), (0, 200, 255), (255, 200, 0))


def colormap(values: np.ndarray) -> np.ndarray:
  """[...] in [0, 1] -> [..., 3] uint8 (a jet-like blue-cyan-yellow-red ramp)."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  anchors = np.array([0.0, 0.35, 0.65, 1.0])
  colours = np.array([[0, 0, 160], [0, 220, 255], [255, 230, 0], [220, 0, 0]], np.float64)
  rgb = np.stack([np.interp(v[..., 0], anchors, colours[:, c]) for c in range(3)], axis=-1)
  return rgb.astype(np.uint8)


def _draw_box(draw: ImageDraw.ImageDraw, box: np.ndarray, size: tuple[int, int], colour, width: int = 2) -> None:
  height, width_px = size
  x1, x2 = (float(np.clip(v, 0, 1)) * (width_px - 1) for v in box[0::2])
  y1, y2 = (float(np.clip(v, 0, 1)) * (height - 1) for v in box[1::2])
  draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)


def _outline(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels of a binary mask."""
  interior = mask.copy()
  interior[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:])
  return mask & ~interior


def heatmap_grid(frames: np.ndarray, heatmaps: np.ndarray, binarised: np.ndarray, boxes: np.ndarray,
                 box_source: np.ndarray, source_class: np.ndarray, path: str,
                 class_names: Sequence[str] | None = None, size: int | tuple[int, int] = 224,
                 every_box_on_every_panel: bool = False) -> None:
  """Writes a PNG grid, one row per example, one column per source slot that some example uses.

  Args:
    frames: [N, H, W, 3] uint8.
    heatmaps: [N, S, H, W] in [0, 1] (normalised predictions), (H, W) = size (an int: square).
    binarised: [N, S, size, size] bool (the evaluated binarised region).
    boxes: [N, NB, 4] normalised xyxy, padded with -1; box_source: [N, NB] source index (-1 padding).
    source_class: [N, S] class id per source (-1 = no source).
    class_names: labels indexed by class id (default 'class {c}').
    every_box_on_every_panel: draw all GT boxes on every panel (predicted classes: panel s is the s-th
      predicted class, not GT source s), in their source's colour.
  """
  n = heatmaps.shape[0]
  used = np.flatnonzero((source_class >= 0).any(axis=0))
  num_sources = int(used.max()) + 1 if len(used) else 0  # no empty column for slots no example uses
  size = (size, size) if isinstance(size, int) else tuple(size)
  tile_h, tile_w = size[0] + 4, size[1] + 4
  canvas = Image.new("RGB", (tile_w * (1 + num_sources), tile_h * n), (255, 255, 255))
  for i in range(n):
    frame = Image.fromarray(frames[i]).resize((size[1], size[0]), Image.BICUBIC)
    base = frame.copy()
    draw = ImageDraw.Draw(base)
    for box, src in zip(boxes[i], box_source[i]):
      if src >= 0:
        _draw_box(draw, box, size, SOURCE_COLOURS[src % len(SOURCE_COLOURS)])
    canvas.paste(base, (0, i * tile_h))
    for s in range(num_sources):
      if source_class[i, s] < 0:
        continue
      overlay = (0.45 * np.asarray(frame, np.float32) + 0.55 * colormap(heatmaps[i, s])).astype(np.uint8)
      overlay[_outline(binarised[i, s].astype(bool))] = (255, 255, 255)
      panel = Image.fromarray(overlay)
      draw = ImageDraw.Draw(panel)
      colour = SOURCE_COLOURS[s % len(SOURCE_COLOURS)]
      for box, src in zip(boxes[i], box_source[i]):
        if src == s or (every_box_on_every_panel and src >= 0):
          _draw_box(draw, box, size, SOURCE_COLOURS[src % len(SOURCE_COLOURS)])
      cls = int(source_class[i, s])
      draw.text((4, 4), class_names[cls] if class_names else f"class {cls}", fill=colour)
      canvas.paste(panel, ((1 + s) * tile_w, i * tile_h))
  canvas.save(path)
