r"""Evaluation binary: scores the checkpoints of a training workdir, or saved heat maps of any method.

Checkpoints (restored onto the current mesh; every host scores its own shard of each split):
  python -m avl_jax.evaluate --config=configs/synthetic_av.py --workdir=DIR [--step=N] [--splits=a,b]
  python -m avl_jax.evaluate --config=configs/synthetic_av.py --workdir=DIR --all [--watch]
Converted PyTorch weights (`python -m avl_jax.convert`), no training checkpoint; results go to DIR/eval/ as step 0:
  python -m avl_jax.evaluate --config=configs/avgn_vggsound_duet.py --workdir=DIR --weights=weights/avgn_official
One table of the results already written (oracle and predicted classes side by side, no model):
  python -m avl_jax.evaluate --workdir=DIR --summarize [--splits=test_duet]
Saved maps (no model, no checkpoint; schema in avl_jax/metrics/predictions.py and README.md):
  python -m avl_jax.evaluate --predictions=FILE.npz --protocol=official --output=FILE.json

A checkpoint evaluation writes `DIR/eval/{split}_{step}.json` (every metric of the model and of the centre-prior
and random baselines, the protocol, the step, the sample counts), `{split}_{step}.csv` (one row per (example,
source) item), `{split}_{step}.png` (heat-map overlays), TensorBoard scalars `eval/{split}/{metric}` under
`DIR/eval/tensorboard`, and records the step in the ledger `DIR/eval/evaluated.json`. `--all` evaluates every
checkpoint the ledger does not list, oldest first, and rewrites the ledger (atomically) after each checkpoint:
killed at any point, a rerun redoes at most the checkpoint it was on. `--watch` keeps polling beside a training
job until the final step (config.num_train_steps) is evaluated or `--watch_timeout` passes without a new
checkpoint.

Results go to `--output_dir` instead of `DIR/eval` when given (a read-only workdir: the checkpoints are only
read). Without --step, a latest checkpoint that cannot be restored is reported and the newest one that restores
is evaluated; `--all` reports and skips such a step (never recorded, never deleted). Temporaries of killed
evaluations are removed from the results directory on start.

Exit codes: 0 success; 1 a missing or damaged checkpoint, a checkpoint of another config, a missing dataset or
split, an empty split, a bad config value or flag, an unwritable results directory; 2 a predictions file that
violates the schema (the message names the array and the index).
"""
import collections.abc
import datetime
import json
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from clu import metric_writers  # noqa: E402
import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from avl_jax import checkpointing  # noqa: E402
from avl_jax import eval_lib  # noqa: E402
from avl_jax import families  # noqa: E402
from avl_jax import cli  # noqa: E402
from avl_jax import logs  # noqa: E402
from avl_jax import resolve  # noqa: E402
from avl_jax import sharding  # noqa: E402
from avl_jax import train  # noqa: E402
from avl_jax import weights  # noqa: E402
from avl_jax.evaluation import writers  # noqa: E402
from avl_jax.metrics import predictions  # noqa: E402
from avl_jax.pipeline import data_source  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (checkpoint mode), e.g. configs/synthetic_av.py:tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/; results go to WORKDIR/eval/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest). Not with --all.")
_ALL = flags.DEFINE_boolean(
    "all", False, "Evaluate every checkpoint not yet listed in WORKDIR/eval/evaluated.json, oldest first; safe to "
    "kill and rerun (the ledger is rewritten after each finished checkpoint).")
_WATCH = flags.DEFINE_boolean(
    "watch", False, "With --all: keep polling for new checkpoints (beside a training job); stop once the final "
    "step (config.num_train_steps) is evaluated or after --watch_timeout seconds without a new checkpoint.")
_POLL_SECONDS = flags.DEFINE_float("poll_seconds", 60.0, "With --watch: seconds between checkpoint listings.")
_WATCH_TIMEOUT = flags.DEFINE_float(
    "watch_timeout", 3600.0, "With --watch: stop after this many seconds without a new checkpoint.")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Evaluate a converted-weights directory (written by `python -m avl_jax.convert` from "
    "official weights) instead of a training checkpoint; it must hold every variable of the config's "
    "model. Results go to WORKDIR/eval/ as step 0. Not with --step or --all.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods / GPU clusters): every "
    "host restores the checkpoint and scores its shard of each split; process 0 writes the results.")
_SUMMARIZE = flags.DEFINE_boolean(
    "summarize", False, "Print one table per split from the newest result JSONs already in WORKDIR/eval (or "
    "--output_dir): the model and audio ablations under each class source evaluated (oracle, predicted), then "
    "the baselines. No model, no --config; --splits chooses the splits (default: every split found).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Checkpoint mode: write the results, the ledger and TensorBoard scalars here instead of "
    "WORKDIR/eval (e.g. when the workdir is read-only); checkpoints are only read.")
