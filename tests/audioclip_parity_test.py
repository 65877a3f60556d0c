"""Parity of the Flax AudioCLIP with the official PyTorch code (tests/testdata/audioclip), converter checks and
unit tests of its pieces.

The golden weights come from tests/golden_weights.py (numpy) and reach the model through the converter's
numpy path. `pytest -s tests/audioclip_parity_test.py` prints the largest relative error of every array.
"""
import functools
import json
import logging

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax.convert import convert_lib
from avl_jax.convert import audioclip_weights
from avl_jax.models.audioclip import audio as audio_lib
from avl_jax.models.audioclip import common
from avl_jax.models.audioclip import image as image_lib
from avl_jax.models.audioclip import model as model_lib
from avl_jax.models.audioclip import text as text_lib
from avl_jax.models.audioclip import tokenizer as tokenizer_lib

WEIGHTS_SHA256 = '26926064840bacc6226af2479f41acc48588eab310c25bb1aaa571e511e03866'
MAX_RELATIVE_ERROR = 1e-4  # max |ours - official| / max |official|, per array.
NUM_KEYS, NUM_BATCH_NORMS = 861, 113
# Arrays of audioclip_outputs.npz that are inputs, not outputs.
NOT_OUTPUTS = frozenset({'audio_input_scale'})
TVSL_TOKEN_ARRAYS = ('image_tokens_pre_adapter', 'audio_tokens_pre_adapter', 'audio_global_embed_raw',
                     'all_text_class', 'text_feat_class1', 'text_feat_class2')
TVSL_BN_MODULES = ('visual.bn1', 'visual.layer4.2.bn3', 'audio.bn1', 'audio.layer4.2.bn3', 'audio.att4.bn',
                   'audio.att5.bn')


@pytest.fixture(scope='module')
def golden(golden_dir):
  return golden_dir / 'audioclip'


@pytest.fixture(scope='module')
def golden_weights(golden_weights_lib):
  """The golden set's seeded weight recipe (tests/golden_weights.py)."""
  return golden_weights_lib.AUDIOCLIP


@pytest.fixture(scope='module')
def golden_state_dict(golden_weights, golden):
  state_dict = golden_weights.make_state_dict(golden_weights.load_spec(str(golden / 'state_dict_spec.json')), 0)
  assert golden_weights.fingerprint(state_dict) == WEIGHTS_SHA256, (
      'numpy draws differ from the golden generator; the golden outputs do not apply')
  return state_dict


@pytest.fixture(scope='module')
def variables(golden_state_dict):
  return audioclip_weights.torch_state_dict_to_variables(golden_state_dict)


@pytest.fixture(scope='module')
def inputs(golden):
  return dict(np.load(golden / 'inputs.npz'))


def _nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def _relative_errors(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], title: str) -> dict:
  errors = {}
  for name in sorted(ours):
    ours_value, reference_value = np.asarray(ours[name], np.float64), np.asarray(reference[name], np.float64)
    assert ours_value.shape == reference_value.shape, (name, ours_value.shape, reference_value.shape)
    errors[name] = float(np.max(np.abs(ours_value - reference_value)) / np.max(np.abs(reference_value)))
  print(f'\n{title}: max |ours - official| / max |official|')
  for name, error in errors.items():
    print(f'  {name:<40s} {error:.2e}')
  return errors


def _assert_within(errors: dict[str, float], tolerance: float = MAX_RELATIVE_ERROR):
  failing = {name: error for name, error in errors.items() if not error <= tolerance}
  assert not failing, f'relative error above {tolerance}: {failing}'


# --------------------------------------------------------------------------------------------- parity


def test_golden_weights_fingerprint(golden_state_dict):
  assert len(golden_state_dict) == NUM_KEYS


