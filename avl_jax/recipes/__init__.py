"""Paper recipes, one module per model family: `paper_config(setting, arg)` builds the config a configs/ file trains
with (avgn: configs/avgn_*.py; tvsl: configs/tvsl_*.py). Shared pieces are in avl_jax/config_lib.py."""
