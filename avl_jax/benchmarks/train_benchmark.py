r"""Throughput of the real training step (`avl_jax.train.build`) of a config, in float32, bfloat16 and with remat.

  python -m avl_jax.benchmarks.train_benchmark [--config=configs/avgn_vgginstruments_multi.py[:args]]
      [--variants=fp32,bf16,remat,bf16_remat,fp32_reference] [--baseline=fp32] [--mesh=data:-1] [--batch=16]
      [--steps=3]

Default: the paper-size AVGN step (configs/avgn_vgginstruments_multi.py, batch B=16, C=37 classes, ResNet-18s of
width 64, D=512, depth 3, 224 px frames, 3 s of 16 kHz audio), on every device of JAX's default backend.

What runs: exactly the jitted step of `train.build(config, mesh)` (the one `train.train_and_evaluate` calls:
the on-device uint8 frame normalisation, forward with train-mode BatchNorm / DropPath, backward, the optax update,
the grad / param norms), its state initialised by `setup.init_fn` (sharded by `config.sharding_rules` and the mesh)
and donated from step to step, on ONE synthetic global batch with the shapes and dtypes that
`input_pipeline.create_train_dataset` yields for the config (`synthetic_batch`: image uint8 [B, S, S, 3] with
dataset.normalize_on_device (float32 otherwise, [B, S, 2S, 3] with dataset.canvas), waveform float32 [B, N],
visual_class int32 [B], audio_label float32 [B, C] multi-hot, source_class int32 [B, 2] ([B, 1] without mix)),
placed with `sharding.host_to_global`. No dataset and no weights are read. The family's constants come from
`train.make_consts`.

Variants (each an unlocked copy of the config): fp32 = config.model.dtype 'float32'; bf16 = 'bfloat16'
(parameters, BatchNorm statistics, spectrogram, softmaxes, LayerNorm statistics, losses and maps stay float32:
avl_jax/models/avgn.py); remat = config.model.remat True (ResNet blocks, AttnBlocks and GroupingBlocks
rematerialised); bf16_remat = both; fp32_reference = fp32 traced under `layers.reference_kernels()` (the plain
formulations that the library's faster, function-preserving kernels replaced, e.g. the stem max-pool's gradient
as XLA's select-and-scatter): `--variants=fp32_reference,fp32 --baseline=fp32_reference` shows before/after.

Per variant:
* lower s / compile s: `step_fn.lower(state, batch, consts)` and `.compile()`, timed separately (a warm
  persistent compilation cache shortens compile; the binaries' `config.compilation_cache_dir` is not enabled here).
* loss: of the first (warm-up) call, from the same initial state and batch for every variant.
* s/step (mean) and min s over --steps timed calls after that warm-up call, each call `block_until_ready`;
  steps/s = 1 / mean, examples/s = B / mean, vs baseline = examples/s over the --baseline row (default fp32; the
  first variant where it is not measured) of the same run. All variants are compiled and warmed up first, then
  their timed steps alternate (round r in order, round r + 1 reversed), so that load changes hit all alike.
* GFLOP/ex: XLA's count of the compiled step (`compiled.cost_analysis()['flops']`, which counts one device's
  partition) x mesh devices / B. Not the model's nominal FLOPs: it includes the backward pass, the optimizer,
  remat's recomputation and everything XLA emits.
* achieved GF/s = GFLOP/ex x examples/s; peak GF/s = the best of --peak_reps timed calls of a jitted
  [n, K, K] @ [n, K, K] matmul (K = --peak_size, n = mesh devices, one matmul per device, sharded over the same
  devices), float32 for float32 rows and bfloat16 for bfloat16 rows, measured in this run before the
  variants' steps; % peak = achieved / peak. (Fake CPU devices share the host's cores: the sharded matmul measures that.)
* temp MiB / total MiB: XLA's buffer assignment of one device (`compiled.memory_analysis()`): temporaries, and
  arguments + outputs + temporaries - aliased (donated) bytes; '-' where the backend has none.

Timings depend on the machine's load: on a shared CPU they are noisy; compare rows of one run only.
"""
import dataclasses
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np

from avl_jax import models
from avl_jax import sharding
from avl_jax import train
from avl_jax.families import base
from avl_jax.models import layers

