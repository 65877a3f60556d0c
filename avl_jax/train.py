"""The training loop, top to bottom: mesh -> data -> model/optimizer -> sharded state -> step -> restore -> loop.

Start order: the workdir's own latest checkpoint (resume) -> config.init_from (converted weights, e.g. ImageNet
ResNet-18, on top of a fresh init) -> scratch.
"""
import functools
import json
import math
import os
import signal
import threading
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
import ml_collections
import numpy as np
import optax

from avl_jax import audio
from avl_jax import checkpointing
from avl_jax import eval_lib
from avl_jax import input_pipeline
from avl_jax import models
from avl_jax import sharding
from avl_jax import tvsl_lib
from avl_jax.models.tvsl import params as tvsl_params


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss is NaN or Inf; the last good checkpoint is left untouched."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; per-step keys are fold_in(rng, step)
  # Constant inputs of the model that are not parameters (T-VSL: the encoded text bank and the label -> bank
  # row table, `tvsl_lib`); {} for the AVGN family. Not checkpointed: recomputed from the frozen text tower
  # on every start (`fill_consts`), so the same bank comes back and extra zero-shot classes can be added.
  consts: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, Any]:
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    if self.consts:
      variables["consts"] = self.consts
    return variables


# ---------------------------------------------------------------------------------------------- model / optimizer

def is_text_model(config: ml_collections.ConfigDict) -> bool:
  return config.model_name in models.TEXT_MODELS


def create_model(config: ml_collections.ConfigDict):
  fields = config.model.to_dict()
  if config.model.get("dtype"):
    fields["dtype"] = jnp.dtype(config.model.dtype)
  if config.model_name in models.FROZEN_TOWER_MODELS:
    tvsl_lib.check_model_config(config)
  model_class = models.MODELS.get(config.model_name)
  if model_class is not None and "num_classes" in models.model_fields(model_class):
    fields["num_classes"] = config.dataset.num_classes
  return models.get_model(config.model_name, **fields)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  opt = config.optimizer
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
        decay_steps=max(config.num_train_steps, opt.warmup_steps + 1))
  if opt.schedule == "cosine_tvsl":
    # T-VSL's per-iteration cosine over epochs counted from 1 (spec tvsl.md §6): lr = lr0 / 2 (1 + cos(pi e / E)),
    # e = 1 + step / steps_per_epoch in [1, E + 1), no warm-up.
    epochs = config.get("num_epochs") or opt.get("cosine_epochs")
    if not epochs:
      raise ValueError("config.optimizer.schedule='cosine_tvsl' counts epochs: set config.num_epochs (or "
                       "config.optimizer.cosine_epochs when training by steps).")
    steps_per_epoch = config.num_train_steps / epochs
    return lambda step: opt.learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * (1 + step / steps_per_epoch) / epochs))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; expected 'constant', 'cosine' or 'cosine_tvsl'.")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam as torch.optim.Adam (coupled L2 weight decay), optional global-norm clipping."""
  opt = config.optimizer
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0:
    chain.append(optax.add_decayed_weights(opt.weight_decay))
  chain.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  chain.append(optax.scale_by_learning_rate(learning_rate_schedule(config)))
  tx = optax.chain(*chain)
  if config.model_name in models.FROZEN_TOWER_MODELS:
    # The frozen AudioCLIP towers get zero updates and no optimizer state (spec tvsl.md §3).
    tx = optax.multi_transform({tvsl_params.TRAINABLE: tx, tvsl_params.FROZEN: optax.set_to_zero()},
                               tvsl_params.param_labels)
  return tx


def num_samples(config: ml_collections.ConfigDict) -> int:
  return int(round(config.dataset.audio_seconds * config.dataset.sample_rate))


def dummy_inputs(config: ml_collections.ConfigDict, batch: int):
  ds = config.dataset
  if is_text_model(config):
    consts = tvsl_lib.abstract_consts(config, config.model.get("embed_dim", 1024))
    return dict(canvas=jnp.zeros((batch, ds.image_size, 2 * ds.image_size, 3), jnp.float32),
                waveform=jnp.zeros((batch, num_samples(config)), jnp.float32),
                text_bank=jnp.asarray(consts["text_bank"]),
                class_rows=jnp.zeros((batch, 2), jnp.int32))
  if config.model_name in models.WAVEFORM_INPUT:
    spec = jnp.zeros((batch, num_samples(config)), jnp.float32)
  else:
    spec = jnp.zeros((batch, 257, audio.num_frames(num_samples(config)), 1), jnp.float32)
  return dict(
      image=jnp.zeros((batch, ds.image_size, ds.image_size, 3), jnp.float32),
      spec=spec,
      visual_class=jnp.zeros((batch,), jnp.int32),
      audio_label=jnp.zeros((batch, ds.num_classes), jnp.float32))


