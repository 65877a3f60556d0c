"""config.model.dtype / config.model.remat of the AVGN family, and the train-step benchmark (no timings asserted)."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avl_jax import config_lib
from avl_jax import families
from avl_jax import input_pipeline
from avl_jax import train
from avl_jax.benchmarks import train_benchmark
from avl_jax.models import ezvsl
from avl_jax.pipeline import image_ops

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RNGS = {"dropout": jax.random.PRNGKey(1), "gumbel": jax.random.PRNGKey(2)}


def _init_key():
  """An 'rbg' key: XLA:CPU compiles threefry parameter initialisers several times slower (avl_jax/train.py)."""
  return jax.random.key(0, impl="rbg")


def _unlocked(config, **model_fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(model_fields)
  return config


def _abstract_variables(config):
  family = families.of(config)
  model = family.create_model(config)
  return jax.eval_shape(lambda: model.init({"params": _init_key()}, **family.dummy_inputs(config, 2), train=False))


def _loss_and_grads(config, variables=None):
  """(variables, loss, grads, new batch_stats) of the family's training forward on a synthetic batch."""
  family = families.of(config)
  model = family.create_model(config)
  if variables is None:
    variables = jax.jit(lambda: model.init({"params": _init_key()}, **family.dummy_inputs(config, 2),
                                           train=False))()
  host = train_benchmark.synthetic_batch(config, config.batch_size)
  batch = dict(host, image=image_ops.device_normalize_image(jnp.asarray(host["image"])))

  def loss_fn(params):
    (losses, _), state = family.train_apply(
        model, {"params": params, "batch_stats": variables["batch_stats"]}, {}, batch, RNGS)
    return losses["loss"], state["batch_stats"]

  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  return variables, float(loss), jax.device_get(grads), jax.device_get(stats)


@pytest.fixture(scope="module")
def reference():
  """The tiny AVGN (2 visual AttnBlocks) in float32: config, variables (initialised once: remat and bf16 have the
  same variable tree), and its loss, gradients and new BatchNorm statistics. No dataset is read."""
  config = config_lib.load_config(str(REPO_ROOT / "configs" / "synthetic_av.py"), "tiny")
  config = _unlocked(config, depth_vis=2)
  variables, loss, grads, stats = _loss_and_grads(config)
  return {"config": config, "variables": variables, "loss": loss, "grads": grads, "stats": stats}


def _assert_grads_close(grads, other):
  """Tight: relative L2 error of the whole gradient below 1e-5; per leaf within 1e-3 of its own scale (leaves
  whose gradient is mathematically zero, e.g. the key bias under a softmax, hold rounding noise ~1e-13)."""
  leaves, others = jax.tree.leaves(grads), jax.tree.leaves(other)
  assert jax.tree.structure(grads) == jax.tree.structure(other)
  flat = np.concatenate([np.ravel(x) for x in leaves])
  flat_other = np.concatenate([np.ravel(x) for x in others])
  assert np.linalg.norm(flat - flat_other) <= 1e-5 * np.linalg.norm(flat)
  scale = np.max(np.abs(flat))
  for a, b in zip(leaves, others):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * np.max(np.abs(a)) + 1e-7 * scale)


@pytest.mark.parametrize("attn_assign", ["soft", "hard"])
def test_remat_gives_the_same_loss_gradients_and_statistics(reference, attn_assign):
  config = _unlocked(reference["config"], attn_assign=attn_assign)
  remat_config = _unlocked(config, remat=True)
  # The same variable tree (remat keeps the module names): checkpoints and converted weights load unchanged.
  assert _abstract_variables(remat_config) == _abstract_variables(config)
  variables = reference["variables"]
  if attn_assign == "soft":  # the reference's own setting
    loss, grads, stats = reference["loss"], reference["grads"], reference["stats"]
  else:
    _, loss, grads, stats = _loss_and_grads(config, variables)
  _, remat_loss, remat_grads, remat_stats = _loss_and_grads(remat_config, variables)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  _assert_grads_close(grads, remat_grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7), stats, remat_stats)


