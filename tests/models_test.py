"""Tests of the AVGN / EZ-VSL Flax models, layers and registry on tiny shapes (CPU, seconds per compile)."""
import math

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avl_jax import models
from avl_jax.models import avgn
from avl_jax.models import grouping
from avl_jax.models import layers

BATCH = 4
NUM_CLASSES = 5
NUM_SOURCES = 3
IMAGE_SIZE = 64  # -> a 2x2 feature map
# The tests feed random log spectrograms (audio_input='spectrogram'); test_waveform_front_end checks that the
# default waveform input computes exactly that spectrogram inside the model.
TINY = dict(resnet_width=8, resnet_blocks=(1, 1, 1, 1), dim=32, depth_vis=1, depth_aud=1, num_heads=4,
            audio_input='spectrogram')
MAP_SHAPE = (2, 2)

# Leaves whose gradient is zero by construction (not a bug), with the reason.
STRUCTURALLY_ZERO_GRADIENTS = {
    # A bias added to every key shifts all logits of a query equally: the softmax over keys ignores it.
    'visual_encoder/grouping/pre_assign_attn/attn/k_proj/bias',
    'audio_encoder/grouping/pre_assign_attn/attn/k_proj/bias',
    # The audio branch has a single input token: attention over one key is 1 whatever q and k are.
    'audio_encoder/grouping/pre_assign_attn/attn/q_proj/kernel',
    'audio_encoder/grouping/pre_assign_attn/attn/q_proj/bias',
    'audio_encoder/grouping/pre_assign_attn/attn/k_proj/kernel',
    # q bias adds b_q . k_l, the same for every class: the assignment softmax over classes ignores it.
    'visual_encoder/grouping/assign/q_proj/bias',
    'audio_encoder/grouping/assign/q_proj/bias',
    # fc2 bias adds one constant to all D channels of a class token, removed by norm_post_tokens.
    'visual_encoder/grouping/mlp_inter/fc2/bias',
    'audio_encoder/grouping/mlp_inter/fc2/bias',
}


def rng(seed: int) -> jax.Array:
  """A key whose random ops compile fast on CPU (XLA RngBitGenerator, not an unrolled threefry per draw)."""
  return jax.random.key(seed, impl='rbg')


