"""T-VSL's evaluation post-processing (docs/tvsl.md §8, docs/metrics.md §1.2), shared by the model, eval and tests.

Axis letters: B batch, K sources, h/w raw map (7x14), H/W canvas (224x448).

raw map h_k -> PyTorch bicubic (A = -0.75, align_corners=False) to the canvas -> per-map min-max over the
canvas -> inversion s = (max - x) / (max - min) (official) -> binarised at 0.3. The per-map L2 norm of h_k and
the min-max are positive affine maps and change no metric; the inversion does.
"""
from typing import Any

import numpy as np

from avl_jax.metrics import postprocess as metrics_postprocess

THRESHOLD = metrics_postprocess.TVSL_THRESHOLD  # --ciou_thr / --iou_thr 0.3 of the official scripts.


def postprocess_maps(raw_maps: Any, *, invert: bool = True, out_hw: tuple[int, int] | None = None,
                     threshold: float = THRESHOLD) -> dict[str, np.ndarray]:
  """The official `validate_multi` post-processing of T-VSL maps, float32 NumPy.

  Args:
    raw_maps: [..., h, w] raw maps (e.g. `TVSL.localize` output [B, K, h, w]).
    invert: the official inversion (`invert_map`); False scores with the min-max map itself.
    out_hw: canvas size (default 32x the raw size: 224x448 for 7x14).
    threshold: binarisation threshold of the score.

  Returns:
    'upsampled', 'pred' (min-max, NaN for a constant map as officially), 'score' (the inverted pred, or pred
    when not inverting) [..., H, W] float32 and 'infer' = score >= threshold [..., H, W] bool.
  """
  raw_maps = np.asarray(raw_maps, np.float32)
  lead, hw = raw_maps.shape[:-2], raw_maps.shape[-2:]
  result = metrics_postprocess.tvsl_official(raw_maps.reshape((-1,) + hw), out_hw, threshold)
  if not invert:
    result['score'] = result['pred']
    result['infer'] = result['pred'] >= np.float32(threshold)
  return {key: value.reshape(lead + value.shape[-2:]) for key, value in result.items()}
