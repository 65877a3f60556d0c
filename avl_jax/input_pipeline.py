"""grain input pipelines over the shared TFDS schema (avl_jax/datasets/schema.py): `create_train_dataset` and
`create_eval_dataset`, assembled from the pieces in avl_jax/pipeline/ (data_source, data_config, image_ops,
audio_ops, train_transforms, global_order, eval_transforms).

Train: tfds.data_source (the whole split, on every host) -> MapDataset -> seed -> shuffle -> repeat ->
random_map(decode + augment) -> random_map(mix with a partner of another class) -> this process's rows of every
global batch (`global_order.ProcessRows`) -> to_iter_dataset -> batch -> mp_prefetch. Every host draws the same
global order (one shuffle, one seed: process 0's), and process p of P reads rows [p b, (p + 1) b) of each global
batch of B = P b, the rows its devices own in the global array (`sharding.host_to_global`): P processes train on
the same global batches as one process, whatever P (tests/multiprocess_test.py).
Eval:  the same source, deterministic decode, padded to a whole number of batches with a `mask`, so every
example is scored exactly once on every host count.

Real datasets (music, vggsound, vgginstruments; avl_jax/datasets/schema.py `make_real_features`) add, in eval
batches: `source_image` (each source's own frame: the duet partner's frame for source 1 of vggsound/duet and
vgginstruments/multi, the shared frame for MUSIC's natural duets), the duet partner's audio summed into
`waveform` (config `dataset.eval_mix_partner_audio`, default True; False = the official VGGSound-Instruments
multi loader, which forgot it), `boxes_raw` (official box values for the `official` protocol) and, for mask GT,
`gt_mask` / `has_gt_mask`. Training reads every config unchanged (`dataset.mix` picks single or duet).

Hosts only decode JPEGs and slice waveforms; the spectrogram is computed in the jitted step (avl_jax/audio.py).
Training images leave the host as uint8 and are normalised in the jitted step (`image_ops.device_normalize_image`,
config `dataset.normalize_on_device`, default True): 4x fewer bytes to batch and to copy to the devices, and
~0.6 ms less host work per example. Eval batches stay float32 (the 'torch_tensor' resize yields values off the
uint8 grid).
Randomness comes only from grain's per-element generators, keyed on the element's global index, so a (seed, step)
pair always yields the same global batch and the iterator state checkpoints exactly.
"""
import dataclasses
import logging as std_logging

from absl import logging
import grain
import ml_collections
import tensorflow_datasets as tfds

from avl_jax.pipeline import data_config
from avl_jax.pipeline import data_source
from avl_jax.pipeline import eval_transforms
from avl_jax.pipeline import global_order
from avl_jax.pipeline import train_transforms


def create_train_dataset(config: ml_collections.ConfigDict, per_host_batch: int, seed: int, *,
                         process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled, augmented (and mixed) training batches: this process's rows of each global batch.

  Batches: image [b, S, S, 3] uint8 (float32, normalised, with dataset.normalize_on_device=False; [b, S, 2S, 3]
  with dataset.canvas; `image_ops.device_normalize_image` turns them into the model's input), waveform [b, N] float32 in
  [-2, 2], visual_class [b] int32, audio_label [b, K] float32, source_class [b, 2] int32 ([b, 1] without mix).

  One global order on every host: the whole split shuffled with `seed` (process 0's on a multi-process run,
  `global_order.global_train_seed`), global batches of B = process_count * per_host_batch, of which process p
  yields rows [p b, (p + 1) b) (`global_order.ProcessRows`): the row block its devices own when
  `sharding.host_to_global` assembles the global array (devices in process order along the batch axes). With one
  process this is the plain pipeline.
  process_index / process_count default to JAX's; given explicitly (tests) no collective runs.
  """
  ds_config = config.dataset
  cfg = data_config.DataConfig.from_config(ds_config)
  if process_index is None and process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
    seed = global_order.global_train_seed(seed)
  elif process_index is None or process_count is None:
    raise ValueError("Give both process_index and process_count, or neither.")
  # The whole split on every host (`even_splits(split, 1)[0]` is what one process has always read).
  source = data_source.open_source(ds_config.name, tfds.even_splits(ds_config.train_split, 1)[0],
                                   ds_config.data_dir, per_process=False)
  if len(source) == 0:
    raise data_source.DataError(f"Split {ds_config.train_split!r} of {ds_config.name!r} is empty.")
  if cfg.canvas and not ds_config.mix:
    raise data_source.DataError("config.dataset.canvas=True (the [own | partner] training canvas) needs "
                                "config.dataset.mix=True: the partner supplies the second frame and sound.")
  tfds_source, source = source, data_source.train_records(source)
  dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  dataset = dataset.random_map(train_transforms.TrainDecode(cfg))
  if ds_config.mix:
    classes = data_source.cached_primary_classes(source, tfds_source, cfg.num_classes)
    dataset = dataset.random_map(train_transforms.MixWithPartner(source, classes, cfg))
  if process_count > 1:
    dataset = global_order.ProcessRows(dataset, per_host_batch, process_index, process_count, ds_config.num_workers)
  # Batch after to_iter_dataset so the read-ahead buffer counts examples, not batches (with grain's default
  # 500-element buffer per worker, batching first held ~1.5 GB of decoded batches in every worker).
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=ds_config.read_threads, prefetch_buffer_size=2 * per_host_batch))
  iter_dataset = iter_dataset.batch(per_host_batch, drop_remainder=True)
  if ds_config.num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=ds_config.num_workers, per_worker_buffer_size=ds_config.worker_buffer_size))
  return iter_dataset


def create_eval_dataset(config: ml_collections.ConfigDict, split: str, per_host_batch: int,
                        num_processes: int) -> eval_transforms.EvalData:
  """Deterministic eval batches of this host's shard, padded with mask 0 to an equal number of batches."""
  ds_config = config.dataset
  cfg = data_config.DataConfig.from_config(ds_config)
  source = data_source.open_source(ds_config.name, split, ds_config.data_dir)
  total = len(data_source.open_source(ds_config.name, split, ds_config.data_dir, per_process=False))
  if total == 0:
    raise data_source.DataError(f"Eval split {split!r} of {ds_config.name!r} is empty.")
  per_host = -(-total // num_processes)
  num_batches = -(-per_host // per_host_batch)
  info = source.dataset_info
  real = "partner_waveform" in info.features.keys()
  gt_format = str((info.metadata or {}).get("gt_format", "")) if real else ""
  cfg = dataclasses.replace(cfg, gt_masks=gt_format.startswith("vgginstruments"))
  decode = eval_transforms.EvalDecode(cfg, source, len(source), real)
  dataset = grain.MapDataset.range(num_batches * per_host_batch).map(decode)
  dataset = dataset.batch(per_host_batch, drop_remainder=True)
  partner_frames = gt_format in ("vggsound_duet", "vgginstruments_multi") and cfg.per_source_frames
  return eval_transforms.EvalData(dataset=dataset, num_examples=total, num_batches=num_batches,
                                  gt_format=gt_format, partner_frames=bool(partner_frames))


# grain logs every worker start at INFO; keep the training log readable.
std_logging.getLogger("grain").setLevel(std_logging.WARNING)
logging.vlog(1, "avl_jax.input_pipeline loaded")
