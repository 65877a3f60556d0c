"""One global training order on every host: the agreed shuffle seed and each process's rows of a global batch.

Global batches hold B = P b elements (P processes, b = per_host_batch); process p yields rows [p b, (p + 1) b)
of each, the rows its devices own when `sharding.host_to_global` assembles the global [B, ...] array.
"""
from absl import logging
import grain
import numpy as np


class ProcessRows(grain.MapDataset):
  """This process's elements of a global stream of batches: element x here is element `global_index(x)` of the
  parent (the whole global stream), so that this process's batch k is rows [p b, (p + 1) b) of global batch k.

  b = per_host_batch, B = P b. Without grain workers (W = 1), local element k b + j is global element
  k B + p b + j. With W > 1 workers, grain's mp_prefetch hands worker w elements w, w + W, w + 2W, ... of this
  dataset and interleaves the workers' batches round-robin: the 1-process global batch k is then global elements
  w + W (i B + r), r in [0, B) (w = k mod W, i = k div W), and this process takes r in [p b, (p + 1) b). With
  P = 1 the map is the identity. The parent's per-element random generators are keyed on the global index, so
  every element (crop, flip, mixing partner) is the one a single process would draw.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, per_host_batch: int, process_index: int, process_count: int,
               num_workers: int = 0):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    self.per_host_batch = int(per_host_batch)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.workers = max(int(num_workers), 1)
    block = self.workers * self.per_host_batch * self.process_count  # global elements per round of the workers
    self._length = (len(parent) // block) * self.workers * self.per_host_batch

  def global_index(self, index: int) -> int:
    worker, m = index % self.workers, index // self.workers
    batch, row = divmod(m, self.per_host_batch)
    return worker + self.workers * ((batch * self.process_count + self.process_index) * self.per_host_batch + row)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.global_index(int(index) % self._length)]

  def __str__(self) -> str:
    return (f"ProcessRows(process {self.process_index} of {self.process_count}, per_host_batch="
            f"{self.per_host_batch}, workers={self.workers})")


def global_train_seed(seed: int) -> int:
  """The shuffle seed every process uses: process 0's `seed` (a broadcast on multi-process runs), so hosts whose
  callers passed different seeds still draw one global order."""
  import jax  # pylint: disable=g-import-not-at-top  (the host-side module does not otherwise need JAX)
  if jax.process_count() == 1:
    return int(seed)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  words = np.asarray([(int(seed) >> 32) & 0xFFFFFFFF, int(seed) & 0xFFFFFFFF], np.uint32)
  high, low = (int(w) for w in np.asarray(multihost_utils.broadcast_one_to_all(words)))
  agreed = (high << 32) | low
  if agreed != int(seed):
    logging.info("Train data seed: process 0's %d on every process (this one was given %d).", agreed, seed)
  return agreed
