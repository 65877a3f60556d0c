"""The `music` dataset (MUSIC-Solo / MUSIC-Duet). Importing this package registers the `music` TFDS builder."""
from avl_jax.datasets.music import music  # noqa: F401  (registers the builder)
from avl_jax.datasets.music.music import DUET, Music, SOLO  # noqa: F401
