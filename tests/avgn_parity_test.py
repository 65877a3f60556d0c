"""Parity of the Flax AVGN with the official PyTorch model (tests/testdata/avgn) and converter checks.

`pytest -s tests/avgn_parity_test.py` prints the largest relative error of every golden output.
"""
import functools
import logging

from flax import traverse_util
import jax
import numpy as np
import pytest

from avl_jax.convert import avgn_weights
from avl_jax.models import avgn

NUM_CLASSES = 11  # Of the golden set.
WEIGHTS_SHA256 = 'e9a47aac67b91b36584c1fd0f555de3ac8af573436e273e4b74fc90682665957'
MAX_RELATIVE_ERROR = 1e-4  # max |ours - reference| / max |reference|, per array.
# Golden arrays that are not model outputs: the targets (inputs) and evaluation post-processing.
NOT_MODEL_OUTPUTS = frozenset({
    'cls_target_v', 'cls_target_a', 'avl_map_up', 'scores', 'pred', 'conf', 'thr', 'infer', 'val_ciou',
    'val_piap', 'val_area', 'val_nbox', 'val_precision_at_30', 'val_piap_average', 'val_f1_at_30'})
TINY = dict(num_classes=5, resnet_width=8, resnet_blocks=(1, 1, 1, 1), dim=32, depth_vis=1, depth_aud=1,
            num_heads=4)


@pytest.fixture(scope='module')
def avgn_golden(golden_dir):
  return golden_dir / 'avgn'


@pytest.fixture(scope='module')
def golden_weights(golden_weights_lib):
  """The golden set's seeded weight recipe (tests/golden_weights.py)."""
  return golden_weights_lib.AVGN


@pytest.fixture(scope='module')
def golden_spec(golden_weights, avgn_golden):
  return golden_weights.load_spec(str(avgn_golden / 'state_dict_spec.json'))


@pytest.fixture(scope='module')
def golden_state_dict(golden_weights, golden_spec):
  state_dict = golden_weights.make_state_dict(golden_spec, 0)
  assert golden_weights.fingerprint(state_dict) == WEIGHTS_SHA256, (
      'numpy draws differ from the golden generator; the golden outputs do not apply')
  return state_dict


def _nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def _golden_layout(losses, outputs, intermediates) -> dict[str, np.ndarray]:
  """Our arrays under the golden names, in PyTorch layouts."""
  sown = {name: np.asarray(value[0])
          for name, value in traverse_util.flatten_dict(intermediates, sep='/').items()}
  ours = {f'img_layer{i}': _nchw(sown[f'imgnet/layer{i}']) for i in (1, 2, 3)}
  ours |= {f'aud_layer{i}': _nchw(sown[f'audnet/layer{i}']) for i in (1, 2, 3, 4)}
  for short, branch in (('xv', 'visual_encoder'), ('xa', 'audio_encoder')):
    ours[f'{short}_tokens_after_blocks'] = sown[f'{branch}/tokens_after_blocks']
    ours[f'{short}_group_tokens_after_blocks'] = sown[f'{branch}/group_tokens_after_blocks']
    ours[f'{short}_assign_soft'] = sown[f'{branch}/grouping/assign/assign_soft'][:, None]  # One head.
    ours[short] = outputs[short]
  ours |= {
      'img_backbone': _nchw(sown['img_backbone']),
      'img_proj': _nchw(sown['img_projected']),
      'img_feat': _nchw(outputs['img_feat']),
      'aud_backbone': sown['aud_backbone'],
      'aud_proj': sown['aud_projected'],
      'aud_feat': outputs['aud_feat'],
      'aud_selected': outputs['aud_selected'],
      'S_logits': outputs['S_logits'],
      'Savl': outputs['map'],
      'xmil_logits': sown['xmil_logits'],
      'av_cls_logits': outputs['av_cls_logits'],
      'logit_prob_v': outputs['logit_prob_v'],
      'logit_prob_a': outputs['logit_prob_a'],
      'prob_v': outputs['prob_v'],
      'prob_a': outputs['prob_a'],
      'loss_loc': losses['loss_loc'],
      'loss_test': losses['loss_loc'],
      'loss_cls_token': losses['loss_cls_token'],
      'loss_bce_v': losses['loss_bce_v'],
      'loss_bce_a': losses['loss_bce_a'],
      'loss_cls_pred': losses['loss_cls_pred'],
      'loss_total': losses['loss'],
  }
  return {name: np.asarray(value) for name, value in ours.items()}


def test_golden_weights_fingerprint(golden_state_dict, golden_spec):
  assert len(golden_state_dict) == len(golden_spec) == 443


