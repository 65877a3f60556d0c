"""TFDS dataset builders for avl_jax. Importing this package registers every builder with TFDS."""

from avl_jax.datasets import music  # noqa: F401  (registers music: solo, duet)
from avl_jax.datasets import synthetic_av  # noqa: F401  (registers synthetic_av)
from avl_jax.datasets import vgginstruments  # noqa: F401  (registers vgginstruments: single, multi)
from avl_jax.datasets import vggsound  # noqa: F401  (registers vggsound: single, duet, duet_44k)
