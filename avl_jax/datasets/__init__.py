"""TFDS dataset builders for avl_jax. Importing this package registers every builder with TFDS."""

from avl_jax.datasets import synthetic_av  # noqa: F401  (registers synthetic_av)