_SPLITS = flags.DEFINE_list("splits", None, "Eval splits (default: config.dataset.eval_splits).")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", None, ["official", "standard"], "Metric protocol, docs/metrics.md §6 (default: "
    "config.eval.protocol; with --predictions: official).")
_SAVE_PREDICTIONS = flags.DEFINE_boolean(
    "save_predictions", False, "Checkpoint mode: also export each split's raw maps and GT boxes to "
    "WORKDIR/eval/{split}_{step}_predictions.npz (the --predictions schema).")
_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Score the saved maps of this .npz (schema: avl_jax/metrics/predictions.py, README) "
    "without a model; no --config or --workdir.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "With --predictions: the result JSON (default: the .npz path with .json); the per-item CSV "
    "(and, if the file has frames, the PNG) are written beside it.")
_MAP_RANGE = flags.DEFINE_enum(
    "map_range", None, list(predictions.MAP_RANGES), "With --predictions: what the map values are: 'logits' "
    "(fixed range +-1/tau), 'unit' (scores in [0, 1]), 'minmax' (anything; per-map min-max). Default: the "
    "file's `map_range`, else minmax. Only the confidence (slavc_ap, f1) depends on it.")
_TAU = flags.DEFINE_float("tau", None, "With --predictions and map_range=logits: temperature (default: the file's "
                          "`tau`, else the official %g)." % predictions.DEFAULT_TAU)
_BASELINES = flags.DEFINE_boolean(
    "baselines", True, "With --predictions: also score the centre-prior and random maps at the maps' resolution.")
_NUM_VISUALIZE = flags.DEFINE_integer(
    "num_visualize", 16, "With --predictions: examples drawn in the PNG (only when the file has `frames`).")

LEDGER = "evaluated.json"
_STOP, _WAIT = -1, -2  # Loop actions of evaluate_checkpoints besides "evaluate step N".


# ----------------------------------------------------------------------------------------------------- ledger

def ledger_path(workdir: str, output: str | None = None) -> str:
  return os.path.join(eval_lib.output_dir(workdir, output), LEDGER)


def read_ledger(workdir: str, output: str | None = None) -> dict[int, dict[str, Any]]:
  """{step: {'splits': [...], 'protocol', 'class_source', 'time', 'seconds'}} of the finished checkpoints ({} if
  none yet). The entry of a step is that of its latest evaluation (a predicted-class run replaces an oracle one)."""
  path = ledger_path(workdir, output)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise FileNotFoundError(f"The evaluation ledger {path} is not valid JSON ({e}); fix or delete it.") from e
  return {int(step): entry for step, entry in raw.items()}


def write_ledger(workdir: str, ledger: dict[int, dict[str, Any]], output: str | None = None) -> None:
  """Atomic rewrite (temporary file + rename), process 0 only: a kill never leaves a partial ledger."""
  if jax.process_index() == 0:
    writers.write_json(ledger_path(workdir, output), {str(step): ledger[step] for step in sorted(ledger)})


def pending_splits(ledger: dict[int, dict[str, Any]], step: int, splits, protocol: str,
                   class_source: str = "oracle") -> list[str]:
  """The splits of `step` not yet evaluated under `protocol` with `class_source` (oracle or predicted classes)."""
  entry = ledger.get(step)
  if entry is None or entry.get("protocol") != protocol or entry.get("class_source", "oracle") != class_source:
    return list(splits)
  return [split for split in splits if split not in entry["splits"]]


# ----------------------------------------------------------------------------------------------- checkpoints

