"""Parity of the Flax T-VSL with the official PyTorch code (tests/testdata/audioclip/tvsl_outputs.npz).

The golden T-VSL weights come from tests/golden_weights.py (`state_dict_spec_tvsl.json`, seed 0)
and reach the model through `avl_jax.convert.tvsl_weights`. The calls follow the golden README: an eval call
with the seeded running statistics, then one train-mode call (BatchNorm on batch statistics, running
statistics updated), then an eval call with those re-estimated statistics. `pytest -s` prints a table of
max |ours - official| / max |official| per array.
"""
import os
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest
import scipy.special

from avl_jax import checkpointing
from avl_jax import resampling
from avl_jax.convert import audioclip_weights
from avl_jax.convert import tvsl_weights
from avl_jax.models import tvsl
from avl_jax.models.tvsl import postprocess as tvsl_postprocess

WEIGHTS_SHA256 = '3ca1420016c852c6231ffc34c071829ae27a3f1b6ef93d5ecfc4bc5e18caa4e4'
NUM_KEYS = 896
MAX_RELATIVE_ERROR = 1e-4  # max |ours - official| / max |official|, per array.
BN_MODULES = ('visual.bn1', 'visual.layer4.2.bn3', 'audio.bn1', 'audio.layer4.2.bn3', 'audio.att4.bn',
              'audio.att5.bn')
# The min-max over the canvas divides by the map's range, ~1 % of its mean here (the random-weight image
# tokens are nearly identical, golden README): score errors are the map errors amplified ~1000x.
SCORE_ARRAYS = ('h_1_score', 'h_2_score')


@pytest.fixture(scope='module')
def golden(golden_dir):
  return golden_dir / 'audioclip'


@pytest.fixture(scope='module')
def golden_weights(golden_weights_lib):
  return golden_weights_lib.AUDIOCLIP  # tests/golden_weights.py; T-VSL shares AudioCLIP's recipe.


@pytest.fixture(scope='module')
def state_dict(golden_weights, golden):
  spec = golden_weights.load_spec(str(golden / 'state_dict_spec_tvsl.json'))
  state_dict = golden_weights.make_state_dict(spec, 0)
  assert golden_weights.fingerprint(state_dict) == WEIGHTS_SHA256, (
      'numpy draws differ from the golden generator; the golden outputs do not apply')
  return state_dict


@pytest.fixture(scope='module')
def variables(state_dict):
  return tvsl_weights.torch_state_dict_to_variables(state_dict)


@pytest.fixture(scope='module')
def inputs(golden):
  return dict(np.load(golden / 'inputs.npz'))


@pytest.fixture(scope='module')
def reference(golden):
  return dict(np.load(golden / 'tvsl_outputs.npz'))


@pytest.fixture(scope='module')
def class_rows(inputs):
  """[B, 2] bank rows of (own, partner) classes; the golden labels are one-hot over the sorted bank."""
  return np.stack([inputs['tvsl_label1'].argmax(-1), inputs['tvsl_label2'].argmax(-1)], axis=1).astype(np.int32)


@pytest.fixture(scope='module')
def text_bank(variables, inputs):
  return tvsl.encode_text_bank(variables, inputs['tvsl_bank_tokens'])


def relative_errors(ours: dict, reference: dict, title: str) -> dict[str, float]:
  errors = {}
  for name in sorted(ours):
    ours_value, ref_value = np.asarray(ours[name], np.float64), np.asarray(reference[name], np.float64)
    assert ours_value.shape == ref_value.shape, (name, ours_value.shape, ref_value.shape)
    errors[name] = float(np.max(np.abs(ours_value - ref_value)) / np.max(np.abs(ref_value)))
  print(f'\n{title}: max |ours - official| / max |official|')
  for name, error in errors.items():
    print(f'  {name:<52s} {error:.2e}')
  return errors


def assert_within(errors: dict[str, float], tolerance: float = MAX_RELATIVE_ERROR):
  failing = {name: error for name, error in errors.items() if not error <= tolerance}
  assert not failing, f'relative error above {tolerance}: {failing}'


def per_source(outputs: dict, prefix: str = '') -> dict[str, np.ndarray]:
  """Our [B, K, ...] outputs under the golden names (`aud_query_1`, `h_2`, ...)."""
  named = {}
  for k in (1, 2):
    source = k - 1
    named.update({
        f'{prefix}img_cls_logits_{k}': outputs['img_cls_logits'][:, source],
        f'{prefix}aud_cls_logits_{k}': outputs['aud_cls_logits'][:, source],
        f'{prefix}img_cls_feat_{k}': outputs['img_cls_feat'][:, source],
        f'{prefix}aud_cls_feat_{k}': outputs['aud_cls_feat'][:, source],
        f'{prefix}aud_query_{k}': outputs['aud_query'][:, source],
        f'{prefix}text_feat_class{k}': outputs['text_feat'][:, source],
    })
    if 'maps' in outputs:
      named[f'h_{k}'] = outputs['maps'][:, source:source + 1]
  return named


