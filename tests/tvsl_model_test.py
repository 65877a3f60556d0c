"""T-VSL model behaviour on tiny towers: predicted-class inference, zero-shot classes, the single-stage ablation,
AVGN on AudioCLIP encoders, the switches, the trainable-parameter partition and the converter.

Numerical parity with the official code is tests/tvsl_parity_test.py.
"""
import functools
import json

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avl_jax.convert import convert_lib
from avl_jax.convert import tvsl_weights
from avl_jax.models import tvsl
from avl_jax.models.audioclip import tokenizer as tokenizer_lib
from avl_jax.models.tvsl import base
from avl_jax.models.tvsl import layers as tvsl_layers
from avl_jax import param_rules
from avl_jax.models.tvsl import params as tvsl_params
from avl_jax.models.tvsl import text_bank as text_bank_lib
from avl_jax import checkpointing

TINY = dict(embed_dim=32, image_layers=(1, 1, 1, 1), image_width=16, image_heads=2, text_width=64,
            text_layers=1, text_heads=2, audio_layers=(1, 1, 1, 1), adapter_hidden=64)
BATCH, CANVAS_HW, SAMPLES = 4, (64, 128), 4000
GRID = (2, 4)  # Token grid of the canvas; 11 audio tokens.
TRAIN_NAMES = ['baby crying', 'dog barking', 'helicopter', 'lions roaring', 'playing cello',
               'playing violin, fiddle']
NEW_NAME = 'whale calling'  # Never in the bank the model trains with.


@pytest.fixture(scope='module')
def tokenizer(golden_dir):
  return tokenizer_lib.Tokenizer(str(golden_dir / 'audioclip' / 'bpe_simple_vocab_16e6.txt.gz'))


def random_variables(model, seed: int = 0) -> dict:
  """Variables of a tiny model from its abstract shapes (no compiled `init`, which takes ~50 s on this CPU).

  Towers N(0, 0.05^2) with the golden rules for FBSP (a near-DFT basis; fb < 0 would make sqrt(fb) NaN) and
  temperatures (100), positive running variances; adapters U(+-1/sqrt(fan_in)) as PyTorch; gates 0.5.
  """
  abstract = tvsl_params.abstract_variables(model, canvas_hw=CANVAS_HW)
  rng = np.random.default_rng(seed)
  params = {}
  for path, leaf in traverse_util.flatten_dict(abstract['params']).items():
    if path[0] == 'audioclip':
      value = 0.05 * rng.standard_normal(leaf.shape)
    elif len(path) == 1:  # Gates and logit_scale_ml.
      value = np.log(100.0) if path[0] == tvsl_layers.STAGE1_SCALE else 0.5
    else:
      fan_in = abstract['params'][path[0]][path[1]]['kernel'].shape[0]
      value = rng.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in)
    params[path] = np.asarray(value, leaf.dtype)
  towers = traverse_util.unflatten_dict(params)['audioclip']
  fbsp = towers['audio']['fbsp']
  fbsp.update(m=0.01 * rng.standard_normal(fbsp['m'].shape).astype(np.float32),
              fb=(1 + 0.01 * rng.standard_normal(fbsp['fb'].shape)).astype(np.float32),
              fc=np.arange(fbsp['fc'].shape[0], dtype=np.float32))
  towers.update({name: np.float32(np.log(100.0)) for name in ('logit_scale', 'logit_scale_ai', 'logit_scale_at')})
  params = traverse_util.unflatten_dict(params)
  params['audioclip'] = towers
  stats = jax.tree.map(lambda x: (0.5 + np.abs(0.1 * rng.standard_normal(x.shape))).astype(x.dtype),
                       abstract['batch_stats'])
  return {'params': params, 'batch_stats': stats}


@pytest.fixture(scope='module')
def tiny_variables():
  return random_variables(tvsl.TVSL(**TINY))


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(3)
  canvas = rng.standard_normal((BATCH,) + CANVAS_HW + (3,)).astype(np.float32)
  waveform = (0.3 * rng.standard_normal((BATCH, 1, SAMPLES))).astype(np.float32)
  class_rows = np.array([[4, 1], [1, 4], [0, 2], [5, 3]], np.int32)
  return canvas, waveform, class_rows