def _batch():
  numpy_rng = np.random.default_rng(0)
  visual_class = np.array([0, 1, 2, 4], np.int32)
  partner_class = np.array([3, 2, 0, 1], np.int32)
  audio_label = np.eye(NUM_CLASSES, dtype=np.float32)[visual_class] + np.eye(NUM_CLASSES)[partner_class]
  return dict(
      image=numpy_rng.standard_normal((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32),
      spec=numpy_rng.standard_normal((BATCH, 33, 20, 1), np.float32),
      visual_class=visual_class,
      audio_label=audio_label.astype(np.float32))


def _init(model, batch):
  args = (batch['image'], batch['spec'], batch['visual_class'], batch['audio_label'])
  return jax.jit(lambda key: model.init(key, *args, train=False))(rng(0))


class Harness:
  """A model, its variables and jitted train (value and grad) / eval functions on one tiny batch."""

  def __init__(self, model, variables=None, with_grads=True):
    self.model = model
    self.batch = _batch()
    args = (self.batch['image'], self.batch['spec'], self.batch['visual_class'], self.batch['audio_label'])
    self.variables = _init(model, self.batch) if variables is None else variables

    def train_loss(params, batch_stats, key):
      dropout_key, gumbel_key = jax.random.split(key)
      (losses, outputs), updates = model.apply(
          {'params': params, 'batch_stats': batch_stats}, *args, train=True,
          rngs={'dropout': dropout_key, 'gumbel': gumbel_key}, mutable=['batch_stats'])
      return losses['loss'], (losses, outputs, updates['batch_stats'])

    def evaluate(variables, key):
      dropout_key, gumbel_key = jax.random.split(key)
      return model.apply(variables, *args, train=False, rngs={'dropout': dropout_key, 'gumbel': gumbel_key})

    if with_grads:
      self.train_step = jax.jit(jax.value_and_grad(train_loss, has_aux=True))
    else:  # Skips compiling a backward pass (tens of seconds on a small CPU).
      self.train_step = jax.jit(lambda *a: (train_loss(*a), None))
    self.evaluate = jax.jit(evaluate)

  def train(self, key=None, params=None):
    """One train-mode forward(/backward); returns (losses, outputs, new batch_stats, grads or None)."""
    key = rng(1) if key is None else key
    params = self.variables['params'] if params is None else params
    (_, (losses, outputs, batch_stats)), grads = self.train_step(params, self.variables['batch_stats'], key)
    return losses, outputs, batch_stats, grads


_HARNESSES = {}


def avgn_harness(attn_assign: str = 'soft') -> Harness:
  """Soft and hard AVGN share one init (same parameter tree); compiled once per session.

  Gradients are checked on the soft model; the hard assignment's straight-through gradient is checked on
  a GroupingBlock alone (test_hard_assignment_*), which compiles in a fraction of the time.
  """
  if attn_assign not in _HARNESSES:
    model = models.get_model('avgn', num_classes=NUM_CLASSES, attn_assign=attn_assign, **TINY)
    shared = _HARNESSES['soft'].variables if 'soft' in _HARNESSES else None
    _HARNESSES[attn_assign] = Harness(model, shared, with_grads=attn_assign == 'soft')
  return _HARNESSES[attn_assign]


def ezvsl_harness() -> Harness:
  """EZ-VSL's variables are exactly AVGN's encoder subtrees (checked against its own abstract init)."""
  if 'ezvsl' not in _HARNESSES:
    tiny = {k: v for k, v in TINY.items() if k in ('resnet_width', 'resnet_blocks', 'dim', 'audio_input')}
    model = models.get_model('ezvsl', num_classes=NUM_CLASSES, **tiny)
    encoders = ('imgnet', 'audnet', 'img_proj', 'aud_proj')
    avgn_variables = avgn_harness().variables
    variables = {collection: {k: v for k, v in tree.items() if k in encoders}
                 for collection, tree in avgn_variables.items()}
    batch = _batch()
    abstract = jax.eval_shape(lambda: model.init(
        rng(0), batch['image'], batch['spec'], batch['visual_class'], batch['audio_label'], train=False))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(
        lambda x: (x.shape, x.dtype), variables)
    _HARNESSES['ezvsl'] = Harness(model, variables)
  return _HARNESSES['ezvsl']


def _check_avgn_outputs(losses, outputs):
  expected_losses = {'loss', 'loss_loc', 'loss_cls_token', 'loss_cls_pred', 'loss_bce_v', 'loss_bce_a'}
  assert set(losses) == expected_losses
  for name, value in losses.items():
    assert value.shape == () and np.isfinite(value), name
  np.testing.assert_allclose(
      losses['loss'], losses['loss_loc'] + losses['loss_cls_token'] + losses['loss_cls_pred'], rtol=1e-6)
  np.testing.assert_allclose(losses['loss_cls_pred'], losses['loss_bce_v'] + losses['loss_bce_a'], rtol=1e-6)
  b, c, d = BATCH, NUM_CLASSES, TINY['dim']
  expected_shapes = {
      'map': (b,) + MAP_SHAPE, 'img_feat': (b,) + MAP_SHAPE + (d,), 'aud_feat': (b, d), 'xv': (b, c, d),
      'xa': (b, c, d), 'aud_selected': (b, d), 'S_logits': (b, b) + MAP_SHAPE, 'av_cls_logits': (c, c),
      'logit_prob_v': (b, c), 'logit_prob_a': (b, c), 'prob_v': (b, c), 'prob_a': (b, c)}
  assert {k: v.shape for k, v in outputs.items()} == expected_shapes
  for name, value in outputs.items():
    assert np.all(np.isfinite(value)), name
  np.testing.assert_allclose(np.linalg.norm(outputs['img_feat'], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(outputs['aud_feat'], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(outputs['map'], outputs['S_logits'][np.arange(b), np.arange(b)], rtol=1e-5,
                             atol=1e-4)


@pytest.mark.parametrize('attn_assign', ['soft', 'hard'])
def test_avgn_train_and_eval_outputs(attn_assign):
  h = avgn_harness(attn_assign)
  losses, outputs, _, _ = h.train()
  _check_avgn_outputs(losses, outputs)
  _check_avgn_outputs(*h.evaluate(h.variables, rng(0)))


def test_class_token_loss_is_log_c_at_init():
  losses, outputs = avgn_harness().evaluate(avgn_harness().variables, rng(0))
  np.testing.assert_allclose(losses['loss_cls_token'], math.log(NUM_CLASSES), rtol=1e-6)
  np.testing.assert_array_equal(outputs['av_cls_logits'], 0.0)


def test_init_follows_spec():
  params = traverse_util.flatten_dict(avgn_harness().variables['params'], sep='/')
  np.testing.assert_array_equal(params['av_token'], 0.0)
  dense_kernels, conv_kernels = [], []
  for path, value in params.items():
    value = np.asarray(value)
    leaf = path.rsplit('/', 1)[-1]
    is_resnet = path.startswith(('imgnet/', 'audnet/'))
    is_norm = not is_resnet and leaf == 'scale'
    if path.startswith('img_proj/'):
      continue
    if leaf == 'kernel' and value.ndim == 2:
      dense_kernels.append(value.ravel())
    elif leaf == 'kernel' and value.ndim == 4:
      fan_out = value.shape[0] * value.shape[1] * value.shape[3]
      conv_kernels.append(value.ravel() / math.sqrt(2.0 / fan_out))
    elif is_norm:
      np.testing.assert_array_equal(value, 1.0, err_msg=path)
    elif leaf == 'bias':
      np.testing.assert_array_equal(value, 0.0, err_msg=path)
    elif path.startswith('imgnet/') and leaf == 'scale':
      np.testing.assert_array_equal(value, 1.0, err_msg=path)
  dense_kernels = np.concatenate(dense_kernels)
  assert abs(dense_kernels.mean()) < 1e-3 and abs(dense_kernels.std() - 0.02) < 1e-3
  assert np.abs(dense_kernels).max() > 2.5 * 0.02  # Untruncated: Flax's +-2 sigma cut would fail this.
  conv_kernels = np.concatenate(conv_kernels)  # Standardised by the Kaiming fan_out std.
  assert abs(conv_kernels.mean()) < 0.02 and abs(conv_kernels.std() - 1.0) < 0.03
  audio_bn_scales = np.concatenate([v for k, v in params.items()
                                    if k.startswith('audnet/') and k.endswith('/scale')])
  assert abs(audio_bn_scales.mean() - 1.0) < 0.01 and abs(audio_bn_scales.std() - 0.02) < 0.005
  bound = 1.0 / math.sqrt(8 * TINY['resnet_width'])
  assert np.abs(params['img_proj/bias']).max() <= bound and np.abs(params['img_proj/bias']).max() > 0


def test_han_params_are_inert_and_optional():
  model = models.get_model('avgn', num_classes=NUM_CLASSES, with_han_params=True, **TINY)
  batch = _batch()
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), batch['image'], batch['spec'], batch['visual_class'], batch['audio_label'],
      train=False))
  han = abstract['params']['audio_encoder']['han_encoder']
  assert han['mlp_inter']['fc1']['kernel'].shape == (10, TINY['dim'] // 2)
  assert 'han_encoder' not in avgn_harness().variables['params']['audio_encoder']
  assert 'han_encoder' not in abstract['params']['visual_encoder']


def test_localize_matches_map_in_eval():
  h = avgn_harness()
  _, outputs = h.evaluate(h.variables, rng(0))
  class_ids = jnp.stack([h.batch['visual_class'], jnp.array([3, 2, 0, 1]), jnp.array([1, -1, 4, -1])], axis=1)
  maps = jax.jit(lambda v, *a: h.model.apply(v, *a, method='localize'))(
      h.variables, h.batch['image'], h.batch['spec'], class_ids)
  assert maps.shape == (BATCH, NUM_SOURCES) + MAP_SHAPE
  assert np.all(np.isfinite(maps))
  np.testing.assert_allclose(maps[:, 0], outputs['map'], rtol=1e-5, atol=1e-5)
  xa, img_feat = np.asarray(outputs['xa']), np.asarray(outputs['img_feat'])
  for b, c in [(0, 3), (2, 4), (3, 1)]:
    s = list(np.asarray(class_ids[b])).index(c)
    expected = np.einsum('hwd,d->hw', img_feat[b], xa[b, c]) / 0.03
    np.testing.assert_allclose(maps[b, s], expected, rtol=1e-4, atol=1e-4)


def test_batch_stats_update_only_in_train():
  h = avgn_harness()
  _, _, new_stats, _ = h.train()
  old = traverse_util.flatten_dict(h.variables['batch_stats'], sep='/')
  new = traverse_util.flatten_dict(new_stats, sep='/')
  assert old.keys() == new.keys()
  for path in old:
    assert not np.allclose(old[path], new[path]), path
  # Eval needs no mutable collection: running stats are only read.
  h.evaluate(h.variables, rng(0))


def test_batch_norm_matches_pytorch_update():
  x = np.random.default_rng(3).standard_normal((2, 3, 1, 4), np.float32) * 2.0 + 1.0
  bn = layers.BatchNorm(momentum=0.9)
  variables = bn.init(rng(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = np.asarray(x).reshape(-1, 4)
  np.testing.assert_allclose(y, ((flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)).reshape(x.shape),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  y_eval = bn.apply(updates | {'params': variables['params']}, x, train=False)
  stats = updates['batch_stats']
  np.testing.assert_allclose(y_eval, (x - stats['mean']) / np.sqrt(stats['var'] + 1e-5), rtol=1e-5,
                             atol=1e-5)


def test_drop_path_active_only_in_train():
  h = avgn_harness()
  loss_a = h.train(rng(1))[0]['loss']
  loss_b = h.train(rng(2))[0]['loss']
  assert not np.isclose(loss_a, loss_b, rtol=1e-7, atol=0)
  eval_a = h.evaluate(h.variables, rng(1))[0]['loss']
  eval_b = h.evaluate(h.variables, rng(2))[0]['loss']
  assert eval_a == eval_b

  x = jnp.ones((1000, 3))
  dropped = layers.DropPath(0.25).apply({}, x, train=True, rngs={'dropout': rng(0)})
  kept = np.asarray(dropped[:, 0])
  assert set(np.unique(dropped)) <= {0.0, np.float32(1 / 0.75)}
  assert abs((kept > 0).mean() - 0.75) < 0.05 and np.all(dropped == dropped[:, :1])
  np.testing.assert_array_equal(layers.DropPath(0.25).apply({}, x, train=False), x)


def test_gradients_finite_and_nonzero():
  h = avgn_harness()
  params = dict(h.variables['params'])
  # With av_token = 0 (its init) fc_cls gets no gradient; any nonzero tokens exercise every path.
  params['av_token'] = 0.02 * np.random.default_rng(5).standard_normal(params['av_token'].shape, np.float32)
  grads = traverse_util.flatten_dict(h.train(params=params)[3], sep='/')
  assert grads.keys() == traverse_util.flatten_dict(params, sep='/').keys()
  dead = []
  for path, grad in grads.items():
    assert np.all(np.isfinite(grad)), path
    if path not in STRUCTURALLY_ZERO_GRADIENTS and not np.abs(grad).max() > 1e-9:
      dead.append(path)
  assert not dead, f'parameters without gradient: {dead}'


def test_hard_assignment_is_one_hot_with_straight_through_gradient():
  numpy_rng = np.random.default_rng(7)
  class_tokens = numpy_rng.standard_normal((2, NUM_CLASSES, 16), np.float32)
  tokens = numpy_rng.standard_normal((2, 7, 16), np.float32)
  assign = grouping.AssignAttention(hard=True)
  params = assign.init(rng(0), class_tokens, tokens, train=False)['params']

  def run(params, key, train):
    out, state = assign.apply({'params': params}, class_tokens, tokens, train=train, rngs={'gumbel': key},
                              mutable=['intermediates'])
    return out, state['intermediates']['assignment'][0], state['intermediates']['assign_soft'][0]

  _, eval_assignment, soft = run(params, rng(0), False)
  expected = jax.nn.one_hot(jnp.argmax(soft, axis=1), NUM_CLASSES, axis=1)
  np.testing.assert_allclose(eval_assignment, expected, atol=1e-6)
  _, train_a, _ = run(params, rng(1), True)
  _, train_b, _ = run(params, rng(2), True)
  for assignment in (train_a, train_b):  # Each input token goes to exactly one class.
    np.testing.assert_allclose(assignment.sum(axis=1), 1.0, atol=1e-6)
    assert np.all((np.abs(assignment) < 1e-6) | (np.abs(assignment - 1) < 1e-6))
  assert not np.allclose(train_a, train_b)  # Gumbel noise from the 'gumbel' stream.

  weights = numpy_rng.standard_normal((2, NUM_CLASSES, 16), np.float32)
  grads = jax.grad(lambda p: jnp.sum(run(p, rng(1), True)[0] * weights))(params)
  for path, grad in traverse_util.flatten_dict(grads, sep='/').items():
    assert np.all(np.isfinite(grad)), path
  # q_proj only reaches the output through the straight-through soft path.
  assert np.abs(grads['q_proj']['kernel']).max() > 1e-6


def test_ezvsl_outputs_and_localize():
  h = ezvsl_harness()
  assert set(h.variables['params']) == {'imgnet', 'audnet', 'img_proj', 'aud_proj'}
  losses, outputs, _, grads = h.train()
  eval_losses, eval_outputs = h.evaluate(h.variables, rng(0))
  for l, o in [(losses, outputs), (eval_losses, eval_outputs)]:
    assert set(l) == {'loss', 'loss_loc'} and np.isfinite(l['loss']) and l['loss'] == l['loss_loc']
    assert {k: v.shape for k, v in o.items()} == {
        'map': (BATCH,) + MAP_SHAPE, 'img_feat': (BATCH,) + MAP_SHAPE + (TINY['dim'],),
        'aud_feat': (BATCH, TINY['dim']), 'S_logits': (BATCH, BATCH) + MAP_SHAPE}
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  class_ids = jnp.zeros((BATCH, NUM_SOURCES), jnp.int32)
  maps = h.model.apply(h.variables, h.batch['image'], h.batch['spec'], class_ids, method='localize')
  assert maps.shape == (BATCH, NUM_SOURCES) + MAP_SHAPE
  for s in range(NUM_SOURCES):
    np.testing.assert_allclose(maps[:, s], eval_outputs['map'], rtol=1e-5, atol=1e-5)


def test_registry():
  assert set(models.MODELS) == {'avgn', 'ezvsl', 'avgn_audioclip', 'tvsl', 'tvsl_single_stage'}
  assert isinstance(models.get_model('avgn', num_classes=3), models.AVGN)
  with pytest.raises(ValueError, match=r"Unknown model 'vggss'.*'avgn', 'avgn_audioclip', 'ezvsl'"):
    models.get_model('vggss')
  with pytest.raises(ValueError, match=r"no field 'depth'.*depth_vis"):
    models.get_model('avgn', num_classes=3, depth=2)
  with pytest.raises(ValueError, match="no field 'attn_assign'"):
    models.get_model('ezvsl', attn_assign='soft')


def test_l2_normalize_and_bce_clamp():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(layers.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
  logits = jnp.array([0.0, 200.0, -200.0])
  targets = jnp.array([1.0, 0.0, 1.0])
  # log(0.5), and two saturated terms clamped at -100 like PyTorch's binary_cross_entropy.
  np.testing.assert_allclose(avgn.binary_cross_entropy(logits, targets), (math.log(2) + 200) / 3, rtol=1e-6)
  assert np.isfinite(jax.grad(lambda z: avgn.binary_cross_entropy(z, targets))(logits)).all()


# ------------------------------------------------------------------------- official per-GPU behaviour switches

def test_batch_norm_groups_equal_separate_batches():
  """groups=k normalises each of k sub-batches with its own statistics; running stats move to their mean."""
  x = np.random.default_rng(0).standard_normal((6, 3, 3, 4)).astype(np.float32) * 3 + 1
  bn = layers.BatchNorm(groups=2)
  variables = bn.init(jax.random.key(0), x[:2], train=False)
  grouped, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  single = layers.BatchNorm()
  halves = [single.apply(variables, x[i:i + 3], train=True, mutable=['batch_stats']) for i in (0, 3)]
  np.testing.assert_allclose(grouped, np.concatenate([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
  for stat in ('mean', 'var'):
    expected = np.mean([h[1]['batch_stats'][stat] for h in halves], axis=0)
    np.testing.assert_allclose(state['batch_stats'][stat], expected, rtol=1e-5)
  # The whole-batch statistics are different (the switch does something).
  whole, _ = single.apply(variables, x, train=True, mutable=['batch_stats'])
  assert np.max(np.abs(np.asarray(whole) - np.asarray(grouped))) > 1e-2
  with pytest.raises(ValueError, match='groups=4 must divide the batch size 6'):
    layers.BatchNorm(groups=4).apply(variables, x, train=True, mutable=['batch_stats'])


def test_contrastive_loss_groups_are_per_group_problems():
  from avl_jax.models import ezvsl  # pylint: disable=g-import-not-at-top
  key_img, key_aud = jax.random.split(jax.random.key(1))
  img = layers.l2_normalize(jax.random.normal(key_img, (8, 2, 3, 16)))
  aud = jax.random.normal(key_aud, (8, 16))
  loss2, pooled2, logits2 = ezvsl.contrastive_loss(img, aud, 0.1, groups=2)
  assert pooled2.shape == (2, 4, 4) and logits2.shape == (2, 4, 4, 2, 3)
  per_group = [ezvsl.contrastive_loss(img[i:i + 4], aud[i:i + 4], 0.1)[0] for i in (0, 4)]
  np.testing.assert_allclose(loss2, np.mean(per_group), rtol=1e-6)
  loss1, pooled1, logits1 = ezvsl.contrastive_loss(img, aud, 0.1)
  assert pooled1.shape == (8, 8) and logits1.shape == (8, 8, 2, 3)
  assert abs(float(loss1) - float(loss2)) > 1e-3  # More negatives: a different loss.
  with pytest.raises(ValueError, match='loss_groups=3 must divide the batch size 8'):
    ezvsl.contrastive_loss(img, aud, 0.1, groups=3)


def test_avgn_groups_match_separate_half_batches():
  """AVGN with loss_groups = bn_groups = 2 is the mean of two independent half-batch forwards (2 GPUs)."""
  batch = _batch()
  grouped = avgn.AVGN(num_classes=NUM_CLASSES, drop_path=0.0, loss_groups=2, bn_groups=2, **TINY)
  single = avgn.AVGN(num_classes=NUM_CLASSES, drop_path=0.0, **TINY)
  variables = _init(single, batch)
  args = ('image', 'spec', 'visual_class', 'audio_label')

  @jax.jit
  def forward_grouped(variables, batch):
    return grouped.apply(variables, *(batch[k] for k in args), train=True, mutable=['batch_stats'])[0][0]

  @jax.jit
  def forward_single(variables, batch):
    return single.apply(variables, *(batch[k] for k in args), train=True, mutable=['batch_stats'])[0][0]

  losses = forward_grouped(variables, batch)
  halves = [forward_single(variables, {k: v[i:i + 2] for k, v in batch.items()}) for i in (0, 2)]
  for name in ('loss_loc', 'loss_bce_v', 'loss_bce_a', 'loss'):
    np.testing.assert_allclose(losses[name], np.mean([h[name] for h in halves]), rtol=1e-4, err_msg=name)


@pytest.mark.parametrize('name', ['avgn', 'ezvsl'])
def test_waveform_front_end(name):
  """audio_input='waveform' (the default) = the official log spectrogram computed inside the model."""
  from avl_jax import audio  # pylint: disable=g-import-not-at-top
  fields = {k: v for k, v in TINY.items() if k != 'audio_input'}
  if name == 'ezvsl':
    fields = {k: v for k, v in fields.items() if k in ('resnet_width', 'resnet_blocks', 'dim')}
  batch = _batch()
  waveform = np.random.default_rng(3).uniform(-1, 1, (BATCH, 4000)).astype(np.float32)
  spec = audio.log_spectrogram(waveform, 8000.0)
  on_waveform = models.get_model(name, num_classes=NUM_CLASSES, sample_rate=8000.0, **fields)
  on_spec = models.get_model(name, num_classes=NUM_CLASSES, audio_input='spectrogram', **fields)
  variables = jax.jit(lambda key: on_spec.init(key, batch['image'], spec, batch['visual_class'],
                                               batch['audio_label'], train=False))(rng(0))
  class_ids = np.array([[0, 1]] * BATCH, np.int32)
  maps = jax.jit(lambda v: (on_waveform.apply(v, batch['image'], waveform, class_ids, method='localize'),
                            on_spec.apply(v, batch['image'], spec, class_ids, method='localize')))(variables)
  # float32 spectrogram fused into the model's XLA program vs computed on its own: maps ~|40| agree to ~1e-5 rel.
  np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-4)
  silent = jax.jit(lambda v: on_waveform.apply(v, batch['image'], np.zeros_like(waveform), class_ids,
                                               method='localize'))(variables)
  assert not np.allclose(silent, maps[0], atol=1e-3)  # the audio reaches the maps
  with pytest.raises(ValueError, match='expects a waveform'):
    on_waveform.init(rng(0), batch['image'], spec, batch['visual_class'], batch['audio_label'], train=False)
