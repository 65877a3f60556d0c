"""Checkpoint converters: PyTorch state dicts (as numpy arrays) -> Flax variables.

`convert_lib`: whole files -> variables checkpoints (the library of `python -m avl_jax.convert`); `state_dicts`:
reading state dicts and the strict key matching every converter uses; `avgn_weights`: the official AVGN state dict
and torchvision's ImageNet ResNet-18; `audioclip_weights`: AudioCLIP / CLIP / ESResNeXt-fbsp; `tvsl_weights`: T-VSL.
"""