def test_spectrogram_parity(variables, inputs, golden):
  """The FBSP front end alone (`audio_spec_db`): AudioCLIP's x * 32768 input, 3 bands of 341 bins x 392 frames."""
  reference = np.load(golden / 'audioclip_outputs.npz')
  tower = audio_lib.ESResNeXtFBSP()
  audio_variables = {'params': variables['params']['audio']}
  waveform = (inputs['waveforms'] * reference['audio_input_scale'])[:, None, :]  # [B, 1, L] works too.
  spec = jax.jit(functools.partial(tower.apply, method=tower.spectrogram))(audio_variables, waveform)
  ours = _nchw(spec)[:, None]  # [B, 1 band group, 3, 341, 392]
  errors = _relative_errors({'audio_spec_db': ours}, reference, 'AudioCLIP front end')
  _assert_within(errors)
  assert np.max(np.abs(ours - reference['audio_spec_db'])) < 0.02  # dB


def test_parity_with_official_audioclip(variables, inputs, golden):
  """Every array of audioclip_outputs.npz: both official calls (12-text bank; paired GT texts with the loss)."""
  reference = dict(np.load(golden / 'audioclip_outputs.npz'))
  model = model_lib.AudioCLIP()
  waveform = inputs['waveforms'] * reference['audio_input_scale']
  images = inputs['images'].transpose(0, 2, 3, 1)

  @jax.jit
  def official_calls(variables):
    bank, state = model.apply(variables, audio=waveform, image=images, text=inputs['text_tokens'],
                              mutable=['intermediates'])
    paired = model.apply(variables, audio=waveform, image=images, text=inputs['gt_text_tokens'],
                         with_loss=True)
    return bank, state['intermediates'], paired

  bank, sown, paired = official_calls(variables)
  sown = {name: value[0] for name, value in traverse_util.flatten_dict(sown, sep='/').items()}
  ours = {
      'audio_spec_db': _nchw(sown['audio/spec_db'])[:, None],
      'audio_layer4': _nchw(sown['audio/layer4']),
      'audio_layer4_att': _nchw(sown['audio/layer4_att']),
      'audio_pooled': sown['audio/pooled'],
      'image_layer4': _nchw(sown['visual/layer4']),
      **{f'{m}_embed_raw': sown[f'{m}_embed_raw'] for m in ('audio', 'image', 'text')},
      **{f'{m}_embed': bank['features'][m] for m in ('audio', 'image', 'text')},
      **{f'logits_{pair}': bank['logits'][pair] for pair in ('audio_image', 'audio_text', 'image_text')},
      **{f'paired_logits_{pair}': paired['logits'][pair] for pair in ('audio_text', 'image_text')},
      'paired_loss_ce': paired['loss_ce'],
      'paired_loss_ttf': paired['loss_ttf'],
      'paired_loss': paired['loss'],
  }
  assert set(ours) == set(reference) - NOT_OUTPUTS
  _assert_within(_relative_errors(ours, reference, 'AudioCLIP golden parity'))


@pytest.fixture(scope='module')
def tvsl_reference(golden):
  return dict(np.load(golden / 'tvsl_outputs.npz'))


def test_tvsl_token_mode_parity(variables, inputs, golden, tvsl_reference):
  """T-VSL's use of the towers (tvsl_outputs.npz): 98 canvas tokens, 143 audio tokens of the unscaled wave,
  the class-text bank, and the running statistics after one train-mode pass (BatchNorm on batch statistics)."""
  model = model_lib.AudioCLIP()
  canvas = inputs['canvas'].transpose(0, 2, 3, 1)
  waveform = inputs['waveforms']  # T-VSL feeds [-1, 1] samples; the front end rescales them as int16.
  with open(golden / 'texts.json') as f:
    texts = json.load(f)
  tokenizer = tokenizer_lib.Tokenizer(str(golden / 'bpe_simple_vocab_16e6.txt.gz'))
  class_ids = [tokenizer.tokenize(texts[f'tvsl_class{k}']) for k in (1, 2)]

  def towers(variables, train):
    image_tokens = model.apply(variables, canvas, train=train, return_tokens=True, method='encode_image',
                               mutable=['batch_stats'] if train else False)
    audio_out = model.apply(variables, waveform, train=train, return_tokens=True, method='encode_audio',
                            mutable=['batch_stats'] if train else False)
    return image_tokens, audio_out

  @jax.jit
  def eval_and_train(variables):
    image_tokens, (audio_tokens, audio_embedding) = towers(variables, train=False)
    bank = model.apply(variables, inputs['tvsl_bank_tokens'], method='encode_text')
    classes = [model.apply(variables, ids, method='encode_text') for ids in class_ids]
    (_, image_state), (_, audio_state) = towers(variables, train=True)
    stats = {'visual': image_state['batch_stats']['visual'], 'audio': audio_state['batch_stats']['audio']}
    return image_tokens, audio_tokens, audio_embedding, bank, classes, stats

  image_tokens, audio_tokens, audio_embedding, bank, classes, stats = eval_and_train(variables)
  ours = {
      'image_tokens_pre_adapter': model_lib.normalize(image_tokens),
      'audio_tokens_pre_adapter': audio_tokens,
      'audio_global_embed_raw': audio_embedding,
      'all_text_class': model_lib.normalize(bank),
      'text_feat_class1': model_lib.normalize(classes[0]),
      'text_feat_class2': model_lib.normalize(classes[1]),
  }
  flat_stats = {audioclip_weights.torch_key('batch_stats', path): value
                for path, value in traverse_util.flatten_dict(stats).items()}
  for module in TVSL_BN_MODULES:
    for stat in ('running_mean', 'running_var'):
      ours[f'bn_after_train__{module}.{stat}'] = flat_stats[f'{module}.{stat}']
  assert set(TVSL_TOKEN_ARRAYS) <= set(ours)
  _assert_within(_relative_errors(ours, tvsl_reference, 'T-VSL token mode / train-mode BatchNorm'))