@pytest.fixture(scope='module')
def bank(tiny_variables, tokenizer):
  return tvsl.encode_text_bank(tiny_variables, text_bank_lib.tokenize(tokenizer, TRAIN_NAMES), tvsl.TVSL(**TINY))


@functools.lru_cache(maxsize=None)
def _compiled(model, method, kwargs: tuple):
  return jax.jit(lambda variables, *args: model.apply(variables, *args, method=method, **dict(kwargs)))


def run(model, variables, *args, method=None, **kwargs):
  """model.apply under a jit that is compiled once per (model, method, keyword arguments, shapes)."""
  return _compiled(model, method, tuple(sorted(kwargs.items())))(variables, *args)


@pytest.fixture(scope='module')
def tokens(tiny_variables, inputs):
  """The frozen towers' eval-mode tokens, shared by the head-level tests (the towers compile once)."""
  canvas, waveform, _ = inputs
  return run(tvsl.TVSL(**TINY), tiny_variables, canvas, waveform, method='encode_tokens', train=False)


def heads(model, variables, tokens, bank, class_rows, labels=None):
  return run(model, variables, tokens['image_tokens'], tokens['audio_tokens'], bank, class_rows, labels,
             method='heads', grid_hw=GRID)


def localize(model, variables, tokens, bank, class_rows=None, return_classes=False):
  return run(model, variables, tokens['image_tokens'], tokens['audio_tokens'], bank, class_rows,
             method='localize_from_tokens', grid_hw=GRID, return_classes=return_classes)


# ------------------------------------------------------------------------------------ forward and maps


def test_forward_losses_and_outputs(tiny_variables, inputs, bank, tokens):
  canvas, waveform, class_rows = inputs
  model = tvsl.TVSL(**TINY)
  losses, outputs = run(model, tiny_variables, canvas, waveform, bank, class_rows, train=False)
  assert set(losses) == {'loss', 'loss_mcl', 'loss_img', 'loss_aud', 'loss_cnt'}
  assert all(np.isfinite(v) for v in losses.values())
  terms = ('loss_mcl', 'loss_img', 'loss_aud', 'loss_cnt')
  np.testing.assert_allclose(losses['loss'], sum(losses[k] for k in terms), rtol=1e-6)
  assert outputs['maps'].shape == (BATCH, 2) + GRID
  np.testing.assert_allclose(np.linalg.norm(outputs['maps'].reshape(BATCH, 2, -1), axis=-1), 1.0, rtol=1e-5)
  assert outputs['stage1_logits'].shape == (BATCH, len(TRAIN_NAMES))
  assert outputs['cnt_logits'].shape == (1, 2 * BATCH, 2 * BATCH)
  assert outputs['audio_tokens'].shape == (BATCH, 11, 32)
  # The head-level entry points compute the same as the full calls.
  head_losses, head_outputs = heads(model, tiny_variables, tokens, bank, class_rows)
  for name in losses:
    np.testing.assert_allclose(head_losses[name], losses[name], rtol=1e-6, err_msg=name)
  maps = run(model, tiny_variables, canvas, waveform, bank, class_rows, method='localize')
  np.testing.assert_allclose(maps, outputs['maps'], atol=1e-6)
  np.testing.assert_allclose(localize(model, tiny_variables, tokens, bank, class_rows), maps, atol=1e-6)
  np.testing.assert_allclose(head_outputs['maps'], maps, atol=1e-6)


