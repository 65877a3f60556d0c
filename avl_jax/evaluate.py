r"""Evaluation binary: restores a checkpoint of a training workdir and scores the eval splits.

  python -m avl_jax.evaluate --config=configs/avgn_synthetic.py --workdir=/tmp/avgn [--step=N] [--splits=a,b]

Writes `{workdir}/eval/{split}_{step}.json` (every metric for the model and both trivial baselines, the protocol,
the step and the sample counts) and `{split}_{step}.png` (heat maps over the first frames with GT boxes), and
prints a metrics table. Exits non-zero with a clear message when the workdir has no checkpoint.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from avl_jax import checkpointing  # noqa: E402
from avl_jax import eval_lib  # noqa: E402
from avl_jax import sharding  # noqa: E402
from avl_jax import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_SPLITS = flags.DEFINE_list("splits", None, "Eval splits (default: config.dataset.eval_splits).")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate(config, workdir: str, step: int | None = None) -> dict:
  """Restores `step` (or the latest) from `workdir` and evaluates every configured split."""
  manager = checkpointing.create_manager(workdir, create=False)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {os.path.join(workdir, 'checkpoints')}.")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"No checkpoint for step {step} in {workdir}; available steps: {sorted(steps)}.")
  mesh = sharding.create_mesh(config.mesh)
  model, _, _, _, abstract_state = train.build(config, mesh)
  state = checkpointing.restore(manager, step, abstract_state)
  with mesh:
    results = eval_lib.evaluate_all(config, model, state.variables, mesh, workdir, step)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  config = _CONFIG.value
  if _SPLITS.value:
    config.dataset.eval_splits = tuple(_SPLITS.value)
  try:
    results = evaluate(config, _WORKDIR.value, _STEP.value)
  except FileNotFoundError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for split, result in results.items():
    print(f"\n{split} (step {result['step']}, {result['num_examples']} examples, {result['num_items']} sources, "
          f"protocol {result['protocol']}):\n{eval_lib.format_table(result)}")


if __name__ == "__main__":
  app.run(main)