@pytest.mark.slow
def test_parity_with_official_avgn(avgn_golden, golden_state_dict, caplog):
  # The golden inputs are the official precomputed log spectrograms.
  model = avgn.AVGN(num_classes=NUM_CLASSES, resnet_width=64, dim=512, depth_vis=3, depth_aud=3, tau=0.03,
                    attn_assign='soft', audio_input='spectrogram')
  with caplog.at_level(logging.INFO):
    variables = avgn_weights.torch_state_dict_to_variables(golden_state_dict, model)
  han_lines = [r for r in caplog.records if 'audio_encoder.han_encoder.' in r.getMessage()]
  assert len(han_lines) == 1 and 'Skipped 40' in han_lines[0].getMessage()

  inputs = np.load(avgn_golden / 'inputs.npz')
  reference = dict(np.load(avgn_golden / 'outputs.npz'))
  visual_class = inputs['class_ids'].astype(np.int32)
  np.testing.assert_array_equal(reference['cls_target_v'], np.eye(NUM_CLASSES)[visual_class])
  np.testing.assert_array_equal(reference['cls_target_a'], inputs['labels'])

  apply = jax.jit(functools.partial(model.apply, train=False, mutable=['intermediates']))
  with jax.default_matmul_precision('highest'):
    (losses, outputs), state = apply(
        variables, _nchw_to_nhwc(inputs['image']), _nchw_to_nhwc(inputs['spec']), visual_class,
        inputs['labels'])
  ours = _golden_layout(losses, outputs, state['intermediates'])
  assert set(ours) == set(reference) - NOT_MODEL_OUTPUTS

  errors = {}
  for name in sorted(ours):
    assert ours[name].shape == reference[name].shape, (name, ours[name].shape, reference[name].shape)
    scale = np.max(np.abs(reference[name]))
    errors[name] = float(np.max(np.abs(ours[name] - reference[name])) / scale)
  print('\nAVGN golden parity: max |ours - official| / max |official|')
  for name, error in errors.items():
    print(f'  {name:<30s} {error:.2e}')
  failing = {name: error for name, error in errors.items() if not error <= MAX_RELATIVE_ERROR}
  assert not failing, f'relative error above {MAX_RELATIVE_ERROR}: {failing}'


# ------------------------------------------------------------------------------------------ converter


def _random_variables(model) -> dict:
  """Random values with the model's variable shapes (no init compile needed)."""
  abstract = avgn_weights.abstract_model_variables(model)
  numpy_rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: numpy_rng.standard_normal(x.shape).astype(x.dtype), abstract)


@pytest.fixture(scope='module')
def tiny_model_and_state_dict():
  model = avgn.AVGN(**TINY)
  variables = _random_variables(model)
  return model, variables, avgn_weights.variables_to_torch_state_dict(variables)


def _assert_same_tree(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=str(path))


def test_round_trip_and_wrappers(tiny_model_and_state_dict):
  model, variables, state_dict = tiny_model_and_state_dict
  assert state_dict['imgnet.layer2.0.downsample.0.weight'].shape == (16, 8, 1, 1)
  assert state_dict['audio_encoder.blocks.0.attn.qkv.weight'].shape == (96, 32)
  assert state_dict['visual_encoder.grouping.mlp_inter.fc1.weight'].shape == (16, 5)
  assert 'audnet.bn1.num_batches_tracked' in state_dict
  _assert_same_tree(avgn_weights.torch_state_dict_to_variables(state_dict, model), variables)
  ddp_checkpoint = {'model': {'module.' + k: v for k, v in state_dict.items()}, 'epoch': 3}
  _assert_same_tree(avgn_weights.torch_state_dict_to_variables(ddp_checkpoint, model), variables)


def test_default_model_takes_num_classes_from_av_token(golden_state_dict, tiny_model_and_state_dict):
  variables = avgn_weights.torch_state_dict_to_variables(golden_state_dict)
  assert variables['params']['av_token'].shape == (NUM_CLASSES, 512)
  assert variables['params']['imgnet']['layer4_1']['conv2']['kernel'].shape == (3, 3, 512, 512)
  assert 'han_encoder' not in variables['params']['audio_encoder']
  _, _, tiny_state_dict = tiny_model_and_state_dict
  with pytest.raises(ValueError, match='num_classes=7 but model.num_classes=5'):
    avgn_weights.torch_state_dict_to_variables(tiny_state_dict, avgn.AVGN(**TINY), num_classes=7)
  # The default model is the paper configuration: a tiny checkpoint fails with both shapes named.
  with pytest.raises(ValueError, match=r"Shape mismatch for '.+': state dict has \(.+\), the model expects"):
    avgn_weights.torch_state_dict_to_variables(tiny_state_dict)