def test_train_mode_updates_tower_statistics_per_bn_mode(tiny_variables, inputs, bank):
  canvas, waveform, class_rows = inputs
  for bn_mode, changes in (('train_stats', True), ('frozen', False)):
    model = tvsl.TVSL(**TINY, bn_mode=bn_mode)
    (losses, outputs), state = run(model, tiny_variables, canvas, waveform, bank, class_rows, train=True,
                                   mutable=('batch_stats',))
    assert 'maps' not in outputs and np.isfinite(losses['loss'])
    before = tiny_variables['batch_stats']['audioclip']['audio']['att5']['bn']['mean']
    after = np.asarray(state['batch_stats']['audioclip']['audio']['att5']['bn']['mean'])
    assert np.any(after != before) == changes, bn_mode


def test_tower_batch_norm_groups(tiny_variables, inputs):
  """bn_groups=2: train-mode statistics per half batch (the official per-device BatchNorm without SyncBN), so
  the first half's tokens equal those of a train-mode call on the first half alone."""
  canvas, waveform, _ = inputs
  grouped, _ = run(tvsl.TVSL(**TINY, bn_groups=2), tiny_variables, canvas, waveform, method='encode_tokens',
                   train=True, mutable=('batch_stats',))
  half, _ = run(tvsl.TVSL(**TINY), tiny_variables, canvas[:2], waveform[:2], method='encode_tokens', train=True,
                mutable=('batch_stats',))
  for name in ('image_tokens', 'audio_tokens'):
    error = np.max(np.abs(grouped[name][:2] - half[name])) / np.max(np.abs(half[name]))
    assert error < 1e-5, (name, error)


def test_predicted_classes_drive_the_maps(tiny_variables, inputs, bank, tokens):
  """Stage 1's top-K classes (no labels needed) give the same maps as asking for those classes by hand."""
  _, _, class_rows = inputs
  _, outputs = heads(tvsl.TVSL(**TINY), tiny_variables, tokens, bank, class_rows)
  probabilities = np.asarray(jax.nn.sigmoid(outputs['stage1_logits']))
  predicted = tvsl.TVSL(**TINY, class_source='predicted', top_k=3)
  maps, classes = localize(predicted, tiny_variables, tokens, bank, return_classes=True)
  expected_rows = np.argsort(-probabilities, axis=1)[:, :3]
  np.testing.assert_array_equal(classes['class_rows'], expected_rows)
  np.testing.assert_allclose(classes['scores'], np.take_along_axis(probabilities, expected_rows, 1), rtol=1e-6)
  assert maps.shape == (BATCH, 3) + GRID and np.all(classes['valid'])
  # Every bank row's probability (the evaluation's audio mAP), in both modes.
  np.testing.assert_allclose(classes['bank_scores'], probabilities, rtol=1e-6)
  _, oracle = localize(tvsl.TVSL(**TINY), tiny_variables, tokens, bank, class_rows, return_classes=True)
  np.testing.assert_allclose(oracle['bank_scores'], probabilities, rtol=1e-6)
  oracle_maps = localize(tvsl.TVSL(**TINY), tiny_variables, tokens, bank, classes['class_rows'])
  np.testing.assert_allclose(maps, oracle_maps, atol=1e-6)
  # K from the ground-truth count when top_k is None; a threshold keeps the best class and those above it.
  maps = localize(tvsl.TVSL(**TINY, class_source='predicted'), tiny_variables, tokens, bank, class_rows)
  assert maps.shape == (BATCH, 2) + GRID
  threshold = float(np.median(probabilities))
  thresholded = tvsl.TVSL(**TINY, class_source='predicted', top_k=len(TRAIN_NAMES), score_threshold=threshold)
  _, classes = localize(thresholded, tiny_variables, tokens, bank, return_classes=True)
  np.testing.assert_array_equal(classes['valid'][:, 1:], np.asarray(classes['scores'])[:, 1:] >= threshold)
  assert np.all(classes['valid'][:, 0]) and not np.all(classes['valid'])
  with pytest.raises(ValueError, match='needs class_rows'):
    tvsl.TVSL(**TINY).apply(tiny_variables, tokens['image_tokens'], tokens['audio_tokens'], bank,
                            method='localize_from_tokens', grid_hw=GRID)


