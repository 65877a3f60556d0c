r"""Training binary.

  python -m avl_jax.main --config=configs/synthetic_av.py --workdir=workdirs/avgn_synthetic

Flags: --config (a config file, optionally `:arg` string; override any field with --config.FIELD=VALUE; an
unknown field is an error), --distributed (multi-host), --workdir (checkpoints, TensorBoard logs, config.json and
eval results; rerunning with the same workdir resumes from its latest checkpoint). The log shows avl_jax's lines
and other libraries' warnings; --verbosity=1 adds every library's INFO lines (Orbax, TFDS, grain).

Before any work the config is checked (`avl_jax.resolve`): a bad value, a misspelt field, a dataset or split that
is not prepared, or a workdir whose checkpoints come from another config exit 1 with a message naming the field
(no traceback). A latest checkpoint that cannot be restored is reported, moved to WORKDIR/checkpoints_damaged/
and training resumes from the newest one that restores. WORKDIR/config.json is the config of the latest run;
when a rerun changes it, the old one is kept as config-before-{step}.json.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from avl_jax import checkpointing  # noqa: E402
from avl_jax import cli  # noqa: E402
from avl_jax import logs  # noqa: E402
from avl_jax import resolve  # noqa: E402
from avl_jax import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods / GPU clusters).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.setup()
  cli.init_runtime(_CONFIG.value, distributed=_DISTRIBUTED.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (resolve.ConfigError, FileNotFoundError, checkpointing.CheckpointMismatchError) as e:
    cli.fail(e, 1)  # mistakes in the config, the data or the workdir: one clear message, before any training


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags)
