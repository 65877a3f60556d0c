"""The training loop, top to bottom: mesh -> data -> model/optimizer -> sharded state -> step -> restore -> loop.

Start order: the workdir's own latest checkpoint (resume) -> config.init_from (converted weights, e.g. ImageNet
ResNet-18, on top of a fresh init) -> scratch.
"""
import contextlib
import dataclasses
import functools
import gc
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from clu import parameter_overview
from clu import periodic_actions
import flax
import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
from grain import multiprocessing as grain_multiprocessing

from avl_jax import checkpointing
from avl_jax import eval_lib
from avl_jax import families
from avl_jax import input_pipeline
from avl_jax import optimizers
from avl_jax import param_rules
from avl_jax import resolve
from avl_jax import sharding
from avl_jax.evaluation import writers
from avl_jax.pipeline import image_ops


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss is NaN or Inf; the last good checkpoint is left untouched."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; per-step keys are fold_in(rng, step)

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


# ---------------------------------------------------------------------------------------------- model / state

def init_state(config: ml_collections.ConfigDict, family: families.Family, model, tx, rng: jax.Array) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  # Parameter init draws from an 'rbg' key: XLA compiles hundreds of threefry initialisers very slowly on CPU
  # (a tiny model's init: ~77 s vs ~16 s). The values do not depend on the mesh or on the state's shardings
  # (tests/sharding_test.py compares an FSDP-sharded init with a 1-device one).
  init_key = jax.random.key(jax.random.randint(init_rng, (), 0, jnp.iinfo(jnp.int32).max), impl="rbg")
  variables = model.init({"params": init_key}, **family.dummy_inputs(config, 2), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


def make_consts(setup: "TrainSetup", params: Any, mesh) -> dict[str, Any]:
  """The family's constant model inputs (e.g. a text bank encoded by frozen towers), replicated on `mesh`.

  Computed from the (initialised, converted or restored) parameters on every start; never checkpointed.
  """
  consts = setup.family.make_consts(setup.config, setup.model, params)
  return jax.device_put(consts, sharding.replicated(mesh))


def apply_init_from(state: TrainState, path: str, mesh) -> TrainState:
  """Replaces the variables of a fresh `state` by those of a converted-weights directory (see config.init_from)."""
  loaded, metadata = checkpointing.load_variables(path)
  def to_host(x):  # the whole value, also of an FSDP-sharded parameter (gathered from every host)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  current = jax.tree.map(to_host, {"params": state.params, "batch_stats": state.batch_stats})
  merged, count = checkpointing.merge_variables(current, loaded, origin=f"config.init_from={path}")
  total = len(jax.tree.leaves(current))
  logging.info("Initialised %d of %d variables from %s (format %s, source %s).", count, total, path,
               metadata.get("format"), metadata.get("source"))
  del mesh  # the variables go where the state's own shardings put them
  merged = jax.device_put(merged, jax.tree.map(lambda x: x.sharding,
                                               {"params": state.params, "batch_stats": state.batch_stats}))
  return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])


# ------------------------------------------------------------------------------------------------------- step

def train_step(state: TrainState, batch: dict[str, jax.Array], consts: dict[str, Any], *, model, tx, config,
               family: families.Family) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch; returns the new state and scalar metrics.

  `consts` are the family's constant inputs (`make_consts`), replicated; {} for most models.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, gumbel_rng = jax.random.split(rng)
  rngs = {"dropout": dropout_rng, "gumbel": gumbel_rng}
  # uint8 frames from the hosts (dataset.normalize_on_device) are normalised here, on the devices.
  batch = dict(batch, image=image_ops.device_normalize_image(batch["image"], config.dataset.image_norm))

  def apply(params):
    return family.train_apply(model, {"params": params, "batch_stats": state.batch_stats}, consts, batch, rngs)

  def loss_fn(params):
    (losses, _), new_model_state = apply(params)
    return losses["loss"], (losses, new_model_state)

  grads, (losses, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(losses)
  # Norms of what trains (frozen parameters' gradients are not applied).
  frozen = param_rules.frozen_mask(params, config.optimizer.get("frozen"))
  metrics["grad_norm"] = optax.global_norm(jax.tree.map(lambda g, f: 0.0 if f else g, grads, frozen))
  metrics["param_norm"] = optax.global_norm(jax.tree.map(lambda p, f: 0.0 if f else p, params, frozen))
  metrics["learning_rate"] = optimizers.learning_rate_schedule(config)(state.step)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=new_model_state.get("batch_stats", state.batch_stats), opt_state=opt_state)
  return new_state, metrics


def make_metrics_collection(metric_names):
  return clu_metrics.Collection.create(**{name: clu_metrics.Average.from_output(name) for name in metric_names})


# ------------------------------------------------------------------------------------------------------- loop