# ------------------------------------------------------------------------------------------ fast checks


def test_golden_weights_and_converter(state_dict, variables):
  assert len(state_dict) == NUM_KEYS
  params = variables['params']
  assert params['visual_proj']['fc1']['kernel'].shape == (1024, 2048)
  np.testing.assert_array_equal(params['img_aud_proj']['fc2']['kernel'], state_dict['img_aud_proj.2.weight'].T)
  np.testing.assert_array_equal(params['fusion_proj']['fc1']['bias'], state_dict['fusion_proj.0.bias'])
  np.testing.assert_array_equal(params['iap_w'], state_dict['iap_w'])
  np.testing.assert_array_equal(params['audioclip']['audio']['fbsp']['m'], state_dict['audio.fbsp.m'])
  assert tvsl.count_params(params, trainable=True) == 33_576_967
  back = tvsl_weights.variables_to_torch_state_dict(variables)
  assert set(back) == set(state_dict)
  for key in ('aud_cls_proj.0.weight', 'logit_scale_ml', 'visual.attnpool.q_proj.weight', 'audio.window'):
    np.testing.assert_array_equal(back[key], state_dict[key])


def test_head_parity_from_golden_tokens(variables, reference, class_rows):
  """Everything after the towers, fed the official tower tokens: isolates the T-VSL head (eval arrays)."""
  model = tvsl.TVSL()
  heads = jax.jit(lambda v, image, audio, bank: model.apply(
      v, image, audio, bank, class_rows, grid_hw=(7, 14), method='heads'))
  # The official pre-adapter image tokens are normalised; n(n(x)) = n(x) up to rounding.
  losses, outputs = heads(variables, reference['image_tokens_pre_adapter'], reference['audio_tokens_pre_adapter'],
                          reference['all_text_class'])
  ours = {name: outputs[name] for name in ('image_tokens', 'mean_img_feature', 'audio_tokens', 'mean_aud_feature',
                                            'fusion_feature', 'stage1_logits')}
  ours.update(per_source(outputs))
  ours.update(eval_loss_mcl=losses['loss_mcl'], eval_loss_img=losses['loss_img'], eval_loss_aud=losses['loss_aud'])
  assert_within(relative_errors(ours, reference, 'T-VSL head from the official tokens'), 1e-5)


def test_postprocessing_of_official_maps(reference):
  """Bicubic to the canvas, min-max and inversion applied to the official raw maps.

  The upsampled maps agree to float32 rounding (a few ulps: PyTorch's kernel sums its taps in another
  order); the min-max divides by a range of ~1 % of the values, so the scores carry those ulps x ~100.
  """
  ours = {}
  for k in (1, 2):
    processed = tvsl_postprocess.postprocess_maps(reference[f'h_{k}'][:, 0])
    ours[f'h_{k}_up'], ours[f'h_{k}_score'] = processed['upsampled'], processed['score']
  errors = relative_errors(ours, reference, 'T-VSL post-processing of the official maps')
  assert_within({name: error for name, error in errors.items() if name.endswith('_up')}, 1e-6)
  assert_within(errors)
  for k in (1, 2):
    ours_infer = ours[f'h_{k}_score'] >= tvsl_postprocess.THRESHOLD
    official_infer = reference[f'h_{k}_score'] >= np.float32(tvsl_postprocess.THRESHOLD)
    flipped = ours_infer != official_infer
    near = np.abs(reference[f'h_{k}_score'] - tvsl_postprocess.THRESHOLD) <= errors[f'h_{k}_score']
    print(f'  h_{k} binarised at 0.3: {int(flipped.sum())} of {flipped.size} pixels differ (ties at the threshold '
          f'within the score error: {int((near & flipped).sum())})')
    assert np.all(near[flipped])


# ----------------------------------------------------------------------------------- the full model


@pytest.fixture(scope='module')
def official_calls(variables, inputs, text_bank, class_rows):
  """Eval (seeded stats) -> train (batch stats, updates) -> eval (re-estimated stats), as the golden run."""
  model = tvsl.TVSL()
  canvas = inputs['canvas'].transpose(0, 2, 3, 1)
  waveform = inputs['waveforms'][:, None, :]  # T-VSL feeds [-1, 1] samples with a channel axis.
  evaluate = jax.jit(lambda v: model.apply(v, canvas, waveform, text_bank, class_rows, train=False))
  train = jax.jit(lambda v: model.apply(v, canvas, waveform, text_bank, class_rows, train=True,
                                        mutable=['batch_stats']))
  eval_losses, eval_outputs = evaluate(variables)
  (train_losses, train_outputs), updated = train(variables)
  after = {'params': variables['params'], 'batch_stats': updated['batch_stats']}
  _, after_outputs = evaluate(after)
  return {'eval': (eval_losses, eval_outputs), 'train': (train_losses, train_outputs),
          'batch_stats': updated['batch_stats'], 'after': after_outputs}