def test_bfloat16_towers_close_to_float32(variables, inputs, golden):
  """dtype=bfloat16: the towers compute in bf16 (parameters stay float32) and stay close to the official
  float32 outputs; outputs are float32."""
  reference = np.load(golden / 'audioclip_outputs.npz')
  model = model_lib.AudioCLIP(dtype=jnp.bfloat16)
  outputs = jax.jit(lambda v: model.apply(
      v, audio=inputs['waveforms'] * reference['audio_input_scale'], image=inputs['images'].transpose(0, 2, 3, 1),
      text=inputs['text_tokens']))(variables)
  for modality in ('audio', 'image', 'text'):
    ours = np.asarray(outputs['features'][modality])
    official = reference[f'{modality}_embed']
    assert ours.dtype == np.float32
    cosine = np.sum(ours * official, axis=-1) / np.linalg.norm(official, axis=-1)
    assert np.min(cosine) > 0.998, (modality, cosine)
  for pair in ('audio_image', 'audio_text', 'image_text'):
    official = reference[f'logits_{pair}']
    error = np.max(np.abs(np.asarray(outputs['logits'][pair]) - official)) / np.max(np.abs(official))
    assert error < 0.1, (pair, error)


# ------------------------------------------------------------------------------------------ converter


def _flat(variables) -> dict:
  return {(collection,) + path: np.asarray(value) for collection in variables
          for path, value in traverse_util.flatten_dict(dict(variables[collection])).items()}


def _assert_same_tree(a, b):
  flat_a, flat_b = _flat(a), _flat(b)
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=str(path))


def test_converter_layouts_and_round_trip(golden_state_dict, variables):
  params, stats = variables['params'], variables['batch_stats']
  assert set(params) == {'visual', 'text', 'audio', 'logit_scale', 'logit_scale_ai', 'logit_scale_at'}
  assert len(_flat(variables)) == NUM_KEYS - NUM_BATCH_NORMS - 2  # Counters, window, empty fbsp bias.
  sd = golden_state_dict
  np.testing.assert_array_equal(params['audio']['layer2_0']['conv2']['kernel'],
                                sd['audio.layer2.0.conv2.weight'].transpose(2, 3, 1, 0))
  assert params['audio']['layer2_0']['conv2']['kernel'].shape == (3, 3, 8, 256)  # 32 groups of 8.
  assert params['audio']['att5']['conv_depth']['kernel'].shape == (3, 5, 1, 2048)
  np.testing.assert_array_equal(params['text']['transformer']['resblocks_3']['attn']['in_proj_kernel'],
                                sd['transformer.resblocks.3.attn.in_proj_weight'].T)
  np.testing.assert_array_equal(params['text']['text_projection'], sd['text_projection'])
  np.testing.assert_array_equal(params['text']['token_embedding']['embedding'], sd['token_embedding.weight'])
  np.testing.assert_array_equal(params['visual']['attnpool']['c_proj']['kernel'],
                                sd['visual.attnpool.c_proj.weight'].T)
  np.testing.assert_array_equal(stats['visual']['layer3_0']['downsample_1']['var'],
                                sd['visual.layer3.0.downsample.1.running_var'])
  np.testing.assert_array_equal(params['audio']['fbsp']['m'], sd['audio.fbsp.m'])
  assert params['logit_scale'].shape == ()
  back = audioclip_weights.variables_to_torch_state_dict(variables)
  assert back.keys() == sd.keys()
  for key in ('audio.att3.conv_depth.weight', 'transformer.resblocks.0.attn.in_proj_weight', 'audio.window'):
    np.testing.assert_array_equal(back[key], sd[key])