def test_ezvsl_remat_gives_the_same_gradients():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  audio = jnp.asarray(rng.uniform(-1, 1, (4, 8000)), jnp.float32)
  results = []
  plain = ezvsl.EZVSL(resnet_width=8, resnet_blocks=(1, 1, 1, 1), dim=16)
  variables = jax.jit(lambda: plain.init({"params": _init_key()}, image, audio, train=False))()
  for remat in (False, True):
    model = plain.clone(remat=remat)

    def loss_fn(params, model=model, variables=variables):
      (losses, _), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, image, audio,
                                   train=True, mutable=["batch_stats"])
      return losses["loss"]

    results.append(jax.jit(jax.value_and_grad(loss_fn))(variables["params"]))
  (loss, grads), (remat_loss, remat_grads) = results
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  _assert_grads_close(jax.device_get(grads), jax.device_get(remat_grads))


def test_bfloat16_keeps_float32_variables_and_a_close_loss(reference):
  bf16_config = _unlocked(reference["config"], dtype="bfloat16")
  abstract = _abstract_variables(bf16_config)  # parameters and BatchNorm statistics: float32, fp32's tree
  assert abstract == _abstract_variables(reference["config"])
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {np.dtype(np.float32)}
  loss = reference["loss"]
  _, bf16_loss, bf16_grads, bf16_stats = _loss_and_grads(bf16_config, reference["variables"])  # same parameters
  for tree in (bf16_grads, bf16_stats):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype(np.float32)}
  assert np.isfinite(bf16_loss)
  np.testing.assert_allclose(bf16_loss, loss, rtol=0.05)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(bf16_grads))


def test_bfloat16_outputs_are_float32(tiny_config):
  config = _unlocked(tiny_config, dtype="bfloat16")
  family = families.of(config)
  model = family.create_model(config)
  inputs = family.dummy_inputs(config, 2)
  variables = _abstract_variables(config)
  losses, outputs = jax.eval_shape(lambda v: model.apply(v, **inputs, train=False), variables)
  for name, value in {**losses, **outputs}.items():
    assert value.dtype == jnp.float32, name
  maps = jax.eval_shape(lambda v: model.apply(v, inputs["image"], inputs["audio"], jnp.zeros((2, 2), jnp.int32),
                                              method=model.localize), variables)
  assert maps.dtype == jnp.float32


def test_bfloat16_train_step_keeps_a_float32_state(tiny_config):
  config = _unlocked(tiny_config, dtype="bfloat16", remat=True)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  setup = train.build(config, mesh)
  for leaf in jax.tree.leaves(setup.abstract_state):
    assert leaf.dtype in (jnp.float32, jnp.int32, jnp.uint32), leaf


def test_synthetic_batch_matches_the_input_pipeline(tiny_config):
  real = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=0)))
  synthetic = train_benchmark.synthetic_batch(tiny_config, 4)
  assert set(synthetic) == set(real)
  for key, value in real.items():
    assert (synthetic[key].shape, synthetic[key].dtype) == (np.shape(value), np.asarray(value).dtype), key


def test_variant_config_rejects_unknown_variants_and_fields(tiny_config):
  with pytest.raises(ValueError, match="Unknown variant"):
    train_benchmark.variant_config(tiny_config, "fp16")
  config = train_benchmark.variant_config(tiny_config, "bf16_remat", batch=16, mesh_axes=(("data", -1),))
  assert (config.model.dtype, config.model.remat, config.batch_size) == ("bfloat16", True, 16)
  assert not tiny_config.model.remat and tiny_config.model.dtype == "float32"  # the original is untouched
  assert train_benchmark.parse_mesh("data:2, fsdp:-1") == (("data", 2), ("fsdp", -1))


