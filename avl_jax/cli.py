"""Command-line parsing shared by the binaries: config mistakes become one clear line, not a traceback.

`app.run(main, flags_parser=cli.parse_flags)` parses absl flags as usual. When the `--config` file cannot be
loaded or an override `--config.a.b=value` names a field the config does not have, it prints

  error: --config.optimizer.lerning_rate=1: config.optimizer has no field 'lerning_rate'. Did you mean
  'learning_rate'? Fields of config.optimizer: b1, b2, ...

(close matches at that level, and for a top-level typo also nested fields of that name) and exits with code 1.

`init_runtime` is the start-up every binary shares: `jax.distributed.initialize()` when asked, TensorFlow (used
by TFDS and the clu writers only) kept off accelerators, and the persistent compilation cache
(`config.compilation_cache_dir`): a rerun, a resume or an evaluation of the same shapes loads its executables
from disk instead of recompiling them.
"""
import difflib
import os
import sys

from absl import flags
from absl import logging
import jax
import ml_collections

from avl_jax import config_lib
from avl_jax import families

USAGE_ERROR = 1  # as absl usage errors and the binaries' other bad-flag errors


def _config_flag(argv: list[str], name: str = "config") -> str | None:
  """The value of --config (either `--config=X` or `--config X`)."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  paths = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(_leaf_paths(value, f"{prefix}{key}."))
    else:
      paths.append(f"{prefix}{key}")
  return paths


def unknown_field_message(config: ml_collections.ConfigDict, override: str) -> str | None:
  """Why `override` ('a.b.c') names no field of `config`, with close matches; None if it names one."""
  renamed = families.renamed_fields()  # a config or a command line with an old name is told the new one
  if override in renamed:
    new = renamed[override]
    return f"config.{override} was renamed to config.{new}; use --config.{new}."
  parts = override.split(".")
  node, walked = config, []
  for part in parts:
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"config.{'.'.join(walked)} is a value ({type(node).__name__}), not a group: it has no field "
              f"{part!r}.")
    if part not in node:
      level = "the config" if not walked else f"config.{'.'.join(walked)}"
      keys = sorted(node.keys())
      close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
      if not walked:  # a nested field given at the top level: --config.learning_rate for optimizer.learning_rate
        nested = [p for p in _leaf_paths(config) if "." in p]
        close += [p for p in nested if difflib.get_close_matches(part, [p.rsplit(".", 1)[1]], cutoff=0.8)][:3]
      hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
      return f"{level} has no field {part!r}.{hint} Fields of {level}: {', '.join(keys)}."
    node, walked = node[part], walked + [part]
  return None


def explain_config_error(argv: list[str], error: Exception) -> str | None:
  """A one-paragraph message for a failure while loading/overriding the config; None if it is not one."""
  spec = _config_flag(argv)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    config = config_lib.load_config(path, arg)
  except (ValueError, FileNotFoundError, TypeError) as e:
    return f"--config={spec}: {e}"
  for item in argv:
    if item.startswith("--config."):
      name, _, _ = item[len("--config."):].partition("=")
      message = unknown_field_message(config, name)
      if message:
        return f"{item}: {message}"
  return f"--config={spec}: {type(error).__name__}: {error}" if isinstance(error, (ValueError, TypeError)) else None


def fail(error: Exception | str, code: int = USAGE_ERROR) -> None:
  """Ends a binary with one line on stderr (also logged) and exit `code`: the message, never a traceback."""
  logging.error("%s", error)
  print(f"error: {error}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (usage errors as usual); config-file and config-override mistakes exit 2 with a message."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = explain_config_error(argv, e)
    if message is not None:
      print(f"error: {message}", file=sys.stderr)
      sys.exit(USAGE_ERROR)
    if isinstance(e, flags.Error):  # absl's own usage errors, as app.parse_flags_with_usage reports them
      print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
            file=sys.stderr)
      sys.exit(1)
    raise


def distributed_args(environ=None) -> dict[str, object]:
  """jax.distributed.initialize arguments from AVL_NUM_PROCESSES / AVL_PROCESS_ID (+ JAX_COORDINATOR_ADDRESS).

  Empty when they are not set: JAX then detects the cluster itself (TPU VMs, SLURM, Open MPI, Kubernetes).
  Setting them runs N processes by hand, e.g. on GPU nodes without a scheduler or several CPU processes on one
  machine (launch/gpu.sh).
  """
  environ = os.environ if environ is None else environ
  if "AVL_NUM_PROCESSES" not in environ:
    return {}
  if "AVL_PROCESS_ID" not in environ or "JAX_COORDINATOR_ADDRESS" not in environ:
    raise ValueError("AVL_NUM_PROCESSES is set: also set AVL_PROCESS_ID (0..N-1) and JAX_COORDINATOR_ADDRESS "
                     "(host:port of process 0).")
  return {"coordinator_address": environ["JAX_COORDINATOR_ADDRESS"],
          "num_processes": int(environ["AVL_NUM_PROCESSES"]), "process_id": int(environ["AVL_PROCESS_ID"])}


def init_runtime(config: ml_collections.ConfigDict | None = None, *, distributed: bool = False) -> None:
  """Process start-up of the binaries (see the module docstring); call once, before any JAX computation."""
  if distributed:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # several CPU processes: collectives over gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**distributed_args())
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  jax.config.update("jax_threefry_partitionable", True)
  cache = config.get("compilation_cache_dir") if config is not None else None
  if cache:
    cache = os.path.expanduser(cache)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.info("Persistent compilation cache: %s (config.compilation_cache_dir; '' turns it off).", cache)
  logging.info("JAX %s: process %d/%d, local devices %s.", jax.__version__, jax.process_index(),
               jax.process_count(), jax.local_devices())