class CheckpointEvaluator:
  """Restores checkpoints of one workdir and evaluates them; each finished step is recorded in the ledger.

  The model, abstract state and jitted localization are built once, on the first evaluation. Results go to
  `output` (default {workdir}/eval), which must be writable; temporaries that killed evaluations left there
  are removed first.
  """

  def __init__(self, config, workdir: str, *, save_predictions: bool = False, output: str | None = None,
               log_tables: bool = True):
    self.config = config
    self.log_tables = log_tables
    self.workdir = workdir
    self.output = eval_lib.output_dir(workdir, output)
    # Oracle and predicted-class results of a step are different evaluations (result files side by side).
    self.class_source = families.of(config).result_fields(config).get("class_source", "oracle")
    self.save_predictions = save_predictions
    prepare_output(self.output)
    self.manager = checkpointing.create_manager(workdir, create=False)
    self.ledger = read_ledger(workdir, self.output)
    self._built = None
    self._writer = None

  def steps(self) -> list[int]:
    """The checkpoint steps on disk now (re-read: a training job may have added or deleted some)."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def pending(self, step: int) -> list[str]:
    return pending_splits(self.ledger, step, self.config.dataset.eval_splits, self.config.eval.protocol,
                          self.class_source)

  def _build(self):
    if self._built is None:
      mesh = sharding.create_mesh(self.config.mesh)
      setup = train.build(self.config, mesh)
      localize_fn = eval_lib.make_localize_fn(self.config, setup.model, mesh)
      self._built = (mesh, setup, localize_fn)
      self._writer = metric_writers.create_default_writer(
          os.path.join(self.output, "tensorboard"), just_logging=jax.process_index() > 0,
          asynchronous=False)
    return self._built

  def evaluate(self, step: int, splits: list[str] | None = None) -> dict[str, Any]:
    """Restores `step`, evaluates `splits` (default: every configured one), records them; {split: result}."""
    splits = list(self.config.dataset.eval_splits if splits is None else splits)
    mesh, setup, localize_fn = self._build()
    start = time.time()
    state = checkpointing.restore(self.manager, step, setup.abstract_state,
                                  config_diff=train.config_diff(self.workdir, self.config))
    consts = train.make_consts(setup, state.params, mesh)  # the family's constants (never checkpointed)
    with jax.set_mesh(mesh):
      results = eval_lib.evaluate_all(self.config, setup.model, state.variables, mesh, self.workdir, step,
                                      self._writer, consts=consts, splits=splits, localize_fn=localize_fn,
                                      save_predictions=self.save_predictions, output=self.output,
                                      log_tables=self.log_tables)
    self._writer.flush()
    protocol = self.config.eval.protocol
    previous = self.ledger.get(step, {})
    same = previous.get("protocol") == protocol and previous.get("class_source", "oracle") == self.class_source
    done = set(previous.get("splits", [])) if same else set()
    self.ledger[step] = {
        "splits": sorted(done | set(splits)),
        "protocol": protocol,
        "class_source": self.class_source,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - start, 1),
    }
    write_ledger(self.workdir, self.ledger, self.output)
    return results

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def prepare_output(output: str) -> None:
  """Process 0: `output` must be writable (else an error offering --output_dir); stale temporaries removed."""
  if jax.process_index() != 0:
    return
  writers.check_writable(output, " Pass --output_dir=DIR to write the evaluation results elsewhere (the "
                         "checkpoints are only read).")
  removed = writers.remove_stale_temp_files(output)
  if removed:
    logging.warning("Removed %d temporary file(s) left in %s by killed evaluations (e.g. %s).", len(removed),
                    output, os.path.basename(removed[0]))


def evaluate(config, workdir: str, step: int | None = None, *, save_predictions: bool = False,
             output: str | None = None, log_tables: bool = True) -> dict:
  """Restores `step` (or the latest) from `workdir` and evaluates every configured split; {split: result}.

  Without `step`, a latest checkpoint that cannot be restored is reported (warning naming the step and the
  error) and the newest one that restores is evaluated instead; nothing is moved or deleted.
  """
  evaluator = CheckpointEvaluator(config, workdir, save_predictions=save_predictions, output=output,
                                  log_tables=log_tables)
  steps = evaluator.steps()
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {os.path.join(workdir, 'checkpoints')}.")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"No checkpoint for step {step} in {workdir}; available steps: {sorted(steps)}.")
  try:
    if step is not None:
      return evaluator.evaluate(step)
    for candidate in sorted(steps, reverse=True):
      try:
        return evaluator.evaluate(candidate)
      except checkpointing.DamagedCheckpointError as e:
        logging.warning("%s. Evaluating the previous checkpoint instead (the damaged one is left in place).", e)
    raise FileNotFoundError(f"None of the checkpoints {sorted(steps)} in {workdir} can be restored (see the "
                            "warnings above).")
  finally:
    evaluator.close()


def evaluate_weights(config, workdir: str, weights_dir: str, *, save_predictions: bool = False,
                     output: str | None = None, log_tables: bool = True) -> dict:
  """Evaluates the variables of a converted-weights directory with `config`'s model; {split: result}.

  Raises:
    FileNotFoundError: `weights_dir` is not a converted-weights directory.
    ValueError: the weights do not fit the model (a name or shape it lacks, or variables it needs missing).
  """
  prepare_output(eval_lib.output_dir(workdir, output))
  mesh = sharding.create_mesh(config.mesh)
  setup = train.build(config, mesh)
  variables, metadata = weights.load_whole_model(setup.abstract_state, weights_dir, mesh, action="evaluated")
  logging.info("Evaluating converted weights %s (format %s, source %s).", weights_dir, metadata.get("format"),
               metadata.get("source"))
  consts = train.make_consts(setup, variables["params"], mesh)
  with jax.set_mesh(mesh):
    return eval_lib.evaluate_all(config, setup.model, variables, mesh, workdir, 0, None, consts=consts,
                                 save_predictions=save_predictions, output=output, log_tables=log_tables)


def _from_process_0(action: np.ndarray) -> np.ndarray:
  """Process 0's decision, on every host (their listings and clocks may differ; the collectives may not)."""
  if jax.process_count() == 1:
    return action
  return np.asarray(multihost_utils.broadcast_one_to_all(action))


