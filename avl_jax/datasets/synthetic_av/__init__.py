"""The `synthetic_av` dataset. Importing this package registers the `synthetic_av` TFDS builder."""
from avl_jax.datasets.synthetic_av import synthetic_av  # noqa: F401  (registers the builder)
from avl_jax.datasets.synthetic_av.synthetic_av import DEFAULT, SyntheticAv, SyntheticAvConfig, TINY  # noqa: F401