def test_zero_shot_class_queried_by_name(tiny_variables, inputs, bank, tokens, tokenizer):
  """A class absent from the training bank: append its text embedding and query (or predict) it by name."""
  _, _, class_rows = inputs
  model = tvsl.TVSL(**TINY)
  new_row = tvsl.encode_text_bank(tiny_variables, text_bank_lib.tokenize(tokenizer, [NEW_NAME]), model)
  extended = text_bank_lib.extend_bank(bank, new_row)
  assert extended.shape == (len(TRAIN_NAMES) + 1, 32)
  # Existing classes are unaffected by the extra row.
  _, before = heads(model, tiny_variables, tokens, bank, class_rows)
  _, after = heads(model, tiny_variables, tokens, extended, class_rows)
  np.testing.assert_allclose(after['stage1_logits'][:, :len(TRAIN_NAMES)], before['stage1_logits'], atol=1e-5)
  np.testing.assert_allclose(after['maps'], before['maps'], atol=1e-6)
  # The new class by name: its bank row, wherever it sits, gives the same map.
  query = np.full((BATCH, 1), len(TRAIN_NAMES), np.int32)
  zero_shot = localize(model, tiny_variables, tokens, extended, query)
  alone = localize(model, tiny_variables, tokens, new_row, np.zeros((BATCH, 1), np.int32))
  assert np.all(np.isfinite(zero_shot)) and zero_shot.shape == (BATCH, 1) + GRID
  np.testing.assert_allclose(zero_shot, alone, atol=1e-6)
  # Stage 1 scores it like any other class, so predicted-class inference can return it.
  predicted = tvsl.TVSL(**TINY, class_source='predicted', top_k=len(TRAIN_NAMES) + 1)
  _, classes = localize(predicted, tiny_variables, tokens, extended, return_classes=True)
  assert np.all(np.any(np.asarray(classes['class_rows']) == len(TRAIN_NAMES), axis=1))


def test_padded_sources_do_not_change_the_losses(tiny_variables, inputs, bank, tokens):
  _, _, class_rows = inputs
  model = tvsl.TVSL(**TINY)
  one, _ = heads(model, tiny_variables, tokens, bank, class_rows[:, :1])
  padded_rows = np.concatenate([class_rows[:, :1], np.full((BATCH, 1), -1, np.int32)], axis=1)
  padded, outputs = heads(model, tiny_variables, tokens, bank, padded_rows)
  for name in one:
    np.testing.assert_allclose(padded[name], one[name], rtol=1e-5, err_msg=name)
  np.testing.assert_array_equal(outputs['valid'][:, 1], False)


def test_contrastive_groups_are_independent_problems(tiny_variables, inputs, bank, tokens):
  """loss_groups=2 (per-device negatives on 2 devices) = the mean of the two half-batch losses."""
  _, _, class_rows = inputs
  grouped, outputs = heads(tvsl.TVSL(**TINY, loss_groups=2), tiny_variables, tokens, bank, class_rows)
  assert outputs['cnt_logits'].shape == (2, BATCH, BATCH)
  halves = [heads(tvsl.TVSL(**TINY), tiny_variables, jax.tree.map(lambda x, s=s: x[s], tokens), bank,
                  class_rows[s])[0] for s in (slice(0, 2), slice(2, 4))]
  np.testing.assert_allclose(grouped['loss_cnt'], (halves[0]['loss_cnt'] + halves[1]['loss_cnt']) / 2, rtol=1e-5)


