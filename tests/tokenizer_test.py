"""The CLIP BPE tokenizer against the official token ids (tests/testdata/audioclip/tokenizer_cases.json)."""
import json

import numpy as np
import pytest

from avl_jax.models.audioclip import tokenizer as tokenizer_lib


@pytest.fixture(scope='module')
def audioclip_golden(golden_dir):
  return golden_dir / 'audioclip'


@pytest.fixture(scope='module')
def tokenizer(audioclip_golden):
  return tokenizer_lib.Tokenizer(str(audioclip_golden / 'bpe_simple_vocab_16e6.txt.gz'))


@pytest.fixture(scope='module')
def cases(audioclip_golden):
  with open(audioclip_golden / 'tokenizer_cases.json') as f:
    return json.load(f)


def test_vocabulary_file_and_special_ids(audioclip_golden, tokenizer):
  path = str(audioclip_golden / 'bpe_simple_vocab_16e6.txt.gz')
  assert tokenizer_lib.file_sha256(path) == tokenizer_lib.BPE_VOCAB_SHA256
  assert len(tokenizer.encoder) == len(tokenizer.decoder) == tokenizer_lib.VOCAB_SIZE == 49408
  assert len(tokenizer.merge_ranks) == tokenizer_lib.NUM_MERGES == 48894
  assert (tokenizer.sot_id, tokenizer.eot_id) == (49406, 49407)
  assert len(set(tokenizer_lib.byte_to_unicode().values())) == 256


def test_matches_official_cases(tokenizer, cases):
  assert len(cases) == 35
  for case in cases:
    text = case['text']
    assert tokenizer_lib.clean_text(text) == case['cleaned'], text
    ids = tokenizer.encode(text)
    assert ids == case['bpe_ids'], text
    assert [tokenizer.decoder[i] for i in ids] == case['bpe_tokens'], text
    np.testing.assert_array_equal(tokenizer.tokenize(text, truncate=True)[0], case['ids_truncate'], text)
    if case['ids'] is None:
      message = case['error'].split(': ', 1)[1]
      with pytest.raises(ValueError) as error:
        tokenizer.tokenize(text)
      assert str(error.value) == message
    else:
      np.testing.assert_array_equal(tokenizer.tokenize(text)[0], case['ids'], text)


def test_truncation_keeps_eot_last(tokenizer, cases):
  too_long = [case['text'] for case in cases if case['ids'] is None]
  assert len(too_long) == 2
  ids = tokenizer.tokenize(too_long, truncate=True)
  assert ids.shape == (2, 77) and ids.dtype == np.int32
  assert np.all(ids[:, 0] == 49406) and np.all(ids[:, -1] == 49407) and np.all(ids != 0)
  short = tokenizer.tokenize(['a', ''], context_length=5)
  np.testing.assert_array_equal(short, [[49406, 320, 49407, 0, 0], [49406, 49407, 0, 0, 0]])


def test_golden_input_token_arrays(tokenizer, audioclip_golden):
  inputs = np.load(audioclip_golden / 'inputs.npz')
  with open(audioclip_golden / 'texts.json') as f:
    texts = json.load(f)
  np.testing.assert_array_equal(tokenizer.tokenize(texts['text_bank']), inputs['text_tokens'])
  np.testing.assert_array_equal(tokenizer.tokenize(texts['gt_classes']), inputs['gt_text_tokens'])
  np.testing.assert_array_equal(tokenizer.tokenize(texts['tvsl_text_bank_sorted']), inputs['tvsl_bank_tokens'])


def test_decode_inverts_encode_up_to_cleaning(tokenizer):
  text = 'Dog barking, café 3.14 🎻!'
  assert tokenizer.decode(tokenizer.encode(text)).strip() == 'dog barking , café 3 . 1 4 🎻!'


def test_merge_file_must_hold_all_merges(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'short.txt.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\ni n\nt h\n')
  with pytest.raises(ValueError, match='holds 2 merge rules; CLIP needs 48894'):
    tokenizer_lib.Tokenizer(str(path))
