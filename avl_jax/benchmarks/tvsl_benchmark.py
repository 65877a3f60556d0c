r"""T-VSL throughput: the frozen AudioCLIP towers and the training step, float32 against bfloat16 towers, and the
cached text bank against re-encoding it in every step.

  python -m avl_jax.benchmarks.tvsl_benchmark [--size=small|full] [--batch=8] [--steps=3] [--num_classes=221]

Everything runs in this process on JAX's default device, at the official input sizes (a [B, 224, 448, 3]
[own | partner] canvas, a [B, 220500] mixture of 5 s at 44.1 kHz), with random weights: shapes from
`jax.eval_shape` (`tvsl.params.abstract_variables`), values drawn in NumPy (nothing is downloaded or compiled
for the initialisation). `--size=full` is the released model (CLIP RN50, 12-layer text transformer,
ESResNeXt-50; 134 M frozen and 33.6 M trainable values); `--size=small` cuts the towers to one block per
stage and narrow image / text towers (the audio tower's channel widths are fixed by its architecture, so
small keeps the full-width FBSP front end and ResNeXt stages). On 2 CPU cores small takes minutes, not
seconds: its nine programs compile in about 1.5 min (XLA:CPU) and the full-width audio tower runs at a few
examples/s, so `--batch=2 --steps=1` is the quick form.

1. Frozen towers (eval-mode BatchNorm, token mode): image tower on the canvas (98 tokens), audio tower on
   the waveform (143 tokens) and text tower on the C class names of the bank (examples = names), each with
   float32 (baseline) and bfloat16 computation (`TVSL.dtype`, threaded
   into AudioCLIP by `tvsl.base.tower_model`; parameters, BatchNorm statistics, the FBSP front end, softmaxes
   and LayerNorms stay float32). examples/s.
2. The training step: forward, backward and an optax update in which only the trainable parameters move
   (`tvsl.optimizer(optax.adam(1e-2))`), `mutable=['batch_stats']` (bn_mode 'train_stats', the
   towers' BatchNorms on batch statistics), the text bank a precomputed [C, D] array (C = --num_classes, D =
   the joint width, 1024 for full), class_rows [B, 2]; the state (params, optimizer state, batch_stats) is
   donated and threaded from step to step, as in training. Rows: float32 towers, bfloat16 towers, and the
   naive baseline that re-encodes the text bank (C names x 77 tokens) with the frozen text tower inside every
   step, as one would without caching. The one-off cost of encoding the bank (`text_bank.encode_text_bank`,
   compile included) is printed above the table.
3. XLA's memory analysis of every compiled program (`jit(...).lower(...).compile().memory_analysis()`):
   arguments + outputs + temporaries - aliased (donated) buffers, MiB; '-' where the backend has none.

Each row: compile time (lower + compile, separate from the steady state), one untimed warm-up call, then
--steps timed calls, each ended by `jax.block_until_ready`; steps/s and examples/s over those calls, and the
ratio of examples/s against the row's baseline measured in the same run (bfloat16 against float32; the cached
step against the naive one). Timings are printed for comparison, never asserted. The paper trains with a
global batch of 256 (64 per GPU on 4 GPUs); --batch is the batch of this one device. A persistent JAX
compilation cache, where configured, shortens the compile times.
"""
import dataclasses
import time
from typing import Any, Callable

from absl import app
from absl import flags
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avl_jax.models import tvsl
from avl_jax.models.audioclip import model as audioclip_model
from avl_jax.models.audioclip import text as text_lib
from avl_jax.models.tvsl import base as tvsl_base
from avl_jax.models.tvsl import layers as tvsl_layers
from avl_jax.models.tvsl import params as tvsl_params
from avl_jax.models.tvsl import text_bank as text_bank_lib

_SIZE = flags.DEFINE_enum("size", "small", ["small", "full"],
                          "Tower sizes: 'full' = the released T-VSL / AudioCLIP, 'small' = one block per stage and "
                          "narrow image / text towers (a quick CPU run).")
