"""TFDS dataset builders for avl_jax. Importing this package registers every builder with TFDS."""

from avl_jax.datasets import music  # noqa: F401  (registers music: solo, duet and their _44k forms)
from avl_jax.datasets import synthetic_av  # noqa: F401  (registers synthetic_av)
from avl_jax.datasets import vgginstruments  # noqa: F401  (registers vgginstruments: single, multi, _44k)
from avl_jax.datasets import vggsound  # noqa: F401  (registers vggsound: single, duet, _44k)


def prepare(name: str, data_dir: str | None, manual_dir: str | None = None):
  """Builds `name` ('synthetic_av/tiny', 'music/duet', ...) into ArrayRecord files under `data_dir` (a no-op
  when already prepared); returns the builder. The library form of `python -m avl_jax.prepare`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(file_format="array_record", download_config=download_config)
  return builder