def test_benchmark_prints_a_table_with_every_column(tiny_config):
  lines = []
  # fp32 and bf16_remat cover both switches, fp32_reference the reference kernels (each variant is one more
  # compile of the step); 2 steps: the timed rounds alternate between the variants.
  result = train_benchmark.benchmark_main(tiny_config, ["fp32", "bf16_remat", "fp32_reference"], batch=8, steps=2,
                                          peak_size=64, peak_reps=1, log=lines.append)
  table = next(line for line in lines if line.startswith("variant"))
  for column in train_benchmark.COLUMNS:
    assert column in table
  rows = result["rows"]
  assert list(rows) == ["fp32", "bf16_remat", "fp32_reference"]
  assert result["info"]["baseline"] == "fp32"
  assert sum(line.lstrip().startswith("round ") for line in lines) == 2
  body = "\n".join(lines)
  for name, row in rows.items():
    assert f"\n{name} " in body
    assert np.isfinite(row.loss) and row.step_s > 0 and row.compile_s > 0 and row.lower_s > 0
    assert row.flops_per_example and row.flops_per_example > 0
    assert row.peak_fraction is not None and row.ratio is not None
  assert rows["fp32"].ratio == 1.0
  np.testing.assert_allclose(rows["bf16_remat"].loss, rows["fp32"].loss, rtol=0.05)  # same state and batch
  # The reference kernels compute the same function: the same first-step loss (same state and batch).
  np.testing.assert_allclose(rows["fp32_reference"].loss, rows["fp32"].loss, rtol=1e-5)


def test_benchmark_ratios_against_a_chosen_baseline(tiny_config):
  result = train_benchmark.run_benchmark(tiny_config, ["fp32_reference", "fp32"], batch=8, steps=1, peak_size=32,
                                         peak_reps=1, baseline="fp32_reference", log=lambda _: None)
  assert result["info"]["baseline"] == "fp32_reference" and result["rows"]["fp32_reference"].ratio == 1.0
  with pytest.raises(ValueError, match="Unknown baseline"):
    train_benchmark.run_benchmark(tiny_config, ["fp32"], baseline="fp64", log=lambda _: None)


@pytest.mark.parametrize("shape", [(2, 11, 10, 3), (2, 8, 9, 5), (1, 7, 7, 2)])
def test_max_pool_matches_flax_max_pool_and_its_gradient(shape):
  """layers.max_pool (int8 argmax, strided-pad backward) = nn.max_pool (select-and-scatter), ties included: the
  gradient of a window goes to its first maximum in both (the zeros of a ReLU, equal positive values)."""
  import flax.linen as nn
  from avl_jax.models import layers
  rng = np.random.default_rng(0)
  x = np.maximum(rng.standard_normal(shape).astype(np.float32), 0.0)
  x[0, 0, :4, 0] = 1.5
  x, window, strides, padding = jnp.asarray(x), (3, 3), (2, 2), ((1, 1), (1, 1))
  ref = lambda v: nn.max_pool(v, window, strides=strides, padding=padding)
  new = lambda v: layers.max_pool(v, window, strides, padding)
  np.testing.assert_array_equal(jax.jit(new)(x), jax.jit(ref)(x))
  np.testing.assert_array_equal(new(x.astype(jnp.bfloat16)).astype(np.float32),
                                ref(x.astype(jnp.bfloat16)).astype(np.float32))
  cotangent = jnp.asarray(rng.standard_normal(ref(x).shape).astype(np.float32))
  grad = lambda f: jax.jit(jax.grad(lambda v: jnp.sum(f(v) * cotangent)))(x)
  np.testing.assert_allclose(grad(new), grad(ref), rtol=1e-6, atol=1e-6)
  assert "reduce_window_max" not in str(jax.make_jaxpr(lambda v: layers.max_pool(v, window, strides, padding))(x))
  with layers.reference_kernels():  # a fresh function: JAX caches traces per function object
    assert "reduce_window_max" in str(jax.make_jaxpr(lambda v: layers.max_pool(v, window, strides, padding))(x))