_BATCH = flags.DEFINE_integer("batch", None, "Examples per step on this device (default: 8 for small, 64 for "
                              "full, the official per-GPU batch; the paper's global batch is 256).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls of each program after its compile and one warm-up call.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 221, "Rows C of the text bank (VGGSound: 221).")

CANVAS_HW = (224, 448)  # [own | partner] frames, 7x14 = 98 image tokens.
NUM_SAMPLES = 220500  # 5 s at 44.1 kHz: 143 audio tokens.
NUM_SOURCES = 2  # class_rows [B, 2]: the two mixed sources.
DEFAULT_BATCH = {"small": 8, "full": 64}
SIZES = {
    "full": {},
    "small": dict(embed_dim=256, image_layers=(1, 1, 1, 1), image_width=16, image_heads=8, text_width=128,
                  text_layers=2, text_heads=4, audio_layers=(1, 1, 1, 1), adapter_hidden=512),
}
LEARNING_RATE = 1e-2
SOT_ID, EOT_ID = 49406, 49407  # CLIP's <|startoftext|> and <|endoftext|>.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Row:
  """One measured program.

  Attributes:
    name: row key ('tower_image_float32', 'step_cached_bfloat16', ...).
    batch: examples per call.
    compile_s: lower + compile, seconds.
    warmup_s: the first (untimed) call, seconds.
    step_s: mean seconds per timed call.
    memory_mib: XLA's compiled-memory estimate in MiB, or None.
    baseline: name of the row the ratio is taken against, or None (a baseline itself).
    ratio: examples/s of this row over the baseline's (1.0 for a baseline).
  """
  name: str
  batch: int
  compile_s: float
  warmup_s: float
  step_s: float
  memory_mib: float | None
  baseline: str | None = None
  ratio: float = 1.0

  @property
  def steps_per_s(self) -> float:
    return 1.0 / self.step_s

  @property
  def examples_per_s(self) -> float:
    return self.batch / self.step_s


def model_for(size: str, dtype: Any = jnp.float32) -> tvsl.TVSL:
  """T-VSL with the official switches (bn_mode 'train_stats') at the given tower size and tower dtype."""
  return tvsl.TVSL(**SIZES[size], dtype=dtype)


def random_variables(model: tvsl.TVSL, seed: int = 0) -> dict[str, Any]:
  """Random float32 NumPy variables of `model`, from its abstract shapes (no compiled init).

  Towers: kernels N(0, 1 / fan_in) (activations stay O(1) through eval-mode BatchNorm), embeddings N(0, 0.02^2),
  BatchNorm scale 1 / bias 0 / running mean 0 / running variance 1, the FBSP basis at its official init plus
  noise (fb > 0: sqrt(fb) would be NaN), temperatures 100. Adapters U(+-1/sqrt(fan_in)) as PyTorch; gates 0.5.
  """
  abstract = tvsl_params.abstract_variables(model)
  rng = np.random.default_rng(seed)
  params = {}
  for path, leaf in traverse_util.flatten_dict(abstract["params"]).items():
    name, shape = path[-1], leaf.shape
    if path[0] != "audioclip":  # Trainable: adapters, fusion_proj, gates, logit_scale_ml.
      if len(path) == 1:
        value = np.full(shape, np.log(100.0) if name == tvsl_layers.STAGE1_SCALE else 0.5)
      else:
        fan_in = abstract["params"][path[0]][path[1]]["kernel"].shape[0]
        value = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
    elif name in ("kernel", "in_proj_kernel", "text_projection"):
      value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
    elif name in ("embedding", "positional_embedding"):
      value = 0.02 * rng.standard_normal(shape, np.float32)
    elif name == "scale":
      value = np.ones(shape)
    elif name in ("bias", "in_proj_bias"):
      value = np.zeros(shape)
    elif name == "m":
      value = 0.01 * rng.standard_normal(shape)
    elif name == "fb":
      value = 1.0 + 0.01 * rng.standard_normal(shape)
    elif name == "fc":
      value = np.arange(shape[0])
    elif name.startswith("logit_scale"):
      value = np.full(shape, np.log(100.0))
    else:
      raise ValueError(f"No random initialisation rule for parameter {'/'.join(path)}.")
    params[path] = np.asarray(value, leaf.dtype)
  stats = {path: (np.zeros if path[-1] == "mean" else np.ones)(leaf.shape, leaf.dtype)
           for path, leaf in traverse_util.flatten_dict(abstract["batch_stats"]).items()}
  return {"params": traverse_util.unflatten_dict(params), "batch_stats": traverse_util.unflatten_dict(stats)}


def random_inputs(batch: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """canvas [B, 224, 448, 3], waveform [B, 220500] (a mixture in [-2, 2]), class_rows [B, 2] (two distinct
  classes per sample) and text ids [C, 77] (SOT, 1-8 random word ids, EOT, zero padding)."""
  if num_classes < NUM_SOURCES:
    raise ValueError(f"num_classes={num_classes}: need at least {NUM_SOURCES} classes.")
  rng = np.random.default_rng(seed)
  ids = np.zeros((num_classes, text_lib.CONTEXT_LENGTH), np.int32)
  for row in range(num_classes):
    words = rng.integers(1, SOT_ID, int(rng.integers(1, 9)))
    ids[row, :len(words) + 2] = [SOT_ID, *words, EOT_ID]
  return {
      "canvas": rng.standard_normal((batch, *CANVAS_HW, 3), np.float32),
      "waveform": rng.uniform(-2, 2, (batch, NUM_SAMPLES)).astype(np.float32),
      "class_rows": np.stack([rng.choice(num_classes, NUM_SOURCES, replace=False) for _ in range(batch)]
                             ).astype(np.int32),
      "ids": ids,
  }


def _memory_mib(compiled) -> float | None:
  """XLA's buffer assignment of a compiled program: arguments + outputs + temporaries - aliased (donated), MiB;
  None where the backend has no memory analysis. (`peak_memory_in_bytes` is not used: XLA:CPU reports about
  the argument size there.)"""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
           - stats.alias_size_in_bytes)
  return total / 2**20


def measure(name: str, fn: Callable[..., Any], args: tuple, *, batch: int, steps: int, carry: int = 0,
            donate: tuple[int, ...] = ()) -> Row:
  """Compiles `fn` for `args` ahead of time, calls it once untimed, then `steps` times.

  Args:
    name: row key.
    fn: the function to jit.
    args: its arguments (device arrays / pytrees).
    batch: examples per call.
    steps: timed calls.
    carry: the first `carry` outputs replace the first `carry` arguments in the next call (a training step's
      state), so donated buffers are never reused.
    donate: argnums to donate.

  Returns:
    The Row (no baseline yet).
  """
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  compile_s = time.perf_counter() - start

  def call(args: tuple) -> tuple:
    out = jax.block_until_ready(compiled(*args))
    return tuple(out[:carry]) + tuple(args[carry:]) if carry else args

  start = time.perf_counter()
  args = call(args)
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    args = call(args)
  step_s = (time.perf_counter() - start) / steps
  return Row(name, batch, compile_s, warmup_s, step_s, _memory_mib(compiled))


def tower_functions(model: tvsl.TVSL) -> dict[str, Callable[..., jax.Array]]:
  """{'image': f(variables, canvas) -> [B, 98, D], 'audio': f(variables, waveform) -> [B, 143, D], 'text':
  f(variables, ids) -> [C, D]}: the frozen AudioCLIP towers of `model` (image and audio in token mode, eval-mode
  BatchNorm; text: the class-name embeddings of the bank), on AudioCLIP variables."""
  tower = tvsl_base.tower_model(model)
  return {
      "text": lambda variables, ids: tower.apply(variables, ids, method="encode_text"),
      "image": lambda variables, canvas: tower.apply(variables, canvas, train=False, return_tokens=True,
                                                     method="encode_image"),
      "audio": lambda variables, waveform: tower.apply(variables, waveform, train=False, return_tokens=True,
                                                       method="encode_audio")[0],
  }


def train_step_function(model: tvsl.TVSL, tx: optax.GradientTransformation, *, naive: bool) -> Callable[..., Any]:
  """step(params, opt_state, batch_stats, canvas, waveform, bank_or_ids, class_rows) -> (params, opt_state,
  batch_stats, loss).

  naive=False: bank_or_ids is the cached unit text bank [C, D]. naive=True: it is the token ids [C, 77] and the
  frozen text tower encodes the bank inside the step (no gradient reaches the tower either way).
  """
  tower = tvsl_base.tower_model(model)

  def step(params, opt_state, batch_stats, canvas, waveform, bank_or_ids, class_rows):
    def loss_fn(params):
      bank = bank_or_ids
      if naive:
        bank = audioclip_model.normalize(
            tower.apply({"params": params["audioclip"]}, bank_or_ids, method="encode_text"))
      (losses, _), state = model.apply({"params": params, "batch_stats": batch_stats}, canvas, waveform, bank,
                                       class_rows, train=True, mutable=["batch_stats"])
      return losses["loss"], state["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_stats, loss

  return step


def run_benchmark(size: str = "small", batch: int | None = None, steps: int = 3, num_classes: int = 221,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every measurement; returns {'rows': {name: Row}, 'info': {...}}.

  Rows: tower_{image,audio,text}_{float32,bfloat16} (text: examples = the C bank names), step_naive_float32,
  step_cached_float32, step_cached_bfloat16.
  """
  batch = batch or DEFAULT_BATCH[size]
  device = jax.devices()[0]
  log(f"T-VSL benchmark: size={size}, batch={batch}, steps={steps}, num_classes={num_classes}; device "
      f"{device.platform}:{device.device_kind} ({jax.device_count()} device(s), only the first used)")
  start = time.perf_counter()
  host_variables = random_variables(model_for(size))
  host_inputs = random_inputs(batch, num_classes)
  params = host_variables["params"]
  info = {"size": size, "batch": batch, "steps": steps, "num_classes": num_classes,
          "device": f"{device.platform}:{device.device_kind}",
          "trainable_params": tvsl.count_params(params, trainable=True),
          "frozen_params": tvsl.count_params(params, trainable=False)}
  log(f"random variables: {info['trainable_params']:,} trainable + {info['frozen_params']:,} frozen parameters "
      f"in {time.perf_counter() - start:.1f} s")

  start = time.perf_counter()
  bank = text_bank_lib.encode_text_bank(host_variables, host_inputs["ids"], model_for(size))
  info["text_bank_encode_s"] = time.perf_counter() - start
  log(f"text bank [{bank.shape[0]}, {bank.shape[1]}] encoded once: {info['text_bank_encode_s']:.2f} s "
      f"(compile included)")

  rows = {}
  tower_variables = jax.device_put({c: host_variables[c]["audioclip"] for c in host_variables})
  tower_inputs = {"image": jax.device_put(host_inputs["canvas"]), "audio": jax.device_put(host_inputs["waveform"]),
                  "text": jax.device_put(host_inputs["ids"])}
  for tower_name in ("image", "audio", "text"):
    for dtype_name, dtype in DTYPES.items():
      name = f"tower_{tower_name}_{dtype_name}"
      fn = tower_functions(model_for(size, dtype))[tower_name]
      examples = num_classes if tower_name == "text" else batch  # the text tower encodes the C bank names
      rows[name] = measure(name, fn, (tower_variables, tower_inputs[tower_name]), batch=examples, steps=steps)
      log(f"  measured {name}")
  del tower_variables

  tx = tvsl.optimizer(optax.adam(LEARNING_RATE))
  batch_args = jax.device_put((host_inputs["canvas"], host_inputs["waveform"]))
  for name, dtype, naive in (("step_naive_float32", jnp.float32, True), ("step_cached_float32", jnp.float32, False),
                             ("step_cached_bfloat16", jnp.bfloat16, False)):
    state_params = jax.tree.map(jnp.array, params)  # Fresh buffers: each step donates its state.
    state = (state_params, jax.jit(tx.init)(state_params), jax.tree.map(jnp.array, host_variables["batch_stats"]))
    bank_or_ids = jnp.asarray(host_inputs["ids"] if naive else bank)
    fn = train_step_function(model_for(size, dtype), tx, naive=naive)
    args = (*state, *batch_args, bank_or_ids, jnp.asarray(host_inputs["class_rows"]))
    rows[name] = measure(name, fn, args, batch=batch, steps=steps, carry=3, donate=(0, 1, 2))
    del state, state_params, args
    log(f"  measured {name}")

  baselines = {"tower_image_bfloat16": "tower_image_float32", "tower_audio_bfloat16": "tower_audio_float32",
               "tower_text_bfloat16": "tower_text_float32",
               "step_cached_float32": "step_naive_float32", "step_cached_bfloat16": "step_cached_float32"}
  for name, baseline in baselines.items():
    rows[name].baseline = baseline
    rows[name].ratio = rows[name].examples_per_s / rows[baseline].examples_per_s
  return {"rows": rows, "info": info}


def format_table(rows: dict[str, Row]) -> str:
  """The result rows as a fixed-width text table."""
  header = (f"{'row':<22} {'compile s':>9} {'warm-up s':>9} {'s/step':>9} {'steps/s':>9} {'examples/s':>10} "
            f"{'ratio':>7}  {'vs':<20} {'memory MiB':>10}")
  lines = [header, "-" * len(header)]
  for row in rows.values():
    memory = f"{row.memory_mib:.0f}" if row.memory_mib is not None else "-"
    lines.append(f"{row.name:<22} {row.compile_s:>9.2f} {row.warmup_s:>9.3f} {row.step_s:>9.4f} "
                 f"{row.steps_per_s:>9.3f} {row.examples_per_s:>10.2f} {row.ratio:>6.2f}x  "
                 f"{row.baseline or '(baseline)':<20} {memory:>10}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = run_benchmark(_SIZE.value, _BATCH.value, _STEPS.value, _NUM_CLASSES.value)
  print(format_table(result["rows"]))
  print("ratio: examples/s over the 'vs' row of this run (bfloat16 / float32 towers; cached / naive text bank). "
        "Timings are for comparison only.")


if __name__ == "__main__":
  app.run(main)
