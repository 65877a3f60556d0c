"""Checkpoint converters: PyTorch state dicts (as numpy arrays) -> Flax variables.

`avgn_weights`: the official AVGN state dict and torchvision's ImageNet ResNet-18.
"""
