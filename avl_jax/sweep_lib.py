r"""Sweeps (the library of `python -m avl_jax.sweep`): run every cell of a sweep config (a config file with
`get_sweep`) one after another, then tabulate.

  python -m avl_jax.sweep --config=configs/tvsl_table7.py --args=data_dir=DATA,bpe_path=VOCAB --workdir=W \
      [--init_from=weights/audioclip] [--only=tvsl_vggsound_duet] [--dry_run]

Each cell trains and evaluates in `{workdir}/{name}` exactly as `python -m avl_jax.main` would (a rerun resumes
from its checkpoints; a finished cell is not retrained, only its final evaluation runs again). The table
(`{workdir}/table.md` and stdout) takes every metric named in the config's `TABLE_COLUMNS` (default
TABLE7_COLUMNS) from each cell's final eval JSON.
"""
import os

from absl import logging

from avl_jax import config_lib
from avl_jax import resolve
from avl_jax import train
from avl_jax.evaluation import writers

# (setting, column title, metric key) of the T-VSL supplementary's Table 7.
TABLE7_COLUMNS = (
    ("vggsound_single", "VGGSound-Single AP", "pixel_ap"),
    ("vggsound_single", "VGGSound-Single IoU@0.5", "ciou_frac@0.5"),
    ("vggsound_duet", "VGGSound-Duet CAP", "pixel_ap"),
    ("vggsound_duet", "VGGSound-Duet CIoU@0.3 (mean)", "ciou_mean"),
    ("vggsound_duet", "VGGSound-Duet CIoU@0.3 (frac)", "ciou_frac@0.3"),
)

def load_module(path: str):
  module = config_lib.load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config={path} has no get_sweep(arg): it is not a sweep config.")
  return module


def final_results(workdir: str) -> dict[str, dict]:
  """{split: metrics of 'model'} from the latest eval JSONs of a cell's workdir ({} if none).

  The official (oracle-class) results; predicted-class results of the same split are not mixed in.
  """
  latest = writers.latest_results(os.path.join(workdir, "eval"))
  return {split: result["metrics"]["model"] for (split, source), result in latest.items() if source == "oracle"}


def table(cells: list[tuple[str, str]], results: dict[str, dict[str, dict]], columns) -> str:
  """Markdown table: one row per model, one column per (setting, metric); '-' where a cell has no result."""
  models = []
  for name, _ in cells:
    model = next((name[:-len(s) - 1] for s, _, _ in columns if name.endswith("_" + s)), name)
    if model not in models:
      models.append(model)
  lines = ["| model | " + " | ".join(title for _, title, _ in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for model in models:
    values = []
    for setting, _, key in columns:
      splits = results.get(f"{model}_{setting}", {})
      value = next((m[key] for m in splits.values() if key in m), None)
      values.append("-" if value is None else f"{100 * float(value):.1f}")
    lines.append(f"| {model} | " + " | ".join(values) + " |")
  return "\n".join(lines)


def run(config_path: str, args: str, workdir: str, *, init_from: str | None = None, only=(),
        dry_run: bool = False) -> str:
  """Runs the sweep; returns the table."""
  module = load_module(config_path)
  cells = module.get_sweep(args)
  unknown = set(only) - {name for name, _ in cells}
  if unknown:
    raise ValueError(f"--only names {sorted(unknown)} are not cells of {config_path}: {[n for n, _ in cells]}.")
  configs = {}
  for name, arg in cells:  # every selected cell checked before the first one trains
    if not dry_run and (not only or name in only):
      config = module.get_config(arg)
      if init_from:
        config.init_from = init_from
      try:
        configs[name] = resolve.resolve(config)
      except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"Sweep cell {name} ({config_path}:{arg}): {e}") from e
  results = {}
  for name, arg in cells:
    cell_dir = os.path.join(workdir, name)
    command = f"python -m avl_jax.main --config={config_path}:{arg} --workdir={cell_dir}"
    if init_from:
      command += f" --config.init_from={init_from}"
    if dry_run:
      print(f"{name}: {command}")
      continue
    if name in configs:
      logging.info("Sweep cell %s: %s", name, command)
      train.train_and_evaluate(configs[name], cell_dir)
    results[name] = final_results(cell_dir)
  if dry_run:
    return ""
  text = table(cells, results, getattr(module, "TABLE_COLUMNS", TABLE7_COLUMNS))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text + "\n")
  return text
