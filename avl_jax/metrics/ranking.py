"""Per-row average precision by sorting, vectorised over rows (sklearn `average_precision_score` semantics).

Axis letters: C rows (maps), P pixels per row.

AP = Σ_k (R_k − R_{k−1})·P_k over the distinct score values taken in descending order (no interpolation),
which equals (1/#pos)·Σ_{positive pixels} precision at the pixel's own score threshold, where that precision
counts every pixel whose score is >= it (ties included).

Each row is sorted once. Scores (float32) and binary labels are packed into one unsigned key,
(order-preserving score bits << 1) | label, so a plain `np.sort` (SIMD, no argsort) orders the pixels by score
with the negatives of a tie group before its positives. Then for every positive pixel only two facts are
needed: the position g where its tie group starts and the number j of positives before g; its precision is
(#pos − j) / (P − g). Positives are contiguous at the end of their group, so j and g come from the first
positive of the group; g needs a search only when negatives share that score.
"""
import numpy as np

_SIGN = np.uint32(0x80000000)


def encode_keys(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Packs float32 scores [C, P] and bool labels [C, P] into sortable keys [C, P].

  Non-negative scores use uint32 keys (the sign bit is shifted out, so -0.0 and +0.0 share a key);
  otherwise uint64 keys with the usual order-preserving map of IEEE bits (-0.0 folded into +0.0). NaN is
  not supported.
  """
  scores = np.asarray(scores, np.float32)
  if scores.size == 0 or scores.min() >= 0:
    keys = scores.view(np.uint32) << np.uint32(1)
    keys |= labels
    return keys
  bits = (scores + np.float32(0)).view(np.uint32)
  ordered = np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint64)
  keys = ordered << np.uint64(1)
  keys |= labels
  return keys


def decode_scores(keys: np.ndarray) -> np.ndarray:
  """Inverse of `encode_keys` for the score part: keys [...] -> float32 scores [...]."""
  keys = np.asarray(keys)
  if keys.dtype == np.uint32:
    return (keys >> np.uint32(1)).astype(np.uint32).view(np.float32)
  ordered = (keys >> np.uint64(1)).astype(np.uint32)
  bits = np.where(ordered & _SIGN, ordered & ~_SIGN, ~ordered)
  return bits.view(np.float32)


def score_key(values: np.ndarray, dtype) -> np.ndarray:
  """Keys with label 0 (the first key of a tie group) for float32 values [C] in the key dtype."""
  values = np.asarray(values, np.float32)
  if np.dtype(dtype) == np.uint32:
    if (values < 0).any():
      raise ValueError("uint32 keys only encode non-negative scores.")
    return (values + np.float32(0)).view(np.uint32) << np.uint32(1)
  return encode_keys(values[:, None], np.zeros((len(values), 1), bool))[:, 0]


def sorted_keys(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Encoded keys [C, P] sorted ascending along P."""
  keys = encode_keys(scores, labels)
  keys.sort(axis=1)
  return keys


def rowwise_searchsorted(keys: np.ndarray, needles: np.ndarray, side: str = "left") -> np.ndarray:
  """[C] int64: np.searchsorted of the scalar needles[c] in each sorted row keys[c]."""
  return np.array([np.searchsorted(keys[c], needles[c], side=side) for c in range(keys.shape[0])],
                  np.int64)


def positive_ranks(keys: np.ndarray, num_pos: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Where the positive pixels sit in sorted keys [C, P].

  Args:
    keys: sorted keys (C-contiguous).
    num_pos: [C] number of positives per row, if known.

  Returns:
    dict with `position` [M] int64 (flat indices into keys, increasing), `col` [M] int64 (index within the
    row), `num_pos` [C] int64, `row_start` [C] int64 (index into `position` of each row's first positive).
  """
  num_rows, num_pixels = keys.shape
  keys = np.ascontiguousarray(keys)
  # The label is the lowest bit, i.e. the first byte of each little-endian key; 0/1 bytes are valid bools
  # and np.flatnonzero is much faster on bools than on integers.
  itemsize = keys.dtype.itemsize
  low_bytes = keys.reshape(-1).view(np.uint8)[(0 if np.little_endian else itemsize - 1)::itemsize]
  position = np.flatnonzero((low_bytes & np.uint8(1)).view(bool))
  if num_pos is None:
    row_bounds = np.searchsorted(position, np.arange(num_rows + 1, dtype=np.int64) * num_pixels)
    num_pos = np.diff(row_bounds)
  num_pos = np.asarray(num_pos, np.int64)
  row_start = np.cumsum(num_pos) - num_pos
  col = position - np.repeat(np.arange(num_rows, dtype=np.int64) * num_pixels, num_pos)
  return {"position": position, "col": col, "num_pos": num_pos, "row_start": row_start}


def count_positives_from(positives: dict[str, np.ndarray], start: np.ndarray, num_pixels: int) -> np.ndarray:
  """[C] number of positives at sorted positions >= start[c] of each row."""
  num_pos, row_start = positives["num_pos"], positives["row_start"]
  flat_start = np.arange(len(start), dtype=np.int64) * num_pixels + np.asarray(start, np.int64)
  return row_start + num_pos - np.searchsorted(positives["position"], flat_start)


def _tie_group_starts(keys: np.ndarray, position: np.ndarray, col: np.ndarray,
                      max_steps: int = 16) -> np.ndarray:
  """Column where the tie group of each given pixel starts (sorted keys [C, P]; flat positions [K])."""
  flat = keys.reshape(-1)
  one = keys.dtype.type(1)
  score = np.take(flat, position) >> one
  row_begin = position - col
  start = position.copy()
  # Step back over equal scores; float32 ties between distinct pixels are short (mostly pairs).
  for _ in range(max_steps):
    back = (start > row_begin) & ((np.take(flat, start - 1) >> one) == score)
    if not back.any():
      return start - row_begin
    start -= back
  # Long runs (quantised maps): binary search in their rows.
  num_pixels = keys.shape[1]
  rows = row_begin // num_pixels
  for r in np.unique(rows):
    in_row = rows == r
    start[in_row] = row_begin[in_row] + np.searchsorted(keys[r], score[in_row] << one, side="left")
  return start - row_begin


def average_precision_sorted(keys: np.ndarray, positives: dict[str, np.ndarray] | None = None) -> np.ndarray:
  """AP per row of sorted keys [C, P] (labels in the low bit); NaN for rows without positives.

  Args:
    keys: output of `sorted_keys`.
    positives: output of `positive_ranks(keys)` if already computed.

  Returns:
    ap [C] float64.
  """
  num_rows, num_pixels = keys.shape
  if positives is None:
    positives = positive_ranks(keys)
  position, col = positives["position"], positives["col"]
  num_pos, row_start = positives["num_pos"], positives["row_start"]
  ap = np.full(num_rows, np.nan)
  num_items = len(position)
  if num_items == 0:
    return ap
  has_pos = num_pos > 0
  flat = keys.reshape(-1)
  key = np.take(flat, position)
  prev = np.take(flat, position - 1)  # Wraps around for position 0, which is a row start anyway.
  # Sorted, so prev <= key. Equal keys: a positive with the same score precedes this one (same group, not
  # its first positive). xor 1: a negative with the same score precedes it (the group starts earlier).
  diff = prev ^ key
  inner = col != 0
  positives_from_here = np.repeat(row_start + num_pos, num_pos) - np.arange(num_items, dtype=np.int64)
  group_start = col
  tied_negative = np.flatnonzero((diff == 1) & inner)
  if tied_negative.size:
    group_start = col.copy()
    group_start[tied_negative] = _tie_group_starts(keys, position[tied_negative], col[tied_negative])
  # Precision at each positive's own group: #positives from the group's first positive on / #pixels from
  # the group start on.
  terms = positives_from_here / (num_pixels - group_start)
  follower = (diff == 0) & inner
  if follower.any():
    # A positive preceded by an equal positive takes the value of the first positive of its group: carry
    # the index of the last non-follower forward.
    leader = np.arange(num_items, dtype=np.int64)
    leader[follower] = 0
    np.maximum.accumulate(leader, out=leader)
    terms = terms[leader]
  # reduceat sums each row pairwise (sklearn sums its per-threshold terms with np.sum).
  ap[has_pos] = np.add.reduceat(terms, row_start[has_pos]) / num_pos[has_pos]
  return ap


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """sklearn `average_precision_score(labels[c], scores[c])` for each row c, vectorised.

  Args:
    scores: [C, P] (or [..., H, W], flattened per leading index) scores, cast to float32.
    labels: same shape, truthy = positive.

  Returns:
    ap [C] float64; NaN for rows without positives (scikit-learn 1.x returns 0.0 there with a warning,
    0.24 returns NaN).
  """
  scores = np.asarray(scores, np.float32)
  labels = np.asarray(labels).astype(bool)
  num_rows = scores.shape[0] if scores.ndim > 1 else 1
  scores = scores.reshape(num_rows, -1)
  labels = labels.reshape(num_rows, -1)
  return average_precision_sorted(sorted_keys(scores, labels))