@pytest.mark.slow
def test_parity_with_official_tvsl(official_calls, text_bank, reference):
  """Every array of tvsl_outputs.npz (scores: see test_score_parity_and_binarisation)."""
  eval_losses, eval_outputs = official_calls['eval']
  train_losses, train_outputs = official_calls['train']
  ours = {
      'all_text_class': text_bank,
      'image_tokens_pre_adapter': eval_outputs['image_tokens_pre_adapter'],
      'audio_tokens_pre_adapter': eval_outputs['audio_tokens_raw'],
      'audio_global_embed_raw': eval_outputs['audio_embedding'],
      'eval_loss_mcl': eval_losses['loss_mcl'],
      'eval_loss_img': eval_losses['loss_img'],
      'eval_loss_aud': eval_losses['loss_aud'],
      'train_loss_total': train_losses['loss'],
      'train_loss_mcl': train_losses['loss_mcl'],
      'train_loss_img': train_losses['loss_img'],
      'train_loss_aud': train_losses['loss_aud'],
      'train_loss_cnt': train_losses['loss_cnt'],
      'train_stage1_logits': train_outputs['stage1_logits'],
      'train_cnt_logits': train_outputs['cnt_logits'][0],
      'train_mean_img_feature': train_outputs['mean_img_feature'],
      'train_mean_aud_feature': train_outputs['mean_aud_feature'],
      'train_aud_query_1': train_outputs['aud_query'][:, 0],
      'train_img_aud_feat_1': train_outputs['img_aud_feat'][:, 0],
      'h_1_after_train': official_calls['after']['maps'][:, 0:1],
      'h_2_after_train': official_calls['after']['maps'][:, 1:2],
  }
  for name in ('image_tokens', 'mean_img_feature', 'audio_tokens', 'mean_aud_feature', 'fusion_feature',
               'stage1_logits'):
    ours[name] = eval_outputs[name]
  ours.update(per_source(eval_outputs))
  for k in (1, 2):
    ours[f'h_{k}_up'] = tvsl_postprocess.postprocess_maps(np.asarray(eval_outputs['maps'][:, k - 1]))['upsampled']
  stats = {audioclip_weights.torch_key('batch_stats', path): value for path, value in
           traverse_util.flatten_dict(official_calls['batch_stats']['audioclip']).items()}
  for module in BN_MODULES:
    for stat in ('running_mean', 'running_var'):
      ours[f'bn_after_train__{module}.{stat}'] = stats[f'{module}.{stat}']
  untested = {name for name in reference if name not in ours and not name.endswith('num_batches_tracked')}
  assert untested == set(SCORE_ARRAYS), untested  # Flax BatchNorm keeps no step counter.
  assert_within(relative_errors(ours, reference, 'T-VSL golden parity (eval, train, eval after train)'))


def float64_head_maps(variables, reference, class_rows) -> np.ndarray:
  """The official map path evaluated in float64 from the official (float32) tokens: [B, K, 7, 14].

  The distance of the official float32 maps from these is the official run's own rounding in the head.
  """
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), variables['params'])

  def adapter(mlp, gate, x):
    hidden = x @ params[mlp]['fc1']['kernel'] + params[mlp]['fc1']['bias']
    hidden = 0.5 * hidden * (1.0 + scipy.special.erf(hidden / np.sqrt(2.0)))
    mlp_output = hidden @ params[mlp]['fc2']['kernel'] + params[mlp]['fc2']['bias']
    return params[gate] * x + (1.0 - params[gate]) * mlp_output

  def unit(x, eps=0.0):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)

  as64 = lambda name: np.asarray(reference[name], np.float64)
  image = unit(adapter('visual_proj', 'vp_w', unit(as64('image_tokens_pre_adapter'))))
  audio = unit(adapter('audio_proj', 'ap_w', as64('audio_tokens_pre_adapter')))
  maps = []
  for source in range(class_rows.shape[1]):
    text = as64('all_text_class')[class_rows[:, source]]
    image_mask = unit(np.einsum('bld,bd->bl', image, text), 1e-12)
    audio_mask = unit(np.einsum('bld,bd->bl', audio, text), 1e-12)
    query = unit(adapter('aud_img_proj', 'aip_w', np.mean(audio_mask[..., None] * audio, axis=1)))
    adapted = unit(adapter('img_aud_proj', 'iap_w', image_mask[..., None] * image))
    maps.append(unit(np.einsum('bld,bd->bl', adapted, query)).reshape(-1, 7, 14))
  return np.stack(maps, axis=1)


