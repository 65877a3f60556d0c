"""CLIP's byte-level BPE tokenizer (AudioCLIP / T-VSL text input), numpy-only.

Reads the standard merges file `bpe_simple_vocab_16e6.txt.gz` (not shipped with avl_jax; its location comes
from the config). Behaviour (docs/tvsl.md §2.3): ftfy fix -> HTML unescape twice -> strip -> collapse
whitespace -> lower-case; split with CLIP's pre-tokenisation pattern; each piece's UTF-8 bytes are mapped to
printable characters, merged by BPE rank and looked up in the 49,408-entry vocabulary. `tokenize` wraps ids
in <|startoftext|> ... <|endoftext|> and zero-pads to the context length.
"""
from collections.abc import Iterable, Sequence
import functools
import gzip
import hashlib
import html

import ftfy
import numpy as np
import regex

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894: bytes, bytes + '</w>', merges, two special tokens.
CONTEXT_LENGTH = 77
START_OF_TEXT = '<|startoftext|>'
END_OF_TEXT = '<|endoftext|>'
END_OF_WORD = '</w>'
# sha256 of the file distributed with OpenAI's CLIP; `file_sha256` lets callers check their copy.
BPE_VOCAB_SHA256 = '924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a'

# Special tokens, contractions, letter runs, single digits, runs of anything else but whitespace.
_PRETOKENIZE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_WHITESPACE = regex.compile(r'\s+')


@functools.cache
def byte_to_unicode() -> dict[int, str]:
  """The reversible byte -> printable character table of GPT-2/CLIP BPE.

  Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other
  68 bytes map, in increasing order, to the code points 256, 257, ... so no piece contains whitespace or
  control characters.
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  table = {byte: chr(byte) for byte in printable}
  next_code_point = 256
  for byte in range(256):
    if byte not in table:
      table[byte] = chr(next_code_point)
      next_code_point += 1
  return table


def clean_text(text: str) -> str:
  """ftfy fix, HTML unescape twice, whitespace collapse and lower-case (CLIP's text normalisation)."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return _WHITESPACE.sub(' ', text).strip().lower()


def file_sha256(path: str) -> str:
  """Hex sha256 of a file (compare with BPE_VOCAB_SHA256)."""
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read_merges(bpe_path: str) -> list[tuple[str, str]]:
  """The first NUM_MERGES merge rules of the gzipped merges file (its first line is a header)."""
  with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
    lines = f.read().split('\n')
  merge_lines = lines[1:1 + NUM_MERGES]
  if len(merge_lines) != NUM_MERGES or not all(merge_lines):
    count = sum(1 for line in merge_lines if line)
    raise ValueError(f'{bpe_path} holds {count} merge rules; CLIP needs {NUM_MERGES}.')
  merges = []
  for line in merge_lines:
    first, second = line.split()
    merges.append((first, second))
  return merges


class Tokenizer:
  """CLIP BPE tokenizer.

  Attributes:
    encoder: {vocabulary string: id}; `decoder` is its inverse.
    sot_id, eot_id: ids of <|startoftext|> (49406) and <|endoftext|> (49407).
  """

  def __init__(self, bpe_path: str):
    """Builds the vocabulary from the merges file at `bpe_path` (`bpe_simple_vocab_16e6.txt.gz`)."""
    merges = _read_merges(bpe_path)
    byte_chars = list(byte_to_unicode().values())
    vocab = byte_chars + [char + END_OF_WORD for char in byte_chars]
    vocab += [first + second for first, second in merges]
    vocab += [START_OF_TEXT, END_OF_TEXT]
    if len(vocab) != VOCAB_SIZE:
      raise ValueError(f'Vocabulary of {len(vocab)} entries built from {bpe_path}; expected {VOCAB_SIZE}.')
    self.encoder = {token: index for index, token in enumerate(vocab)}
    self.decoder = dict(enumerate(vocab))
    self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.sot_id = self.encoder[START_OF_TEXT]
    self.eot_id = self.encoder[END_OF_TEXT]
    # Special tokens written literally in the text are kept whole (CLIP seeds its cache with them).
    self._cache = {START_OF_TEXT: START_OF_TEXT, END_OF_TEXT: END_OF_TEXT}

  def bpe(self, piece: str) -> str:
    """Merges one pre-token (already byte-mapped) into space-separated vocabulary strings."""
    if piece in self._cache:
      return self._cache[piece]
    symbols = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
    while len(symbols) > 1:
      pairs = set(zip(symbols[:-1], symbols[1:]))
      best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, float('inf')))
      if best not in self.merge_ranks:
        break
      symbols = _merge_pair(symbols, best)
    result = ' '.join(symbols)
    self._cache[piece] = result
    return result

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without the start/end tokens."""
    table = byte_to_unicode()
    ids = []
    for piece in _PRETOKENIZE.findall(clean_text(text)):
      mapped = ''.join(table[byte] for byte in piece.encode('utf-8'))
      ids.extend(self.encoder[token] for token in self.bpe(mapped).split(' '))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of `encode` up to cleaning: word ends become spaces."""
    text = ''.join(self.decoder[int(i)] for i in ids)
    byte_of = {char: byte for byte, char in byte_to_unicode().items()}
    raw = bytearray(byte_of[char] for char in text)  # '</w>' is made of printable bytes.
    return raw.decode('utf-8', errors='replace').replace(END_OF_WORD, ' ')

  def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
               truncate: bool = False) -> np.ndarray:
    """SOT + ids + EOT per text, zero-padded.

    Args:
      texts: one string or a sequence of strings.
      context_length: output length (CLIP: 77).
      truncate: cut sequences that are too long to `context_length` and set their last id to EOT (T-VSL's
        copy); otherwise too-long input is an error (AudioCLIP's).

    Returns:
      ids [N, context_length] int32.

    Raises:
      ValueError: a text needs more than `context_length` tokens and `truncate` is off.
    """
    if isinstance(texts, str):
      texts = [texts]
    result = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_id] + self.encode(text) + [self.eot_id]
      if len(ids) > context_length:
        if not truncate:
          raise ValueError(f'Input {text} is too long for context length {context_length}')
        ids = ids[:context_length]
        ids[-1] = self.eot_id
      result[row, :len(ids)] = ids
    return result


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
  """Replaces every non-overlapping occurrence of `pair`, left to right, by its concatenation."""
  merged = []
  index = 0
  while index < len(symbols):
    if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
      merged.append(symbols[index] + symbols[index + 1])
      index += 2
    else:
      merged.append(symbols[index])
      index += 1
  return merged
