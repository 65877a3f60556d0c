"""The T-VSL benchmark runs and reports every row (rates are printed for people, never asserted)."""
import numpy as np
import pytest

from avl_jax.benchmarks import tvsl_benchmark

ROWS = {f"tower_{tower}_{dtype}" for tower in ("image", "audio", "text") for dtype in ("float32", "bfloat16")} | {
    "step_naive_float32", "step_cached_float32", "step_cached_bfloat16"}


@pytest.mark.slow
def test_small_benchmark_reports_every_row():
  lines = []
  result = tvsl_benchmark.run_benchmark("small", batch=1, steps=1, num_classes=4, log=lines.append)
  rows = result["rows"]
  assert set(rows) == ROWS
  for row in rows.values():
    assert np.isfinite(row.examples_per_s) and row.examples_per_s > 0 and row.compile_s > 0, row
  assert rows["tower_text_float32"].batch == 4 and rows["step_cached_float32"].batch == 1
  assert rows["step_cached_float32"].baseline == "step_naive_float32"
  assert rows["tower_audio_bfloat16"].baseline == "tower_audio_float32" and rows["tower_audio_bfloat16"].ratio > 0
  assert result["info"]["trainable_params"] > 0 and result["info"]["frozen_params"] > 0
  table = tvsl_benchmark.format_table(rows)
  assert all(name in table for name in ROWS) and any("text bank" in line for line in lines)