DEFAULT_CONFIG = "configs/avgn_vgginstruments_multi.py"
DEFAULT_BATCH = 16  # the paper-size step: B = 16 (AVGN's per-GPU batch)
VARIANTS = {  # name -> (config.model.dtype, config.model.remat)
    "fp32": ("float32", False),
    "bf16": ("bfloat16", False),
    "remat": ("float32", True),
    "bf16_remat": ("bfloat16", True),
    # The fp32 step traced with `layers.reference_kernels()`: the plain formulations the library's faster kernels
    # replaced (the max-pool gradient as XLA's select-and-scatter), i.e. "before" next to fp32's "after".
    "fp32_reference": ("float32", False),
}
REFERENCE_VARIANTS = frozenset({"fp32_reference"})
BASELINE = "fp32"



@dataclasses.dataclass
class Row:
  """One measured variant.

  Attributes:
    name: variant ('fp32', 'bf16', ...).
    dtype: config.model.dtype of the variant.
    remat: config.model.remat of the variant.
    batch: global examples per step.
    lower_s: seconds of `step_fn.lower(...)`.
    compile_s: seconds of `.compile()`.
    loss: the loss of the first (warm-up) step.
    step_s: mean seconds per timed step.
    min_step_s: fastest timed step, seconds.
    flops_per_example: XLA's FLOPs of one step (all devices) / batch, or None.
    peak_flops: the measured matmul FLOP/s of the variant's dtype (all mesh devices).
    temp_mib: XLA's temporaries of one device, MiB, or None.
    memory_mib: arguments + outputs + temporaries - aliased of one device, MiB, or None.
    ratio: examples/s over the baseline row of the same run.
  """
  name: str
  dtype: str
  remat: bool
  batch: int
  lower_s: float
  compile_s: float
  loss: float
  step_s: float
  min_step_s: float
  flops_per_example: float | None
  peak_flops: float
  temp_mib: float | None
  memory_mib: float | None
  ratio: float | None = None

  @property
  def steps_per_s(self) -> float:
    return 1.0 / self.step_s

  @property
  def examples_per_s(self) -> float:
    return self.batch / self.step_s

  @property
  def achieved_flops(self) -> float | None:
    return None if self.flops_per_example is None else self.flops_per_example * self.examples_per_s

  @property
  def peak_fraction(self) -> float | None:
    return None if self.achieved_flops is None else self.achieved_flops / self.peak_flops


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
  """'data:2,fsdp:-1' -> (('data', 2), ('fsdp', -1))."""
  axes = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, size = item.partition(":")
    if not sep:
      raise ValueError(f"--mesh={text!r}: each axis is name:size, e.g. 'data:-1'.")
    axes.append((name.strip(), int(size)))
  return tuple(axes)


def variant_config(config: ml_collections.ConfigDict, variant: str, *, batch: int | None = None,
                   mesh_axes: Sequence[tuple[str, int]] | None = None) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with the variant's config.model.dtype / remat (remat only where it is True)."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; expected one of {sorted(VARIANTS)}.")
  dtype, remat = VARIANTS[variant]
  config = ml_collections.ConfigDict(config.to_dict())
  fields = models.model_fields(models.MODELS[config.model_name])
  for name, value, needed in (("dtype", dtype, dtype != "float32"), ("remat", remat, remat)):
    if name in fields:
      config.model[name] = value
    elif needed:
      raise ValueError(f"Variant {variant!r} sets config.model.{name}, which model {config.model_name!r} does "
                       f"not have (its fields: {fields}).")
  if batch:
    config.batch_size = batch
  if mesh_axes:
    config.mesh = tuple(mesh_axes)
  return config


