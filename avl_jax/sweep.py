r"""Runs a sweep config cell by cell, then prints its table (see avl_jax/sweep_lib.py).

  python -m avl_jax.sweep --config=configs/tvsl_table7.py --args=data_dir=DATA,bpe_path=VOCAB --workdir=W \
      [--init_from=weights/audioclip] [--only=tvsl_vggsound_duet] [--dry_run]

Flags: --config (file with get_config(arg) and get_sweep(arg)), --args (appended to every cell's argument
string), --workdir (root of the cells' workdirs), --init_from (config.init_from of every cell, e.g. the converted
AudioCLIP release), --only (comma-separated cell names), --dry_run (print the cells and exit), --distributed
(jax.distributed.initialize() first, as for `main`). Every selected cell's config is checked before the first
one trains.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402

from avl_jax import cli  # noqa: E402
from avl_jax import config_lib  # noqa: E402
from avl_jax import logs  # noqa: E402
from avl_jax import sweep_lib  # noqa: E402

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file (defines get_config and get_sweep).")
_ARGS = flags.DEFINE_string("args", "", "Config arguments appended to every cell, e.g. data_dir=D,bpe_path=V.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory; each cell trains in WORKDIR/<cell name>.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "config.init_from of every cell (converted weights).")
_ONLY = flags.DEFINE_list("only", [], "Run only these cells (names as printed by --dry_run).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host): every cell trains on all hosts.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the cells and their commands, run nothing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.setup()
  cli.init_runtime(config_lib.base_config(), distributed=_DISTRIBUTED.value)  # the default compilation cache
  print(sweep_lib.run(_CONFIG.value, _ARGS.value, _WORKDIR.value, init_from=_INIT_FROM.value,
                      only=_ONLY.value, dry_run=_DRY_RUN.value))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags)