def init_state(config: ml_collections.ConfigDict, model, tx, rng: jax.Array) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  # Parameter init draws from an 'rbg' key: XLA compiles hundreds of threefry initialisers very slowly on CPU
  # (a tiny AVGN's init: ~77 s vs ~16 s). Init is replicated, so the values do not depend on the mesh.
  init_key = jax.random.key(jax.random.randint(init_rng, (), 0, jnp.iinfo(jnp.int32).max), impl="rbg")
  variables = model.init({"params": init_key}, **dummy_inputs(config, 2), train=False)
  params = variables["params"]
  consts = {}
  if is_text_model(config):  # Placeholders of the right shapes; `fill_consts` encodes the bank after init.
    consts = jax.tree.map(jnp.asarray, tvsl_lib.abstract_consts(config, config.model.get("embed_dim", 1024)))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng, consts=consts)


def fill_consts(config: ml_collections.ConfigDict, model, state: TrainState, mesh) -> TrainState:
  """T-VSL: encodes the text bank with the (frozen, possibly just loaded) text tower; a no-op otherwise."""
  if not is_text_model(config):
    return state
  consts = tvsl_lib.make_consts(config, model, state.params)
  return state.replace(consts=jax.device_put(consts, sharding.replicated(mesh)))


def apply_init_from(state: TrainState, path: str, mesh) -> TrainState:
  """Replaces the variables of a fresh `state` by those of a converted-weights directory (see config.init_from)."""
  loaded, metadata = checkpointing.load_variables(path)
  current = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)),
                         {"params": state.params, "batch_stats": state.batch_stats})
  merged, count = checkpointing.merge_variables(current, loaded, origin=f"config.init_from={path}")
  total = len(jax.tree.leaves(current))
  logging.info("Initialised %d of %d variables from %s (format %s, source %s).", count, total, path,
               metadata.get("format"), metadata.get("source"))
  merged = jax.device_put(merged, sharding.replicated(mesh))
  return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])


# ------------------------------------------------------------------------------------------------------- step