def test_switches(tiny_variables, inputs, bank, tokens):
  canvas, waveform, class_rows = inputs
  # audio_scale='audioclip' = the official path fed 32768 x the waveform.
  scaled = run(tvsl.TVSL(**TINY, audio_scale='audioclip'), tiny_variables, canvas, waveform,
               method='encode_tokens', train=False)
  manual = run(tvsl.TVSL(**TINY), tiny_variables, canvas, waveform * 32768.0, method='encode_tokens', train=False)
  np.testing.assert_allclose(scaled['audio_tokens'], manual['audio_tokens'], rtol=1e-6)
  assert not np.allclose(scaled['audio_tokens'], tokens['audio_tokens'])
  # pos_interp changes the positional table of the image tokens.
  grid = run(tvsl.TVSL(**TINY, pos_interp='grid_2d'), tiny_variables, canvas, waveform, method='encode_tokens',
             train=False)
  assert not np.allclose(grid['image_tokens'], tokens['image_tokens'])
  # label_order: 'official' takes the dataset indices as targets, 'consistent' the bank rows.
  labels = np.where(class_rows == 4, 5, np.where(class_rows == 5, 4, class_rows))
  official, _ = heads(tvsl.TVSL(**TINY), tiny_variables, tokens, bank, class_rows, labels)
  consistent_model = tvsl.TVSL(**TINY, label_order='consistent')
  consistent, _ = heads(consistent_model, tiny_variables, tokens, bank, class_rows, labels)
  plain, _ = heads(tvsl.TVSL(**TINY), tiny_variables, tokens, bank, class_rows)
  np.testing.assert_allclose(consistent['loss_img'], plain['loss_img'], rtol=1e-6)
  assert official['loss_img'] != consistent['loss_img'] and official['loss_cnt'] == consistent['loss_cnt']
  with pytest.raises(ValueError, match='bn_mode'):
    tvsl.TVSL(**TINY, bn_mode='sync').apply(tiny_variables, canvas, waveform, bank, class_rows, train=False)


def test_postprocess_inversion_switch():
  raw = np.zeros((1, 1, 7, 14), np.float32)
  raw[..., :3, :3] = -1.0  # metrics.md T10: the low box becomes the source after inversion.
  inverted = tvsl.TVSL(**TINY).postprocess(raw)
  plain = tvsl.TVSL(**TINY, invert_map=False).postprocess(raw)
  assert inverted['score'].shape == (1, 1, 224, 448)
  np.testing.assert_allclose(inverted['score'] + plain['score'], 1.0, atol=1e-6)
  assert inverted['infer'][0, 0, 10, 10] and not plain['infer'][0, 0, 10, 10]


def test_label_order_helpers():
  names = text_bank_lib.official_bank_names(['cattle, bovinae cowbell', 'cattle mooing', 'dog barking',
                                             'cattle mooing', 'cat purring'])
  assert names == ['cat purring', 'cattle mooing', 'cattle, bovinae cowbell', 'dog barking']
  assert text_bank_lib.underscore_name('female speech, woman speaking') == 'female_speech_woman_speaking'
  np.testing.assert_array_equal(text_bank_lib.official_label_indices(names), [0, 2, 1, 3])


def test_golden_bank_order_has_identical_label_indices(golden_dir):
  with open(golden_dir / 'audioclip' / 'texts.json') as f:
    texts = json.load(f)
  names = text_bank_lib.official_bank_names(texts['text_bank'])
  assert names == texts['tvsl_text_bank_sorted']
  np.testing.assert_array_equal(text_bank_lib.official_label_indices(names), np.arange(len(names)))


# ------------------------------------------------------------------------------------- ablations