def evaluate_checkpoints(config, workdir: str, *, watch: bool = False, poll_seconds: float = 60.0,
                         watch_timeout: float = 3600.0, save_predictions: bool = False, output: str | None = None,
                         log_tables: bool = True, sleep: collections.abc.Callable[[float], None] = time.sleep,
                         clock: collections.abc.Callable[[], float] = time.monotonic) -> dict[int, dict[str, Any]]:
  """`--all`: evaluates every checkpoint (and split) the ledger does not list, oldest first.

  Args:
    config: experiment config (its eval splits and protocol decide what counts as evaluated).
    workdir: training workdir.
    watch: keep polling for new checkpoints until config.num_train_steps is evaluated or `watch_timeout`
      seconds pass without a new checkpoint.
    poll_seconds: pause between listings when nothing is pending.
    watch_timeout: see `watch`.
    save_predictions: also export the maps of every split (eval_lib.evaluate_split).
    output: results directory (default {workdir}/eval).
    log_tables: log each result table (the binary prints them instead).
    sleep, clock: injectable for tests.

  Returns:
    {step: {split: result}} of the checkpoints evaluated by this call.

  Raises:
    FileNotFoundError: the workdir has no checkpoint (after waiting, with watch).
  """
  evaluator = CheckpointEvaluator(config, workdir, save_predictions=save_predictions, output=output,
                                  log_tables=log_tables)
  splits = list(config.dataset.eval_splits)
  if len(splits) > 31:  # pending splits travel between hosts as the bits of an int32
    raise ValueError(f"--all supports at most 31 eval splits; got {len(splits)}.")
  evaluated, seen, damaged = {}, set(), set()
  last_new = clock()
  try:
    while True:
      steps = evaluator.steps()
      if set(steps) - seen:
        seen.update(steps)
        last_new = clock()
      todo = [(step, evaluator.pending(step)) for step in steps if step not in damaged]
      todo = [(step, pending) for step, pending in todo if pending]
      if todo:
        step, pending = todo[0]
        action = (step, sum(1 << i for i, split in enumerate(splits) if split in pending))
      elif not watch or not evaluator.pending(config.num_train_steps):
        action = (_STOP, 0)
      elif clock() - last_new > watch_timeout:
        logging.warning("No new checkpoint in %s for %.0f s: stopping the watch.", workdir, watch_timeout)
        action = (_STOP, 0)
      else:
        action = (_WAIT, 0)
      step, mask = (int(v) for v in _from_process_0(np.asarray(action, np.int32)))
      if step == _STOP:
        break
      if step == _WAIT:
        logging.info("Waiting %.0f s for new checkpoints in %s.", poll_seconds, workdir)
        sleep(poll_seconds)
        continue
      pending = [split for i, split in enumerate(splits) if mask >> i & 1]
      logging.info("Evaluating step %d (%s).", step, ", ".join(pending))
      try:
        evaluated[step] = evaluator.evaluate(step, pending)
      except checkpointing.CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step in evaluator.steps():
          if not isinstance(e, checkpointing.DamagedCheckpointError):
            raise
          logging.warning("%s. Skipped (left in place, not recorded in the ledger); the others go on.", e)
          damaged.add(step)
        else:
          logging.warning("Checkpoint %d was deleted (max_to_keep) before it could be evaluated; skipped.", step)
  finally:
    evaluator.close()
  if not seen:
    raise FileNotFoundError(f"No checkpoint found in {os.path.join(workdir, 'checkpoints')}.")
  return evaluated


# ------------------------------------------------------------------------------------------------------- main