def test_dropped_entries_logged_once_per_kind(golden_state_dict, caplog):
  audio_only = {k[len('audio.'):]: v for k, v in golden_state_dict.items() if k.startswith('audio.')}
  with caplog.at_level(logging.INFO):
    variables = audioclip_weights.torch_state_dict_to_variables(audio_only)
  messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Dropped')]
  assert len(messages) == 3, messages
  assert any('audio.window' in m for m in messages) and any('audio.fbsp.bias' in m for m in messages)
  assert any('num_batches_tracked' in m for m in messages)
  assert set(variables['params']) == {'audio'} and set(variables['batch_stats']) == {'audio'}


def test_partial_checkpoints_and_wrappers(golden_state_dict, variables):
  """CLIP.pt (+ its JIT metadata scalars), ESRNXFBSP.pt (no `audio.` prefix), `{'model': ...}` with `module.`."""
  clip = {k: v for k, v in golden_state_dict.items() if not k.startswith('audio.') and 'scale_a' not in k}
  clip |= {'input_resolution': np.array(224), 'context_length': np.array(77), 'vocab_size': np.array(49408)}
  clip_variables = audioclip_weights.torch_state_dict_to_variables(clip)
  assert set(clip_variables['params']) == {'visual', 'text', 'logit_scale'}
  _assert_same_tree(clip_variables['batch_stats'], {'visual': variables['batch_stats']['visual']})
  np.testing.assert_array_equal(clip_variables['params']['text']['positional_embedding'],
                                variables['params']['text']['positional_embedding'])

  esrnx = {k[len('audio.'):]: v for k, v in golden_state_dict.items() if k.startswith('audio.')}
  esrnx_variables = audioclip_weights.torch_state_dict_to_variables({'state_dict': esrnx})
  _assert_same_tree(esrnx_variables, {c: {'audio': variables[c]['audio']} for c in variables})

  wrapped = {'model': {'module.' + k: v for k, v in golden_state_dict.items() if k.startswith('audio.')}}
  assert audioclip_weights.checkpoint_kind(audioclip_weights.unwrap_state_dict(wrapped)) == 'audioclip'