def test_single_stage_ablation(tiny_variables, inputs, bank, tokens):
  canvas, waveform, class_rows = inputs
  model = tvsl.TVSLSingleStage(**TINY)
  variables = {'params': {k: v for k, v in tiny_variables['params'].items()
                          if k not in (tvsl_layers.FUSION, tvsl_layers.STAGE1_SCALE)},
               'batch_stats': tiny_variables['batch_stats']}
  abstract = tvsl_params.abstract_variables(model, canvas_hw=CANVAS_HW)
  assert set(abstract['params']) == set(variables['params'])
  (losses, outputs), _ = run(model, variables, canvas, waveform, bank, class_rows, train=True,
                             mutable=('batch_stats',))
  assert set(losses) == {'loss', 'loss_img', 'loss_aud', 'loss_cnt'}
  assert all(np.isfinite(v) for v in losses.values())
  assert outputs['aud_query'].shape == (BATCH, 2, 32) and outputs['cnt_logits'].shape == (1, 2 * BATCH, 2 * BATCH)
  losses, outputs = heads(model, variables, tokens, bank, class_rows)
  assert outputs['maps'].shape == (BATCH, 2) + GRID and np.all(np.isfinite(outputs['maps']))
  np.testing.assert_allclose(localize(model, variables, tokens, bank, class_rows), outputs['maps'], atol=1e-6)
  # A repeated class is one positive.
  repeated = class_rows.copy()
  repeated[0, 1] = repeated[0, 0]
  _, outputs = heads(model, variables, tokens, bank, repeated)
  assert not outputs['valid'][0, 1] and np.all(outputs['valid'][1:])
  # Predicted classes: the top channel scores rho over the whole bank, equal to the oracle path's scores.
  predicted = tvsl.TVSLSingleStage(**TINY, class_source='predicted', top_k=3)
  maps, classes = localize(predicted, variables, tokens, bank, return_classes=True)
  assert maps.shape == (BATCH, 3) + GRID and np.all(np.isfinite(maps))
  _, oracle_classes = localize(model, variables, tokens, bank, classes['class_rows'], return_classes=True)
  np.testing.assert_allclose(classes['scores'], oracle_classes['scores'], atol=1e-5)
  assert np.all(np.diff(np.asarray(classes['scores']), axis=1) <= 0)
  # rho of every bank row, whichever rows are mapped: the mapped rows' scores are its columns.
  assert classes['bank_scores'].shape == (BATCH, len(TRAIN_NAMES))
  np.testing.assert_allclose(oracle_classes['bank_scores'], classes['bank_scores'], atol=1e-6)
  np.testing.assert_allclose(np.take_along_axis(np.asarray(classes['bank_scores']), np.asarray(classes['class_rows']),
                                                1), classes['scores'], atol=1e-5)


def test_avgn_on_audioclip_encoders():
  model = tvsl.AVGNAudioCLIP(num_classes=5, dim=32, depth_vis=1, depth_aud=1, num_heads=2, **{
      k: v for k, v in TINY.items() if k != 'adapter_hidden'})
  rng = np.random.default_rng(4)
  image = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  waveform = (0.3 * rng.standard_normal((2, SAMPLES))).astype(np.float32)
  visual_class = np.array([1, 3], np.int32)
  audio_label = np.array([[0, 1, 0, 1, 0], [0, 1, 0, 1, 0]], np.float32)
  abstract = jax.eval_shape(lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, image,
                                               waveform, visual_class, audio_label, train=False))
  assert set(abstract['params']['audioclip']) == {'visual', 'text', 'audio', 'logit_scale', 'logit_scale_ai',
                                                   'logit_scale_at'}
  variables = {'params': jax.tree.map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                                      abstract['params']),
               'batch_stats': jax.tree.map(lambda x: np.ones(x.shape, x.dtype), abstract['batch_stats'])}
  fbsp = variables['params']['audioclip']['audio']['fbsp']
  fbsp.update(fb=np.ones_like(fbsp['fb']), fc=np.arange(fbsp['fc'].shape[0], dtype=np.float32))

  @jax.jit
  def train_step_grads(variables):
    def loss_fn(params):
      (losses, outputs), _ = model.apply({**variables, 'params': params}, image, waveform, visual_class,
                                         audio_label, train=True, mutable=['batch_stats'],
                                         rngs={'dropout': jax.random.key(2)})
      return losses['loss'], (losses, outputs)
    return jax.grad(loss_fn, has_aux=True)(variables['params'])

  grads, (losses, outputs) = train_step_grads(variables)
  assert all(np.isfinite(v) for v in losses.values())
  assert outputs['img_feat'].shape == (2, 2, 2, 32) and outputs['aud_feat'].shape == (2, 32)
  frozen = traverse_util.flatten_dict(param_rules.frozen_mask(variables['params'], tvsl.FROZEN_PARAMS))
  flat_grads = traverse_util.flatten_dict(grads)
  assert any(frozen.values())
  assert all(np.all(np.asarray(flat_grads[path]) == 0) for path, is_frozen in frozen.items() if is_frozen)
  assert np.any(np.asarray(flat_grads[('img_proj', 'kernel')]) != 0)
  class_ids = np.array([[1, 3], [3, 1]])
  maps = jax.jit(lambda v: model.apply(v, image, waveform, class_ids, method='localize'))(variables)
  assert maps.shape == (2, 2, 2, 2) and np.all(np.isfinite(maps))