def synthetic_batch(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A host batch with the keys, shapes and dtypes of `input_pipeline.create_train_dataset` for `config`.

  image: uint8 [B, S, S, 3] (normalised float32 with dataset.normalize_on_device=False; [B, S, 2S, 3] with
  dataset.canvas); waveform float32 [B, N] (own + partner in [-2, 2] with dataset.mix, else [-1, 1]);
  visual_class int32 [B]; audio_label float32 [B, C] (own + partner one-hot); source_class int32 [B, 2] ([B, 1]
  without mix). The partner's class differs from the own class, as in `train_transforms.MixWithPartner`.
  """
  ds = config.dataset
  rng = np.random.default_rng(seed)
  size = ds.image_size
  shape = (batch, size, 2 * size if ds.get("canvas", False) else size, 3)
  if ds.get("normalize_on_device", True):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
  else:
    image = rng.standard_normal(shape).astype(np.float32)
  num_classes = ds.num_classes
  own = rng.integers(0, num_classes, batch).astype(np.int32)
  waveform = rng.uniform(-1.0, 1.0, (batch, base.num_samples(config))).astype(np.float32)
  audio_label = np.eye(num_classes, dtype=np.float32)[own]
  source_class = own[:, None]
  if ds.mix:
    if num_classes < 2:
      raise ValueError("dataset.mix needs at least two classes.")
    partner = ((own + rng.integers(1, num_classes, batch)) % num_classes).astype(np.int32)
    waveform = waveform + rng.uniform(-1.0, 1.0, waveform.shape).astype(np.float32)
    audio_label = audio_label + np.eye(num_classes, dtype=np.float32)[partner]
    source_class = np.stack([own, partner], axis=1)
  return {"image": image, "waveform": waveform, "visual_class": own, "audio_label": audio_label,
          "source_class": source_class.astype(np.int32)}


def _flops(compiled) -> float | None:
  """XLA's flop count of a compiled program (one device's partition); None where the backend gives none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else None
  if not analysis or analysis.get("flops") is None:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def _memory_mib(compiled) -> tuple[float | None, float | None]:
  """(temporaries, arguments + outputs + temporaries - aliased) of one device in MiB, or (None, None)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None, None
  if stats is None:
    return None, None
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
           - stats.alias_size_in_bytes)
  return stats.temp_size_in_bytes / 2**20, total / 2**20


def measure_peak(mesh, dtype: Any, size: int = 4096, reps: int = 3) -> float:
  """FLOP/s of the best of `reps` calls of a jitted [n, K, K] @ [n, K, K] matmul sharded over the mesh's n devices.

  One K x K matmul per device (2 K^3 FLOPs each), inputs drawn once; compile and one warm-up call untimed.
  """
  devices = mesh.devices.reshape(-1)
  flat = jax.sharding.Mesh(devices, ("all",))
  spec = NamedSharding(flat, P("all"))
  n = len(devices)
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  make = jax.jit(lambda k: jax.random.normal(k, (n, size, size), jnp.float32).astype(dtype), out_shardings=spec)
  a, b = make(key_a), make(key_b)
  matmul = jax.jit(lambda x, y: jnp.einsum("nij,njk->nik", x, y), out_shardings=spec).lower(a, b).compile()
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(max(reps, 1)):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n * size**3 / best


def _same_structure(a: Any, b: Any) -> bool:
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  return jax.tree.structure(a) == jax.tree.structure(b) and shapes(a) == shapes(b)


def run_benchmark(config: ml_collections.ConfigDict, variants: Sequence[str] = ("fp32", "bf16"), *,
                  batch: int | None = DEFAULT_BATCH, mesh_axes: Sequence[tuple[str, int]] | None = None,
                  steps: int = 3, peak_size: int = 4096, peak_reps: int = 3, seed: int = 0,
                  baseline: str = BASELINE, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Measures every variant (module docstring); returns {'rows': {variant: Row}, 'info': {...}}.

  Every variant is compiled and warmed up first; then the timed steps alternate between the variants (round r
  runs them in order, round r + 1 in reverse order), so that a change of the machine's load hits every variant
  alike and the ratios of one run compare like with like.

  Args:
    config: the experiment config (locked or not; it is copied).
    variants: keys of VARIANTS, measured in this order.
    batch: global batch B (None or 0: config.batch_size).
    mesh_axes: the mesh (None: config.mesh).
    steps: timed steps per variant after one warm-up step.
    peak_size: K of the peak matmul.
    peak_reps: timed peak-matmul calls (best counts).
    seed: parameter init and synthetic batch seed.
    baseline: the variant the ratios are relative to (the first variant where it is not measured).
    log: progress lines.
  """
  if steps < 1:
    raise ValueError(f"steps={steps} must be at least 1.")
  variants = tuple(dict.fromkeys(variants))
  if not variants:
    raise ValueError("No variants to measure.")
  for variant in variants:
    variant_config(config, variant)  # unknown variants / fields fail before any compile
  if baseline not in VARIANTS:
    raise ValueError(f"Unknown baseline {baseline!r}; expected one of {sorted(VARIANTS)}.")
  first = variant_config(config, variants[0], batch=batch, mesh_axes=mesh_axes)
  mesh = sharding.create_mesh(first.mesh)
  global_batch = first.batch_size
  sharding.per_host_batch_size(global_batch, mesh)  # divisibility check
  device = jax.devices()[0]
  info = {"config_model": first.model_name, "batch": global_batch, "steps": steps,
          "mesh": dict(mesh.shape), "devices": mesh.size, "device": f"{device.platform}:{device.device_kind}",
          "num_samples": base.num_samples(first), "num_classes": first.dataset.num_classes}
  host_batch = synthetic_batch(first, global_batch // jax.process_count(), seed)
  info["image"] = tuple(host_batch["image"].shape)
  log(f"train step benchmark: model {first.model_name}, B={global_batch}, C={first.dataset.num_classes}, "
      f"image {host_batch['image'].dtype}{list(host_batch['image'].shape)}, waveform "
      f"{list(host_batch['waveform'].shape)} ({first.dataset.audio_seconds:g} s at {first.dataset.sample_rate} Hz); "
      f"mesh {dict(mesh.shape)} of {device.platform}:{device.device_kind}; {steps} timed steps per variant, "
      f"alternating between the variants")

  peaks: dict[str, float] = {}
  for dtype_name in dict.fromkeys(VARIANTS[v][0] for v in variants):
    peaks[dtype_name] = measure_peak(mesh, jnp.dtype(dtype_name), peak_size, peak_reps)
    log(f"  peak {dtype_name} matmul ({mesh.size} x [{peak_size}, {peak_size}] @ [{peak_size}, {peak_size}]): "
        f"{peaks[dtype_name] / 1e9:.1f} GFLOP/s")
  host_state, state_tree = None, None
  live: dict[str, dict[str, Any]] = {}  # variant -> compiled step, its state and inputs, compile stats
  with jax.set_mesh(mesh):
    for variant in variants:
      cfg = variant_config(config, variant, batch=batch, mesh_axes=mesh_axes)
      setup = train.build(cfg, mesh)
      if host_state is None or not _same_structure(setup.abstract_state, state_tree):
        start = time.perf_counter()
        state = setup.init_fn(jax.random.PRNGKey(seed))
        host_state, state_tree = jax.device_get(state), setup.abstract_state
        log(f"  initialised the state ({variant}) in {time.perf_counter() - start:.1f} s (compile included)")
      # Fresh buffers with the state's shardings for every variant (each step donates its state).
      state = jax.device_put(host_state, jax.tree.map(lambda x: x.sharding, setup.abstract_state))
      consts = train.make_consts(setup, state.params, mesh)
      global_batch_arrays = sharding.host_to_global(host_batch, mesh)

      start = time.perf_counter()
      with layers.reference_kernels(variant in REFERENCE_VARIANTS):  # trace-time switch
        lowered = setup.step_fn.lower(state, global_batch_arrays, consts)
      lower_s = time.perf_counter() - start
      start = time.perf_counter()
      compiled = lowered.compile()
      compile_s = time.perf_counter() - start

      state, metrics = compiled(state, global_batch_arrays, consts)
      jax.block_until_ready((state, metrics))
      live[variant] = {"compiled": compiled, "state": state, "batch": global_batch_arrays, "consts": consts,
                       "lower_s": lower_s, "compile_s": compile_s, "loss": float(metrics["loss"]), "times": []}
      del metrics
      log(f"  compiled {variant} (lower {lower_s:.1f} s, compile {compile_s:.1f} s)")

    for round_index in range(steps):
      for variant in (variants if round_index % 2 == 0 else variants[::-1]):
        entry = live[variant]
        start = time.perf_counter()
        entry["state"], metrics = entry["compiled"](entry["state"], entry["batch"], entry["consts"])
        jax.block_until_ready((entry["state"], metrics))
        entry["times"].append(time.perf_counter() - start)
      log(f"  round {round_index + 1}/{steps}: " + ", ".join(
          f"{variant} {live[variant]['times'][-1]:.3f} s" for variant in variants))

  rows: dict[str, Row] = {}
  for variant in variants:
    entry = live.pop(variant)
    dtype_name, remat = VARIANTS[variant]
    flops = _flops(entry["compiled"])
    temp_mib, memory_mib = _memory_mib(entry["compiled"])
    times = entry["times"]
    rows[variant] = Row(
        name=variant, dtype=dtype_name, remat=remat, batch=global_batch, lower_s=entry["lower_s"],
        compile_s=entry["compile_s"], loss=entry["loss"], step_s=float(np.mean(times)),
        min_step_s=float(np.min(times)),
        flops_per_example=None if flops is None else flops * mesh.size / global_batch,
        peak_flops=peaks[dtype_name], temp_mib=temp_mib, memory_mib=memory_mib)
    del entry
  reference = baseline if baseline in rows else variants[0]
  for row in rows.values():
    row.ratio = row.examples_per_s / rows[reference].examples_per_s
  info["peak_flops"] = peaks
  info["baseline"] = reference
  return {"rows": rows, "info": info}


COLUMNS = ("variant", "lower s", "compile s", "loss", "s/step", "min s", "steps/s", "examples/s", "vs baseline",
           "GFLOP/ex", "GF/s", "peak GF/s", "% peak", "temp MiB", "total MiB")


def format_table(rows: dict[str, Row]) -> str:
  """The rows as a fixed-width text table with COLUMNS."""
  def opt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)

  widths = [max(10, len(c)) for c in COLUMNS]
  widths[0] = max(10, *(len(name) for name in rows)) if rows else 10
  lines = [" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths)))]
  lines.append("-" * len(lines[0]))
  for row in rows.values():
    achieved = row.achieved_flops
    cells = [row.name, f"{row.lower_s:.2f}", f"{row.compile_s:.2f}", f"{row.loss:.4f}", f"{row.step_s:.4f}",
             f"{row.min_step_s:.4f}", f"{row.steps_per_s:.3f}", f"{row.examples_per_s:.2f}",
             opt(row.ratio, ".2f") + ("x" if row.ratio is not None else ""),
             opt(None if row.flops_per_example is None else row.flops_per_example / 1e9, ".2f"),
             opt(None if achieved is None else achieved / 1e9, ".1f"), f"{row.peak_flops / 1e9:.1f}",
             opt(None if row.peak_fraction is None else 100 * row.peak_fraction, ".1f"),
             opt(row.temp_mib, ".0f"), opt(row.memory_mib, ".0f")]
    lines.append(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
  return "\n".join(lines)


def benchmark_main(config: ml_collections.ConfigDict, variants: Sequence[str], *, mesh: str = "",
                   batch: int | None = DEFAULT_BATCH, steps: int = 3, peak_size: int = 4096, peak_reps: int = 3,
                   baseline: str = BASELINE, log: Callable[[str], None] = print) -> dict[str, Any]:
  """What `main` does with parsed flags: runs the benchmark and prints the table; returns run_benchmark's dict."""
  result = run_benchmark(config, tuple(variants), batch=batch or None, mesh_axes=parse_mesh(mesh) or None,
                         steps=steps, peak_size=peak_size, peak_reps=peak_reps, baseline=baseline, log=log)
  log(format_table(result["rows"]))
  log(f"vs baseline: examples/s over the {result['info']['baseline']} row of this run (same process, timed steps "
      "alternating between the variants). GFLOP/ex: XLA's count of the whole step (forward, "
      "backward, update) per example; % peak: achieved over this run's matmul peak of the row's dtype. Timings are "
      "for comparison within one run only (noisy on a shared machine).")
  return result


def _define_flags() -> None:
  """The binary's flags, defined only when it runs (tests import this module beside other binaries)."""
  global _CONFIG, _VARIANTS, _MESH, _BATCH, _STEPS, _PEAK_SIZE, _PEAK_REPS, _BASELINE
  _CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (its model and input "
                                            "shapes; the dataset is not read).", lock_config=True)
  _VARIANTS = flags.DEFINE_list("variants", ["fp32", "bf16"], f"Variants to measure, from {sorted(VARIANTS)}.")
  _MESH = flags.DEFINE_string("mesh", "", "Device mesh 'axis:size,...', e.g. 'data:-1' or 'data:1,fsdp:-1' "
                              "(default: config.mesh).")
  _BATCH = flags.DEFINE_integer("batch", DEFAULT_BATCH, "Global batch B (0: config.batch_size).")
  _STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per variant after its compile and one warm-up call "
                                "(alternating between the variants).")
  _BASELINE = flags.DEFINE_string("baseline", BASELINE, "Variant the 'vs baseline' ratios are relative to "
                                  "(the first variant where it is not measured), e.g. fp32_reference with "
                                  "--variants=fp32_reference,fp32 for the library's before/after.")
  _PEAK_SIZE = flags.DEFINE_integer("peak_size", 4096, "K of the K x K @ K x K matmul that measures the peak.")
  _PEAK_REPS = flags.DEFINE_integer("peak_reps", 3, "Timed calls of the peak matmul (the best one counts).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  benchmark_main(_CONFIG.value, _VARIANTS.value, mesh=_MESH.value, batch=_BATCH.value, steps=_STEPS.value,
                 peak_size=_PEAK_SIZE.value, peak_reps=_PEAK_REPS.value, baseline=_BASELINE.value)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