def test_unknown_missing_misshaped_keys(golden_state_dict):
  audio_only = {k: v for k, v in golden_state_dict.items() if k.startswith('audio.')}
  missing = {k: v for k, v in audio_only.items() if k != 'audio.att2.conv_point.bias'}
  with pytest.raises(ValueError, match=r"missing.*'audio\.att2\.conv_point\.bias'"):
    audioclip_weights.torch_state_dict_to_variables(missing)
  unexpected = dict(audio_only, **{'audio.fc2.weight': np.zeros((2, 3), np.float32)})
  with pytest.raises(ValueError, match=r"Unexpected key 'audio\.fc2\.weight' \(shape \(2, 3\)\)"):
    audioclip_weights.torch_state_dict_to_variables(unexpected)
  misshaped = dict(audio_only, **{'audio.fc.weight': np.zeros((1024, 1024), np.float32)})
  with pytest.raises(ValueError, match=r"'audio\.fc\.weight': state dict has \(1024, 1024\).*\(1024, 2048\)"):
    audioclip_weights.torch_state_dict_to_variables(misshaped)
  grouped = dict(audio_only, **{'audio.layer1.0.conv2.weight': np.zeros((128, 128, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight'.*\(128, 128, 3, 3\).*\(128, 4, 3, 3\)"):
    audioclip_weights.torch_state_dict_to_variables(grouped)
  bad_window = dict(audio_only, **{'audio.window': np.hanning(1654).astype(np.float32)})
  with pytest.raises(ValueError, match='Blackman-Harris'):
    audioclip_weights.torch_state_dict_to_variables(bad_window)
  with_bias = dict(audio_only, **{'audio.fbsp.bias': np.zeros((1025,), np.float32)})
  with pytest.raises(ValueError, match='without a bias'):
    audioclip_weights.torch_state_dict_to_variables(with_bias)
  with pytest.raises(ValueError, match='Not an AudioCLIP'):
    audioclip_weights.torch_state_dict_to_variables({'foo.weight': np.zeros(3)})


def test_convert_cli_audio_checkpoint(golden_state_dict, variables, tmp_path):
  """`python -m avl_jax.convert --format=audioclip` on an ESRNXFBSP-style .npz (no torch needed)."""
  path = tmp_path / 'ESRNXFBSP.npz'
  np.savez(path, **{k[len('audio.'):]: v for k, v in golden_state_dict.items() if k.startswith('audio.')})
  metadata = convert_lib.convert('audioclip', str(path), str(tmp_path / 'out'))
  assert metadata['checkpoint_kind'] == 'esresnext_fbsp' and metadata['parts'] == ['audio']
  loaded, saved_metadata = checkpointing.load_variables(str(tmp_path / 'out'))
  assert saved_metadata['format'] == 'audioclip' and saved_metadata['num_parameters'] == metadata['num_parameters']
  _assert_same_tree(loaded, {c: {'audio': variables[c]['audio']} for c in variables})


# --------------------------------------------------------------------------------------------- pieces


def test_adaptive_max_pool_matches_pytorch_windows():
  x = np.random.default_rng(0).standard_normal((2, 43, 25, 3)).astype(np.float32)
  ours = np.asarray(common.adaptive_max_pool(jnp.asarray(x), (22, 13)))
  expected = np.zeros((2, 22, 13, 3), np.float32)
  for i in range(22):
    for j in range(13):
      rows = slice(i * 43 // 22, -(-(i + 1) * 43 // 22))
      cols = slice(j * 25 // 13, -(-(j + 1) * 25 // 13))
      expected[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
  np.testing.assert_array_equal(ours, expected)
  np.testing.assert_array_equal(common.adaptive_max_pool(jnp.asarray(x), (1, 1))[:, 0, 0], x.max(axis=(1, 2)))


def test_exact_divide_and_linspace_round_like_pytorch():
  x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 1000
  np.testing.assert_array_equal(jax.jit(lambda v: common.exact_divide(v, 65535.0))(x), x / np.float32(65535))
  line = common.pytorch_linspace_f32(-1.0, 1.0, 2048)
  assert line[0] == -1 and line[-1] == 1 and line.dtype == np.float32
  np.testing.assert_array_equal(line, -line[::-1])  # Stepped from the nearer end: exactly antisymmetric.
  assert not np.any(audio_lib.fbsp_time_grid() == 0)


def test_fbsp_basis_at_init_is_the_dft():
  """m = 0, fb = 1, fc = k: W_k(t) = exp(-i k t) / sqrt(N); the official init is a plain Fourier basis."""
  bins, samples = 9, 64
  real, imag = audio_lib.fbsp_basis(jnp.zeros(bins), jnp.ones(bins), jnp.arange(bins, dtype=jnp.float32), samples)
  t = audio_lib.fbsp_time_grid(samples).astype(np.float64)
  expected = np.exp(-1j * np.arange(bins)[:, None] * t[None]) / np.sqrt(samples)
  np.testing.assert_allclose(real, expected.real, atol=1e-6)
  np.testing.assert_allclose(imag, expected.imag, atol=1e-6)
  # A window value of exactly 0 makes the official formula NaN; the port gives a finite basis.
  real, imag = audio_lib.fbsp_basis(jnp.full(bins, 0.01), jnp.zeros(bins), jnp.arange(bins, dtype=jnp.float32))
  assert np.all(np.isfinite(real)) and np.all(np.isfinite(imag))


def test_compensated_matmul_beats_plain_float32():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 1654)).astype(np.float32)
  w = rng.standard_normal((7, 1654)).astype(np.float32)
  exact = x.astype(np.float64) @ w.T.astype(np.float64)
  ours = np.asarray(jax.jit(audio_lib.compensated_matmul)(x, w))
  plain = np.asarray(jnp.einsum('btk,fk->btf', x, w, precision='highest'))
  assert np.max(np.abs(ours - exact)) < 0.5 * np.max(np.abs(plain - exact))


def test_positional_interpolation_modes():
  table = jnp.asarray(np.random.default_rng(0).standard_normal((50, 4)), jnp.float32)
  # Official 1-D: 49 rows -> 97 rows at positions j / 2 (exact midpoints), row 0 kept.
  resized = np.asarray(image_lib.linear_align_corners_1d(table[1:], 97))
  np.testing.assert_allclose(resized[::2], table[1:], rtol=0, atol=0)
  np.testing.assert_allclose(resized[1::2], (table[1:-1] + table[2:]) / 2, atol=1e-7)
  pool = image_lib.AttentionPool2d(num_heads=2, output_dim=4)
  official = pool._token_positions(table, (7, 14))  # pylint: disable=protected-access
  np.testing.assert_array_equal(official[0], table[0])
  grid = image_lib.AttentionPool2d(num_heads=2, output_dim=4, pos_interp='grid_2d')
  np.testing.assert_array_equal(grid._token_positions(table, (7, 7)), table[1:])  # pylint: disable=protected-access
  wide = np.asarray(grid._token_positions(table, (7, 14))).reshape(7, 14, 4)  # pylint: disable=protected-access
  np.testing.assert_allclose(wide[:, 0], np.asarray(table[1:]).reshape(7, 7, 4)[:, 0], atol=1e-6)
  with pytest.raises(ValueError, match="pos_interp='grid_2d'"):
    pool._global_positions(table, (7, 14))  # pylint: disable=protected-access


TINY = dict(image_layers=(1, 1, 1, 1), audio_layers=(1, 1, 1, 1), text_layers=1, image_heads=2, text_heads=2,
            text_width=64, embed_dim=32, pos_interp='grid_2d')  # grid_2d: global pooling of small images.


@pytest.fixture(scope='module')
def tiny_model_and_variables():
  model = model_lib.AudioCLIP(**TINY)
  abstract = audioclip_weights.abstract_model_variables(model)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype), abstract)
  variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])  # Positive running variances.
  return model, variables


def test_frozen_towers_get_zero_gradients(tiny_model_and_variables):
  model, variables = tiny_model_and_variables
  rng = np.random.default_rng(1)
  waveform = rng.standard_normal((2, 4000)).astype(np.float32) * 3000
  images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  ids = np.array([[49406, 320, 49407, 0], [49406, 321, 322, 49407]], np.int32)

  def loss(params, frozen):
    outputs = model.clone(frozen=frozen).apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, audio=waveform, image=images, text=ids,
        train=True, with_loss=True, mutable=['batch_stats'])[0]
    return outputs['loss']

  grads = jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], True)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
  text_grads = jax.jit(jax.grad(lambda p: jnp.sum(model.clone(frozen=False).apply(
      {'params': p}, ids, method='encode_text'))))(variables['params'])
  assert np.any(np.asarray(text_grads['text']['text_projection']) != 0)


def test_text_tower_is_causal_and_pools_at_end_of_text(tiny_model_and_variables):
  _, variables = tiny_model_and_variables
  tower = text_lib.TextTransformer(width=64, layers=1, num_heads=2, output_dim=32)
  ids = np.zeros((2, 77), np.int32)
  ids[0, :3], ids[1, :4] = [49406, 320, 49407], [49406, 321, 322, 49407]
  full = tower.apply({'params': variables['params']['text']}, ids)
  short = tower.apply({'params': variables['params']['text']}, ids[:, :6])  # Trailing padding cut.
  np.testing.assert_allclose(full, short, atol=1e-5)
  assert full.shape == (2, 32)