# ------------------------------------------------------------------------------- trainable partition


def test_official_trainable_parameter_count():
  """jax.eval_shape of the released sizes: nothing is materialised."""
  abstract = tvsl_params.abstract_variables(tvsl.TVSL())
  assert tvsl.count_params(abstract['params'], trainable=True) == tvsl_params.OFFICIAL_TRAINABLE_PARAMS  # 33.6 M
  assert tvsl.count_params(abstract['params'], trainable=False) == 134_111_910  # AudioCLIP's parameters.
  single = tvsl_params.abstract_variables(tvsl.TVSLSingleStage())
  assert tvsl.count_params(single['params'], trainable=True) == 6 * (4_197_376 + 1)


def test_only_adapters_train(tiny_variables, inputs, bank):
  canvas, waveform, class_rows = inputs
  model = tvsl.TVSL(**TINY)
  params = tiny_variables['params']
  frozen = traverse_util.flatten_dict(param_rules.frozen_mask(params, tvsl.FROZEN_PARAMS))
  mask = {path: not is_frozen for path, is_frozen in frozen.items()}
  assert {path[0] for path, trainable in mask.items() if trainable} == (
      {name for name, _ in tvsl_layers.ADAPTERS} | {gate for _, gate in tvsl_layers.ADAPTERS}
      | {tvsl_layers.FUSION, tvsl_layers.STAGE1_SCALE})
  assert all(not trainable for path, trainable in mask.items() if path[0] == 'audioclip')
  tx = tvsl.optimizer(optax.adam(1e-2))
  opt_state = tx.init(params)
  assert sum(x.size for x in jax.tree.leaves(opt_state)) < 3 * tvsl.count_params(params, trainable=True) + 10

  @jax.jit
  def step(params, opt_state, batch_stats):
    def loss_fn(params):
      (losses, _), state = model.apply({'params': params, 'batch_stats': batch_stats}, canvas, waveform, bank,
                                       class_rows, train=True, mutable=['batch_stats'])
      return losses['loss'], state
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, state['batch_stats'], loss, grads

  new_params, _, new_stats, loss, grads = step(params, opt_state, tiny_variables['batch_stats'])
  assert np.isfinite(loss)
  flat_old, flat_new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new_params)
  flat_grads = traverse_util.flatten_dict(grads)
  for path in flat_old:
    changed = np.any(np.asarray(flat_new[path]) != np.asarray(flat_old[path]))
    if path[0] == 'audioclip':
      assert not changed and np.all(np.asarray(flat_grads[path]) == 0), path
  adapter_kernel = ('visual_proj', 'fc1', 'kernel')
  assert np.any(np.asarray(flat_new[adapter_kernel]) != flat_old[adapter_kernel])
  assert np.asarray(flat_grads[(tvsl_layers.STAGE1_SCALE,)]) == 0  # The saturated clamp: a constant 100.
  assert not np.allclose(new_stats['audioclip']['visual']['bn1']['mean'],
                         tiny_variables['batch_stats']['audioclip']['visual']['bn1']['mean'])


def test_with_audioclip_merges_pretrained_towers(tiny_variables):
  fresh = random_variables(tvsl.TVSL(**TINY), seed=5)
  towers = {c: tree['audioclip'] for c, tree in tiny_variables.items()}
  merged = tvsl_params.with_audioclip(fresh, towers)
  np.testing.assert_array_equal(merged['params']['audioclip']['audio']['fc']['kernel'],
                                tiny_variables['params']['audioclip']['audio']['fc']['kernel'])
  np.testing.assert_array_equal(merged['params']['visual_proj']['fc1']['kernel'],
                                fresh['params']['visual_proj']['fc1']['kernel'])
  with pytest.raises(ValueError, match='structure'):
    tvsl_params.with_audioclip(fresh, {'params': {'visual': {}}})