def test_missing_unexpected_and_misshaped_keys(tiny_model_and_state_dict):
  model, _, state_dict = tiny_model_and_state_dict
  missing = {k: v for k, v in state_dict.items() if k != 'audio_encoder.grouping.assign.q_proj.bias'}
  with pytest.raises(ValueError, match=r"missing.*'audio_encoder\.grouping\.assign\.q_proj\.bias'"):
    avgn_weights.torch_state_dict_to_variables(missing, model)
  unexpected = dict(state_dict, **{'fc_extra.weight': np.zeros((2, 3), np.float32)})
  with pytest.raises(ValueError, match=r"Unexpected key 'fc_extra\.weight' \(shape \(2, 3\)\)"):
    avgn_weights.torch_state_dict_to_variables(unexpected, model)
  stray_counter = dict(state_dict, **{'img_proj.num_batches_tracked': np.zeros((), np.int64)})
  with pytest.raises(ValueError, match="Unexpected key 'img_proj.num_batches_tracked'"):
    avgn_weights.torch_state_dict_to_variables(stray_counter, model)
  misshaped = dict(state_dict, **{'av_token': np.zeros((6, 32), np.float32)})
  with pytest.raises(ValueError, match=r"Shape mismatch for 'av_token': state dict has \(6, 32\).*\(5, 32\)"):
    avgn_weights.torch_state_dict_to_variables(misshaped, model)
  transposed = dict(state_dict)
  transposed['fc_cls.weight'] = state_dict['fc_cls.weight'].T
  with pytest.raises(ValueError, match=r"'fc_cls\.weight'.*\(32, 5\).*\(5, 32\)"):
    avgn_weights.torch_state_dict_to_variables(transposed, model)


def test_han_encoder_keys_skipped_or_kept(caplog):
  with_han = avgn.AVGN(with_han_params=True, **TINY)
  han_variables = _random_variables(with_han)
  state_dict = avgn_weights.variables_to_torch_state_dict(han_variables)
  han_keys = [k for k in state_dict if k.startswith('audio_encoder.han_encoder.')]
  assert len(han_keys) == 40
  assert state_dict['audio_encoder.han_encoder.mlp_inter.fc1.weight'].shape == (16, 10)
  _assert_same_tree(avgn_weights.torch_state_dict_to_variables(state_dict, with_han), han_variables)

  with caplog.at_level(logging.INFO):
    converted = avgn_weights.torch_state_dict_to_variables(state_dict, avgn.AVGN(**TINY))
  han_lines = [r for r in caplog.records if 'han_encoder' in r.getMessage()]
  assert len(han_lines) == 1 and 'Skipped 40' in han_lines[0].getMessage()
  assert 'han_encoder' not in converted['params']['audio_encoder']


def test_torchvision_resnet18(golden_weights, golden_spec, caplog):
  # The golden recipe depends only on (seed, key), so the imgnet subset doubles as torchvision weights.
  subset = [(key, shape, dtype) for key, shape, dtype in golden_spec if key.startswith('imgnet.')]
  imgnet = golden_weights.make_state_dict(subset, 0)
  torchvision = {key[len('imgnet.'):]: value for key, value in imgnet.items()}
  torchvision['fc.weight'] = np.zeros((1000, 512), np.float32)
  torchvision['fc.bias'] = np.zeros((1000,), np.float32)
  with caplog.at_level(logging.INFO):
    variables = avgn_weights.resnet18_torchvision_to_variables(torchvision)
  assert any("'fc.'" in r.getMessage() and 'Skipped 2' in r.getMessage() for r in caplog.records)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['conv1']['kernel'], torchvision['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['layer3_0']['downsample_0']['kernel'],
                                torchvision['layer3.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['layer4_1']['bn2']['scale'], torchvision['layer4.1.bn2.weight'])
  np.testing.assert_array_equal(stats['layer2_0']['downsample_1']['var'],
                                torchvision['layer2.0.downsample.1.running_var'])
  assert len(traverse_util.flatten_dict(variables)) == len(imgnet) - 20  # 20 num_batches_tracked dropped.
  del torchvision['layer1.0.bn1.running_mean']
  with pytest.raises(ValueError, match=r"missing.*'layer1\.0\.bn1\.running_mean'"):
    avgn_weights.resnet18_torchvision_to_variables(torchvision)
