"""The `vgginstruments` dataset (VGGSound-Instruments single / multi). Importing it registers the builder."""
from avl_jax.datasets.vgginstruments import vgginstruments  # noqa: F401  (registers the builder)
from avl_jax.datasets.vgginstruments.vgginstruments import MULTI, SINGLE, Vgginstruments  # noqa: F401