def test_adapter_init_is_pytorch_linear_default():
  variables = tvsl_layers.AdapterMLP(512).init(jax.random.key(0), jnp.zeros((1, 256)))['params']
  for layer, fan_in in (('fc1', 256), ('fc2', 512)):
    for leaf in ('kernel', 'bias'):
      value = np.abs(np.asarray(variables[layer][leaf]))
      assert value.max() <= 1 / np.sqrt(fan_in) and value.max() > 0.95 / np.sqrt(fan_in), (layer, leaf)
  assert variables['fc1']['kernel'].shape == (256, 512) and variables['fc2']['kernel'].shape == (512, 256)


# ------------------------------------------------------------------------------------------ converter


def test_converter_round_trip_and_strictness(tiny_variables, tmp_path):
  model = tvsl.TVSL(**TINY)
  state_dict = tvsl_weights.variables_to_torch_state_dict(tiny_variables)
  assert len([k for k in state_dict if k in tvsl_weights.TVSL_KEYS]) == 35
  wrapped = {'model': {'module.' + k: v for k, v in state_dict.items()}, 'epoch': 3}
  converted = tvsl_weights.torch_state_dict_to_variables(wrapped, model)
  flat_a = traverse_util.flatten_dict(jax.tree.map(np.asarray, converted))
  flat_b = traverse_util.flatten_dict(jax.tree.map(np.asarray, tiny_variables))
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=str(path))

  towers_only = {k: v for k, v in state_dict.items() if k not in tvsl_weights.TVSL_KEYS}
  partial = tvsl_weights.torch_state_dict_to_variables(towers_only, model)
  assert set(partial['params']) == {'audioclip'}
  missing = {k: v for k, v in state_dict.items() if k != 'aip_w'}
  with pytest.raises(ValueError, match="missing.*'aip_w'"):
    tvsl_weights.torch_state_dict_to_variables(missing, model)
  misshaped = dict(state_dict, **{'fusion_proj.2.weight': np.zeros((3, 64), np.float32)})
  with pytest.raises(ValueError, match=r"'fusion_proj\.2\.weight': state dict has \(3, 64\)"):
    tvsl_weights.torch_state_dict_to_variables(misshaped, model)
  unknown = dict(state_dict, **{'fusion_proj.1.weight': np.zeros((3,), np.float32)})
  with pytest.raises(ValueError, match=r"Unexpected key 'fusion_proj\.1\.weight'"):
    tvsl_weights.torch_state_dict_to_variables(unknown, model)

  path = tmp_path / 'model_best.npz'
  np.savez(path, **state_dict)
  metadata = convert_lib.convert_tvsl(str(path), str(tmp_path / 'out'), unsafe_pickle=False, model=model)
  assert metadata['checkpoint_kind'] == 'tvsl' and 'tvsl' in convert_lib.FORMATS
  loaded, saved = checkpointing.load_variables(str(tmp_path / 'out'))
  assert saved['num_parameters'] == metadata['num_parameters']
  np.testing.assert_array_equal(loaded['params']['iap_w'], tiny_variables['params']['iap_w'])


def test_select_top_classes_and_first_occurrences():
  scores = jnp.array([[0.1, 0.9, 0.4, 0.8], [0.2, 0.1, 0.3, 0.05]])
  rows, top, valid = base.select_top_classes(scores, 3, threshold=0.5)
  np.testing.assert_array_equal(rows, [[1, 3, 2], [2, 0, 1]])
  np.testing.assert_array_equal(valid, [[True, True, False], [True, False, False]])
  np.testing.assert_allclose(top, [[0.9, 0.8, 0.4], [0.3, 0.2, 0.1]])
  np.testing.assert_array_equal(base.first_occurrences(jnp.array([[3, 3, -1], [0, 1, 0]])),
                                [[True, False, False], [True, True, False]])