def float64_scores(raw_maps: np.ndarray) -> np.ndarray:
  """Bicubic (float64 matrices), min-max and inversion in float64: [..., 224, 448]."""
  upsampled = resampling.upsample_bicubic(np.asarray(raw_maps, np.float64), (224, 448))
  low = upsampled.min(axis=(-2, -1), keepdims=True)
  high = upsampled.max(axis=(-2, -1), keepdims=True)
  return (high - upsampled) / (high - low)


@pytest.mark.slow
def test_score_parity_and_binarisation(official_calls, variables, reference, class_rows):
  """End-to-end inverted scores and their 0.3 binarisation (documented exception to the 1e-4 rule).

  The scores are min-max normalised maps whose range is ~1 % of their values here (the random-weight image
  tokens are nearly identical), so float32 differences of the maps (~2e-6 relative) grow ~2000x. Evidence
  that 1e-4 is below what the official float32 numbers themselves resolve: the official head evaluated in
  float64 from the official tokens moves the official scores by as much as ours differ (and the golden README
  measured 2.6e-4 between 1- and 2-thread runs of the official code). Checked: the score error stays within
  the amplified map error, and binarised pixels differ only where the official score is within that error
  of 0.3.
  """
  _, eval_outputs = official_calls['eval']
  exact_maps = float64_head_maps(variables, reference, class_rows)
  print('\nT-VSL scores (min-max + inversion of the bicubic maps) and binarisation at 0.3')
  for k in (1, 2):
    maps = np.asarray(eval_outputs['maps'][:, k - 1])
    processed = tvsl_postprocess.postprocess_maps(maps)
    official_up, official_score = reference[f'h_{k}_up'], reference[f'h_{k}_score']
    up_error = np.max(np.abs(processed['upsampled'] - official_up))
    span = official_up.max(axis=(1, 2)) - official_up.min(axis=(1, 2))
    amplification = 2.0 / np.min(span)  # score = (max - x) / (max - min): errors of x, max, min over the range.
    score_error = np.max(np.abs(processed['score'] - official_score))
    official_map_rounding = np.max(np.abs(reference[f'h_{k}'][:, 0] - exact_maps[:, k - 1])) / np.max(
        np.abs(reference[f'h_{k}']))
    exact_score = float64_scores(exact_maps[:, k - 1])
    official_score_rounding = np.max(np.abs(official_score - exact_score))
    ours_score_rounding = np.max(np.abs(processed['score'] - exact_score))
    official_infer = official_score >= np.float32(tvsl_postprocess.THRESHOLD)
    flipped = processed['infer'] != official_infer
    near = np.abs(official_score - tvsl_postprocess.THRESHOLD) <= score_error
    print(f'  h_{k}_score: ours vs official {score_error:.2e} (map error {up_error:.2e} x amplification '
          f'{amplification:.0f} = {up_error * amplification:.2e}); official vs its float64 evaluation: maps '
          f'{official_map_rounding:.2e} relative, scores {official_score_rounding:.2e}; ours vs that float64 '
          f'evaluation: scores {ours_score_rounding:.2e}')
    print(f'  h_{k} binarised at 0.3: {int(flipped.sum())} of {flipped.size} pixels differ, all within the score '
          f'error of the threshold: {bool(np.all(near[flipped]))}')
    assert score_error <= up_error * amplification * 1.01 + 1e-6
    assert score_error <= 2 * official_score_rounding + 1e-4  # Same order as the official's own rounding.
    assert np.all(near[flipped])


@pytest.mark.slow
def test_convert_cli_tvsl_checkpoint(state_dict, variables, tmp_path):
  """`python -m avl_jax.convert --format=tvsl` on a DDP-prefixed T-VSL state dict of the released sizes gives
  exactly the converter's variables; a second run refuses to overwrite."""
  path = tmp_path / "model_best.npz"
  np.savez(path, **{f"module.{k}": v for k, v in state_dict.items()})  # DDP keys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "avl_jax.convert", "--format=tvsl", f"--input={path}",
         f"--output={tmp_path / 'out'}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  loaded, metadata = checkpointing.load_variables(str(tmp_path / "out"))
  assert metadata["format"] == "tvsl" and metadata["checkpoint_kind"] == "tvsl"
  flat = lambda tree: {(c,) + k: v for c in tree for k, v in traverse_util.flatten_dict(dict(tree[c])).items()}
  expected, got = flat(variables), flat(loaded)
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg="/".join(key))
  again = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert again.returncode != 0 and "already exists" in again.stderr