def _check_flags() -> None:
  """Flag combinations; raises app.UsageError (exit 1 with usage) on a conflict."""
  def given(*names):
    return [f"--{n}" for n in names if flags.FLAGS[n].present]

  if _SUMMARIZE.value:
    conflicts = given("config", "step", "all", "watch", "weights", "predictions", "save_predictions")
    if conflicts or not _WORKDIR.value:
      raise app.UsageError(f"--summarize reads result files: give --workdir (and --splits), drop {conflicts}.")
    return
  if _PREDICTIONS.value:
    conflicts = given("config", "workdir", "step", "all", "watch", "splits", "save_predictions", "weights",
                      "output_dir", "distributed")
    if conflicts:
      raise app.UsageError(f"--predictions scores a file without a model; drop {', '.join(conflicts)}.")
    return
  conflicts = given("output", "map_range", "tau", "baselines", "num_visualize")
  if conflicts:
    raise app.UsageError(f"{', '.join(conflicts)} only apply with --predictions.")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("Give --config and --workdir (checkpoint mode) or --predictions=FILE.npz.")
  if _ALL.value and _STEP.value is not None:
    raise app.UsageError("--step and --all are exclusive.")
  if _WEIGHTS.value and (_ALL.value or _STEP.value is not None):
    raise app.UsageError("--weights evaluates converted weights, not checkpoints; drop --step/--all.")
  if _WATCH.value and not _ALL.value:
    raise app.UsageError("--watch needs --all.")


def _print_results(results: dict[str, Any]) -> None:
  for name, result in results.items():
    print(f"\n{writers.format_result(result, name)}")



def summarize(workdir: str, splits: list[str] | None = None, output: str | None = None) -> str:
  """`--summarize`: the comparison tables of the newest results in the eval directory, one per split."""
  directory = eval_lib.output_dir(workdir, output)
  latest = writers.latest_results(directory)
  found = sorted({split for split, _ in latest})
  if not found:
    raise FileNotFoundError(f"No result JSONs in {directory}; evaluate a checkpoint first.")
  missing = sorted(set(splits or ()) - set(found))
  if missing:
    raise FileNotFoundError(f"No results for split(s) {missing} in {directory}; found {found}.")
  tables = []
  for split in splits or found:
    results = [latest[key] for key in sorted(latest, key=lambda k: (k[1] != "oracle", k[1])) if key[0] == split]
    tables.append(writers.format_comparison(results))
  return "\n\n".join(tables)


def _run() -> None:
  if _SUMMARIZE.value:
    print(summarize(_WORKDIR.value, _SPLITS.value, _OUTPUT_DIR.value))
    return
  if _PREDICTIONS.value:
    result = eval_lib.score_predictions_file(
        _PREDICTIONS.value, _OUTPUT.value, protocol=_PROTOCOL.value or "official", map_range=_MAP_RANGE.value,
        tau=_TAU.value, baselines=_BASELINES.value, num_visualize=_NUM_VISUALIZE.value)
    _print_results({os.path.basename(_PREDICTIONS.value): result})
    return
  cli.init_runtime(_CONFIG.value, distributed=_DISTRIBUTED.value)
  config = _CONFIG.value
  if _SPLITS.value:
    config.dataset.eval_splits = tuple(_SPLITS.value)
  if _PROTOCOL.value:
    config.eval.protocol = _PROTOCOL.value
  config = resolve.resolve(config)  # every value checked, splits exist, epochs -> steps (the --watch target)
  output = _OUTPUT_DIR.value
  if _WEIGHTS.value:
    _print_results(evaluate_weights(config, _WORKDIR.value, _WEIGHTS.value, save_predictions=_SAVE_PREDICTIONS.value,
                                    output=output, log_tables=False))
    return
  if _ALL.value:
    evaluated = evaluate_checkpoints(config, _WORKDIR.value, watch=_WATCH.value, poll_seconds=_POLL_SECONDS.value,
                                     watch_timeout=_WATCH_TIMEOUT.value, save_predictions=_SAVE_PREDICTIONS.value,
                                     output=output, log_tables=False)
    for _, results in sorted(evaluated.items()):
      _print_results(results)
    print(f"\nEvaluated {len(evaluated)} checkpoint(s) {sorted(evaluated)}; ledger: "
          f"{ledger_path(_WORKDIR.value, output)}")
    return
  _print_results(evaluate(config, _WORKDIR.value, _STEP.value, save_predictions=_SAVE_PREDICTIONS.value,
                          output=output, log_tables=False))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.setup()
  _check_flags()
  try:
    _run()
  except predictions.PredictionsError as e:
    cli.fail(e, 2)
  except (FileNotFoundError, data_source.DataError, resolve.ConfigError, writers.OutputNotWritableError,
          checkpointing.CheckpointMismatchError, checkpointing.DamagedCheckpointError) as e:
    cli.fail(e, 1)
  except ValueError as e:
    if not _WEIGHTS.value:
      raise
    cli.fail(e, 1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
