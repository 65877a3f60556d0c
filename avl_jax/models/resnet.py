"""ResNet-18 encoders (torchvision layout) for images and spectrograms, NHWC.

Axis letters: B batch, H height, W width (for spectrograms H = F freq bins, W = T frames), D channels.

Submodule names mirror torchvision's state-dict names (`conv1`, `bn1`, `layer1_0/conv1`,
`layer2_0/downsample_0`, ...) so that converting ImageNet weights is a rename. Paddings are explicit
(docs/avgn.md §15.4): 'SAME' would pad a stride-2 convolution asymmetrically and shift every feature.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers


def _conv(features: int, kernel_size: int, strides: int, padding: int, *, name: str,
          kernel_init: layers.Initializer, dtype: Any) -> nn.Conv:
  """Bias-free square convolution with PyTorch's symmetric padding."""
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides),
      padding=((padding, padding), (padding, padding)), use_bias=False, kernel_init=kernel_init,
      dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """torchvision BasicBlock: conv3x3(s)-BN-ReLU-conv3x3-BN + shortcut, ReLU.

  The shortcut is a 1x1 conv (stride s) + BN, named `downsample_0`/`downsample_1`, whenever the stride or
  the width changes (torchvision's rule).
  """
  features: int
  strides: int = 1
  bn_scale_init: layers.Initializer = nn.initializers.ones
  bn_momentum: float = 0.9
  torch_running_var: bool = True
  bn_groups: int = 1
  conv_init: layers.Initializer = layers.kaiming_fan_out_normal
  dtype: Any = jnp.float32

  def _norm(self, name: str) -> layers.BatchNorm:
    return layers.BatchNorm(
        momentum=self.bn_momentum, torch_running_var=self.torch_running_var, groups=self.bn_groups,
        scale_init=self.bn_scale_init, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x [B, H, W, D_in] -> [B, ceil(H / s), ceil(W / s), features]. `train` may be passed positionally
    (static argument 2 under nn.remat)."""
    residual = x
    y = _conv(self.features, 3, self.strides, 1, name='conv1', kernel_init=self.conv_init,
              dtype=self.dtype)(x)
    y = nn.relu(self._norm('bn1')(y, train=train))
    y = _conv(self.features, 3, 1, 1, name='conv2', kernel_init=self.conv_init, dtype=self.dtype)(y)
    y = self._norm('bn2')(y, train=train)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.strides, 0, name='downsample_0',
                       kernel_init=self.conv_init, dtype=self.dtype)(x)
      residual = self._norm('downsample_1')(residual, train=train)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet-18-style trunk without its classifier (torchvision `resnet18` with `fc` = identity).

  Stem conv 7x7/2 pad 3 -> BN -> ReLU -> maxpool 3/2 pad 1 (pad -inf), then stages of BasicBlocks of widths
  w, 2w, 4w, 8w with strides 1, 2, 2, 2 (`strides`). The stage outputs are sown to 'intermediates' as `layer1`..`layer4`.

  Attributes:
    width: stem / first-stage width w (64 for ResNet-18).
    blocks: BasicBlocks per stage.
    strides: stride of each stage's first block (torchvision: 1, 2, 2, 2, an output stride of 32; e.g.
      1, 2, 1, 1 gives stride 8, finer maps from small frames).
    global_max_pool: return the global max over H, W (the AVGN audio net's AdaptiveMaxPool2d(1)) instead
      of the feature map.
    bn_scale_init: BatchNorm scale initialiser (torchvision: ones; AVGN audio net: N(1, 0.02^2)).
    bn_momentum: Flax-convention BatchNorm momentum.
    torch_running_var: PyTorch-style running-variance update.
    bn_groups: per-group batch statistics (layers.BatchNorm.groups; 1 = the whole batch).
    conv_init: initialiser of every conv kernel (Kaiming fan_out normal in both cases).
    dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    remat: rematerialise every BasicBlock (`nn.remat`): its activations are recomputed in the backward pass
      instead of being kept; same parameters, values equal up to float rounding.
  """
  width: int = 64
  blocks: Sequence[int] = (2, 2, 2, 2)
  strides: Sequence[int] = (1, 2, 2, 2)
  global_max_pool: bool = False
  bn_scale_init: layers.Initializer = nn.initializers.ones
  bn_momentum: float = 0.9
  torch_running_var: bool = True
  bn_groups: int = 1
  conv_init: layers.Initializer = layers.kaiming_fan_out_normal
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, H, W, D_in] -> [B, H/s, W/s, 8w] (s = 4 x the stage strides, rounded up per stride), or [B, 8w]
    with global_max_pool."""
    if len(self.strides) != len(self.blocks):
      raise ValueError(f'strides={tuple(self.strides)} needs one stride per stage of blocks={tuple(self.blocks)}.')
    x = _conv(self.width, 7, 2, 3, name='conv1', kernel_init=self.conv_init, dtype=self.dtype)(x)
    x = layers.BatchNorm(
        momentum=self.bn_momentum, torch_running_var=self.torch_running_var, groups=self.bn_groups,
        scale_init=self.bn_scale_init, dtype=self.dtype, name='bn1')(x, train=train)
    x = nn.relu(x)
    # Padded with -inf, exactly like PyTorch's MaxPool2d padding; the gradient goes to each window's first maximum.
    x = layers.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_class = layers.maybe_remat(BasicBlock, self.remat, static_argnums=(2,))  # (self, x, train)
    for stage, num_blocks in enumerate(self.blocks):
      features = self.width * 2**stage
      for index in range(num_blocks):
        x = block_class(
            features, strides=self.strides[stage] if index == 0 else 1, bn_scale_init=self.bn_scale_init,
            bn_momentum=self.bn_momentum, torch_running_var=self.torch_running_var,
            bn_groups=self.bn_groups, conv_init=self.conv_init, dtype=self.dtype,
            name=f'layer{stage + 1}_{index}')(x, train)
      self.sow('intermediates', f'layer{stage + 1}', x)
    if self.global_max_pool:
      x = layers.max_over_axes(x, (1, 2))
    return x