def spectrogram(config: ml_collections.ConfigDict, waveform: jax.Array) -> jax.Array:
  return audio.avgn_log_spectrogram(waveform, config.dataset.sample_rate)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, tx, config) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch; returns the new state and scalar metrics."""
  rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, gumbel_rng = jax.random.split(rng)
  rngs = {"dropout": dropout_rng, "gumbel": gumbel_rng}
  # uint8 frames from the hosts (dataset.normalize_on_device) are normalised here, on the devices.
  batch = dict(batch, image=input_pipeline.device_normalize_image(batch["image"], config.dataset.image_norm))

  if is_text_model(config):
    # T-VSL: canvas [own | partner], the mixture, the sources' classes as bank rows (conditioning) and as
    # dataset labels (the loss targets under label_order='official').
    class_rows = tvsl_lib.rows_of(state.consts["class_rows"], batch["source_class"])

    def apply(params):
      return model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], batch["waveform"],
                         state.consts["text_bank"], class_rows, batch["source_class"], train=True, rngs=rngs,
                         mutable=["batch_stats"])
  else:
    spec = batch["waveform"] if config.model_name in models.WAVEFORM_INPUT else spectrogram(
        config, batch["waveform"])

    def apply(params):
      return model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], spec,
                         batch["visual_class"], batch["audio_label"], train=True, rngs=rngs,
                         mutable=["batch_stats"])

  def loss_fn(params):
    (losses, _), new_model_state = apply(params)
    return losses["loss"], (losses, new_model_state)

  grads, (losses, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(losses)
  if config.model_name in models.FROZEN_TOWER_MODELS:  # norms of what trains (the towers' grads are zero)
    mask = tvsl_params.trainable_mask(params)
    metrics["grad_norm"] = optax.global_norm(jax.tree.map(lambda g, m: g if m else 0.0, grads, mask))
    metrics["param_norm"] = optax.global_norm(jax.tree.map(lambda p, m: p if m else 0.0, params, mask))
  else:
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
  metrics["learning_rate"] = learning_rate_schedule(config)(state.step)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=new_model_state.get("batch_stats", state.batch_stats), opt_state=opt_state)
  return new_state, metrics


def make_metrics_collection(metric_names):
  return clu_metrics.Collection.create(**{name: clu_metrics.Average.from_output(name) for name in metric_names})


# ------------------------------------------------------------------------------------------------------- loop

def build(config: ml_collections.ConfigDict, mesh):
  """Model, optimizer, abstract sharded state and the jitted train step for `config` on `mesh`."""
  model = create_model(config)
  tx = create_optimizer(config)
  init_fn = functools.partial(init_state, config, model, tx)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  init_jit = jax.jit(init_fn, out_shardings=state_sharding)
  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, config=config),
      in_shardings=(state_sharding, sharding.data_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sharding)
  return model, tx, init_jit, step_fn, abstract


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


def resolve_num_train_steps(config: ml_collections.ConfigDict) -> int:
  """config.num_train_steps, or ceil(num_epochs * |train split| / batch_size) when config.num_epochs is set."""
  if not config.get("num_epochs"):
    return config.num_train_steps
  ds = config.dataset
  num_examples = len(input_pipeline.open_source(ds.name, ds.train_split, ds.data_dir, per_process=False))
  steps = max(1, math.ceil(config.num_epochs * num_examples / config.batch_size))
  logging.info("num_epochs=%g over %d %s examples at batch %d: %d steps.", config.num_epochs, num_examples,
               ds.train_split, config.batch_size, steps)
  return steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it has checkpoints), evaluates at the end; returns eval results."""
  config = ml_collections.ConfigDict(config.to_dict())  # A private copy: resolved fields are written into it.
  config.num_train_steps = resolve_num_train_steps(config)
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # Mesh.
  mesh = sharding.create_mesh(config.mesh)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count())
  per_host_batch = sharding.per_host_batch_size(config.batch_size, mesh)

  # Model, optimizer, state.
  model, _, init_jit, step_fn, abstract_state = build(config, mesh)
  rng = jax.random.PRNGKey(config.seed)
  data_seed, param_seed = (int(x) for x in jax.random.randint(rng, (2,), 0, 2**31 - 1))

  # Data.
  train_data = input_pipeline.create_train_dataset(config, per_host_batch, seed=data_seed + jax.process_index())
  train_iter = iter(train_data)

  # Restore or initialise.
  manager = checkpointing.create_manager(workdir, save_interval_steps=config.checkpoint_every_steps,
                                         max_to_keep=config.keep_checkpoints)
  latest = manager.latest_step()
  if latest is not None:
    state = checkpointing.restore(manager, latest, abstract_state, train_iter)
    logging.info("Resumed from step %d in %s.", latest, workdir)
  else:
    state = init_jit(jax.random.PRNGKey(param_seed))
    logging.info("Initialised from scratch (seed %d).", config.seed)
    if config.init_from:
      state = apply_init_from(state, config.init_from, mesh)
  state = fill_consts(config, model, state, mesh)  # T-VSL: the text bank of the (restored) frozen text tower
  start_step = int(state.step)
  if start_step == 0:
    logging.info("Parameter overview:\n%s", parameter_overview.get_parameter_overview(state.params))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  logging.info("Model %s with %s parameters.", config.model_name, f"{num_params:,}")
  if config.model_name in models.FROZEN_TOWER_MODELS:
    logging.info("Trainable (outside the frozen AudioCLIP towers): %s.",
                 f"{tvsl_params.count_params(state.params, trainable=True):,}")
  writer.write_hparams({k: v for k, v in flatten_config(config).items()})

  report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
  collection_cls = None
  collection = None
  pending = None  # (metrics, step) of the previous step, checked one step late so dispatch stays async.
  step = start_step
  with mesh, StopRequest() as stop:
    while step < config.num_train_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.host_to_global(next(train_iter), mesh)
        state, metrics = step_fn(state, batch)
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
          eval_lib.evaluate_all(config, model, state.variables, mesh, workdir, step, writer=writer)
    if pending is not None:
      _check_finite(*pending, workdir)
    manager.wait_until_finished()
    results = eval_lib.evaluate_all(config, model, state.variables, mesh, workdir, step, writer=writer)
  writer.flush()
  return results


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


