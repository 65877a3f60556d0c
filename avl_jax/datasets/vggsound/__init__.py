"""The `vggsound` dataset (VGGSound-Single / -Duet with the VGG-SS test set). Importing it registers the builder."""
from avl_jax.datasets.vggsound import vggsound  # noqa: F401  (registers the builder)
from avl_jax.datasets.vggsound.vggsound import DUET, DUET_44K, SINGLE, Vggsound  # noqa: F401