@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What `build` makes for a config on a mesh.

  Attributes:
    config: the config it was built from.
    family: the model's family (`avl_jax.families`).
    model: the Flax module.
    tx: the optimizer.
    init_fn: jitted rng -> TrainState, already sharded.
    step_fn: jitted (state, global batch, consts) -> (state, metrics); donates the state.
    abstract_state: ShapeDtypeStructs of the state with its shardings (the restore target).
  """
  config: ml_collections.ConfigDict
  family: families.Family
  model: Any
  tx: optax.GradientTransformation
  init_fn: Any
  step_fn: Any
  abstract_state: Any


def build(config: ml_collections.ConfigDict, mesh) -> TrainSetup:
  """Model, optimizer, abstract sharded state and the jitted train step for `config` on `mesh`.

  The state's shardings come from `config.sharding_rules` and the mesh's 'fsdp' axis (`sharding.state_shardings`:
  parameters and their Adam moments sharded, the rest replicated); the batch is split over 'data' x 'fsdp'.
  """
  family = families.of(config)
  model = family.create_model(config)
  tx = optimizers.create_optimizer(config)
  init_fn = functools.partial(init_state, config, family, model, tx)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  rules = config.get("sharding_rules", ())
  state_sharding = sharding.state_shardings(abstract, mesh, rules)
  sharding.log_state_sharding(abstract, state_sharding, mesh, rules)
  init_jit = jax.jit(init_fn, out_shardings=state_sharding)
  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, config=config, family=family),
      in_shardings=(state_sharding, sharding.data_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sharding)
  return TrainSetup(config=config, family=family, model=model, tx=tx, init_fn=init_jit, step_fn=step_fn,
                    abstract_state=abstract)


def _check_finite(metrics: dict[str, Any], step: int, workdir: str) -> None:
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    details = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
    raise NonFiniteLossError(
        f"Non-finite loss at step {step} ({details}). Training stopped; the last good checkpoint in "
        f"{os.path.join(workdir, 'checkpoints')} is intact. Lower the learning rate or check the inputs.")


class StopRequest:
  """Turns SIGTERM/SIGINT into a request the loop honours after the current step: save, then stop.

  Without it a killed run loses the steps since the last checkpoint and orphans grain's worker processes. On
  multi-host runs the hosts agree on the step through Orbax's preemption sync point.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # A second signal: give up immediately.
      raise KeyboardInterrupt(f"signal {signum}")
    logging.warning("Received signal %d: saving a checkpoint after this step and stopping.", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def should_stop(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it has checkpoints), evaluates at the end; returns eval results."""
  config = resolve.resolve(config)  # every value checked, epochs -> steps (a private copy)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    writers.remove_stale_temp_files(eval_lib.output_dir(workdir))  # left by a run killed mid-write

  # Mesh.
  mesh = sharding.create_mesh(config.mesh)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count())
  per_host_batch = sharding.per_host_batch_size(config.batch_size, mesh)

  # Model, optimizer, state.
  setup = build(config, mesh)
  rng = jax.random.PRNGKey(config.seed)
  data_seed, param_seed = (int(x) for x in jax.random.randint(rng, (2,), 0, 2**31 - 1))

  # Data.
  train_data = input_pipeline.create_train_dataset(config, per_host_batch, seed=data_seed)
  train_iter = iter(train_data)

  # Restore or initialise.
  manager = checkpointing.create_manager(workdir, save_interval_steps=config.checkpoint_every_steps,
                                         max_to_keep=config.keep_checkpoints,
                                         async_save=checkpointing.use_async(config.checkpoint_async))
  try:
    state, latest = checkpointing.restore_latest(manager, setup.abstract_state, train_iter, move_damaged=True,
                                                 config_diff=config_diff(workdir, config))
  except BaseException:
    train_iter.close()  # a refused workdir leaves no grain worker processes behind
    raise
  if latest is not None:
    logging.info("Resumed from step %d in %s.", latest, workdir)
  else:
    state = setup.init_fn(jax.random.PRNGKey(param_seed))
    logging.info("Initialised from scratch (seed %d).", config.seed)
    if config.init_from:
      state = apply_init_from(state, config.init_from, mesh)
  consts = make_consts(setup, state.params, mesh)
  start_step = int(state.step)
  write_config(workdir, config, start_step)  # only now: a refused restore leaves the workdir's record as it was
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  num_params = param_rules.count(state.params)
  overview = ""
  if jax.process_index() == 0:  # every parameter's shape, size and statistics, in a file (not the log)
    overview = os.path.join(workdir, "parameters.txt")
    with open(overview, "w") as f:
      f.write(parameter_overview.get_parameter_overview(state.params) + "\n")
  logging.info("Model %s with %s parameters (step %d; table: %s).", config.model_name, f"{num_params:,}",
               start_step, overview)
  if config.optimizer.get("frozen"):
    frozen = param_rules.frozen_mask(state.params, config.optimizer.frozen)
    logging.info("Trainable (outside config.optimizer.frozen=%r): %s.", config.optimizer.frozen,
                 f"{param_rules.count(state.params, frozen, frozen=False):,}")
  writer.write_hparams({k: v for k, v in flatten_config(config).items()})

  report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
  collection_cls = None
  collection = None
  pending = None  # (metrics, step) of the previous step, checked one step late so dispatch stays async.
  step = start_step
  batch = None
  # closing: stops grain's worker processes and frees their shared memory on every exit path.
  with jax.set_mesh(mesh), StopRequest() as stop, contextlib.closing(train_iter):
    while step < config.num_train_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.host_to_global(next(train_iter), mesh)
        if step == start_step:
          logging.info("Compiling the train step (the first step waits for it)...")
          compile_start = time.perf_counter()
        state, metrics = setup.step_fn(state, batch, consts)
        if step == start_step:
          jax.block_until_ready(metrics)
          logging.info("First train step done in %.1f s (compilation included).", time.perf_counter() - compile_start)
      step += 1
      if pending is not None:
        _check_finite(*pending, workdir)
      pending = (metrics, step)
      if collection_cls is None:
        collection_cls = make_metrics_collection(metrics)
      update = collection_cls.single_from_model_output(**metrics)
      collection = update if collection is None else collection.merge(update)
      report(step)
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        _check_finite(metrics, step, workdir)
        writer.write_scalars(step, {f"train/{k}": v for k, v in collection.compute().items()})
        collection = None
      stopping = stop.should_stop(manager, step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps or stopping:
        _check_finite(metrics, step, workdir)  # Never save a state produced by a non-finite step.
        with report.timed("checkpoint"):
          checkpointing.save(manager, step, state, train_iter,
                             force=step == config.num_train_steps or stopping)
      if stopping:
        manager.wait_until_finished()
        logging.warning("Stopped at step %d on request; rerun the same command to resume.", step)
        writer.flush()
        return {}
      if config.eval_every_steps and step % config.eval_every_steps == 0 and step < config.num_train_steps:
        with report.timed("eval"):
          eval_lib.evaluate_all(config, setup.model, state.variables, mesh, workdir, step, writer=writer,
                                consts=consts)
    if pending is not None:
      _check_finite(*pending, workdir)
    batch = None  # on CPU it may alias a grain shared-memory buffer: release it before the evaluation
    manager.wait_until_finished()
    results = eval_lib.evaluate_all(config, setup.model, state.variables, mesh, workdir, step, writer=writer,
                                    consts=consts)
  writer.flush()
  release_shared_memory()
  return results


def release_shared_memory() -> None:
  """Frees the shared memory of the batches grain's worker processes handed over, before the process exits.

  grain unlinks a batch's shared-memory block when its last array is garbage-collected, from a background
  thread pool that nothing waits for at exit; without this the interpreter leaves the blocks to Python's
  resource tracker ("There appear to be 5 leaked shared_memory objects"). Later releases run synchronously.
  """
  gc.collect()
  arrays = grain_multiprocessing.SharedMemoryArray
  pool = getattr(arrays, "_del_thread_pool", None)  # private in grain 0.2.18; absent: nothing to wait for
  if pool is not None:
    arrays._disable_async_del()  # pylint: disable=protected-access
    pool.close()
    pool.join()


CONFIG_FILE = "config.json"


def _config_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def write_config(workdir: str, config: ml_collections.ConfigDict, start_step: int) -> None:
  """Writes `{workdir}/config.json` atomically (process 0); a changed config keeps the old one beside it.

  When the workdir's config.json differs from `config`, it is renamed to `config-before-{start_step}.json`
  (the config the steps before `start_step` were trained with) first, so every run's config is kept.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  text = _config_json(config)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if _flat_json(old) == _flat_json(text):
      return
    previous = os.path.join(workdir, f"config-before-{start_step}.json")
    os.replace(path, previous)
    logging.warning("The config differs from the one this workdir was trained with; the old one is kept as %s.",
                    previous)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _flat_json(text: str) -> dict[str, Any]:
  def flat(value, prefix=""):
    if isinstance(value, dict):
      return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}
  try:
    return flat(json.loads(text))
  except json.JSONDecodeError:
    return {"<unreadable config.json>": text[:80]}


def config_diff(workdir: str, config: ml_collections.ConfigDict, limit: int = 12) -> str:
  """Lines '  field: saved -> now' for the fields where `{workdir}/config.json` differs from `config` ('' if none)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    saved = _flat_json(f.read())
  now = _flat_json(_config_json(config))
  keys = sorted(k for k in set(saved) | set(now) if saved.get(k, "<absent>") != now.get(k, "<absent>"))
  lines = [f"  {k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in keys[:limit]]
  if len(keys) > limit:
    lines.append(f"  ... and {len(keys) - limit} more")
  return "\n".join(lines)


def flatten_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """Flat {'a.b': value} view of scalar config fields (for TensorBoard hparams)."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten_config(value, name + "."))
    elif isinstance(value, (int, float, str, bool)):
      flat[name] = value
    else:
      flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
  return flat


