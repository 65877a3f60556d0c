"""Sound-source localization metrics in vectorised NumPy (docs/metrics.md).

Modules:
  postprocess  PyTorch-exact bicubic upsampling (NumPy and JAX) and the official map post-processing of
               AVGN (`avgn_official`) and T-VSL (`tvsl_official`).
  gt_maps      GT maps from boxes (every official format, `official` and `standard` protocols) and masks.
  ranking      sort-based per-row average precision (sklearn semantics, ties grouped).
  aggregates   dataset-level metrics of the official evaluators (precision_at_*, calc_ap, AUC, F1,
               finalize_stats).
  localization per-map values and summaries; `score_maps` is the entry point of the eval binary.
  predictions  the `.npz` schema of saved maps from any method (`--predictions`): save, validate, load.
"""
