"""EZ-VSL baseline and the audio-visual dual encoder that AVGN builds on.

Axis letters: B batch, S sources, H/W image height/width, h/w feature-map height/width, F freq bins,
T frames, D token width.

Both encoders follow docs/avgn.md §2: an ImageNet ResNet-18 whose 7x7 map goes through a 1x1 conv
(`img_proj`) and a channel L2 norm, and a 1-channel ResNet-18 on the spectrogram with a global max pool, a
Linear (`aud_proj`) and an L2 norm. The models take the waveform: the log spectrogram (`audio.
log_spectrogram`, the official scipy front end) is computed inside, on the accelerator, unless
`audio_input='spectrogram'` says the caller passes it (the official code's precomputed input, parity tests).
Names mirror the official state dict (`imgnet`, `audnet`, `img_proj`, `aud_proj`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax import audio as audio_lib
from avl_jax.metrics import postprocess
from avl_jax.models import layers
from avl_jax.models import resnet

AUDIO_INPUTS = ('waveform', 'spectrogram')


def contrastive_logits(img_feat: jax.Array, audio_vectors: jax.Array, tau: float) -> jax.Array:
  """S[n, m, h, w] = <img_feat[n, h, w], audio_vectors[m]> / tau.

  Args:
    img_feat: [B, h, w, D] image features.
    audio_vectors: [B, D] one audio vector per sample.
    tau: temperature.

  Returns:
    [B, B, h, w] logits of every image against every audio vector.
  """
  return jnp.einsum('nhwd,md->nmhw', img_feat, audio_vectors) / tau


def max_xmil_loss(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """EZ-VSL max-pooled multiple-instance contrastive loss (docs/avgn.md §8 L_loc).

  Args:
    logits: S [B, B, h, w] from `contrastive_logits`.

  Returns:
    (loss, pooled): CE(pooled, arange B) + CE(pooled^T, arange B), each averaged over B, and the
    spatially max-pooled logits pooled [B, B] (row n = image n).
  """
  pooled = layers.max_over_axes(logits, (2, 3))
  image_to_audio = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(pooled, axis=1)))
  audio_to_image = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(pooled, axis=0)))
  return image_to_audio + audio_to_image, pooled


def contrastive_loss(img_feat: jax.Array, audio_vectors: jax.Array, tau: float,
                     groups: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The max-pooled contrastive loss with negatives from the whole batch or from `groups` sub-batches.

  groups = 1: every other sample of the (global) batch is a negative. groups = k: the batch is split into k
  consecutive equal parts and each part is its own contrastive problem, the loss being the mean over parts;
  this is the official DDP behaviour on k GPUs (per-GPU negatives, gradients averaged over GPUs).

  Args:
    img_feat: [B, h, w, D].
    audio_vectors: [B, D].
    tau: temperature.
    groups: number of negative groups; must divide B.

  Returns:
    (loss, pooled, logits): the scalar loss; pooled [G, B/G, B/G] and logits [G, B/G, B/G, h, w] per group,
    squeezed to [B, B] and [B, B, h, w] when groups = 1.
  """
  batch = img_feat.shape[0]
  if groups < 1 or batch % groups:
    raise ValueError(f'loss_groups={groups} must divide the batch size {batch}.')
  if groups == 1:
    logits = contrastive_logits(img_feat, audio_vectors, tau)
    loss, pooled = max_xmil_loss(logits)
    return loss, pooled, logits
  img_g = img_feat.reshape(groups, batch // groups, *img_feat.shape[1:])
  aud_g = audio_vectors.reshape(groups, batch // groups, audio_vectors.shape[-1])
  logits = jax.vmap(contrastive_logits, in_axes=(0, 0, None))(img_g, aud_g, tau)
  losses, pooled = jax.vmap(max_xmil_loss)(logits)
  return jnp.mean(losses), pooled, logits


def own_map(img_feat: jax.Array, audio_vectors: jax.Array, tau: float) -> jax.Array:
  """<img_feat[b], audio_vectors[b]> / tau [B, h, w], no gradient (= S[b, b] of `contrastive_logits`)."""
  return jax.lax.stop_gradient(jnp.einsum('bhwd,bd->bhw', img_feat, audio_vectors) / tau)


class DualEncoder(nn.Module):
  """Base class: the two ResNet-18 encoders with projections. Not a model by itself.

  Subclasses declare the fields resnet_width, resnet_blocks, image_strides, dim, bn_groups, bn_momentum, torch_running_var,
  dtype, remat, audio_input, sample_rate, and call `setup_encoders()` from `setup()`.

  Mixed precision (dtype = bfloat16): the ResNets, projections and transformers compute in `dtype`; parameters
  and BatchNorm statistics are float32, and the log spectrogram, the L2 norms of the features (returned as
  float32), the softmaxes, LayerNorm statistics, the losses, logits and maps are float32.
  """

  def audio_features(self, audio: jax.Array) -> jax.Array:
    """The audio encoder's input: waveform [B, N] -> log spectrogram [B, F, T, 1] (audio_input='waveform'),
    or the given spectrogram [B, F, T, 1] (audio_input='spectrogram')."""
    if self.audio_input not in AUDIO_INPUTS:
      raise ValueError(f'audio_input={self.audio_input!r}; expected one of {AUDIO_INPUTS}.')
    if self.audio_input == 'spectrogram':
      return audio
    if audio.ndim != 2:
      raise ValueError(f'audio_input=\'waveform\' expects a waveform [B, N]; got shape {audio.shape}.')
    return audio_lib.log_spectrogram(audio.astype(jnp.float32), self.sample_rate)

  def setup_encoders(self) -> None:
    """Creates `imgnet`, `audnet`, `img_proj`, `aud_proj` with the init of docs/avgn.md §5."""
    self.imgnet = resnet.ResNet(
        width=self.resnet_width, blocks=tuple(self.resnet_blocks), strides=tuple(self.image_strides),
        bn_momentum=self.bn_momentum,
        torch_running_var=self.torch_running_var, bn_groups=self.bn_groups, dtype=self.dtype,
        remat=self.remat)
    self.audnet = resnet.ResNet(
        width=self.resnet_width, blocks=tuple(self.resnet_blocks), global_max_pool=True,
        bn_scale_init=layers.normal_around_one(0.02), bn_momentum=self.bn_momentum,
        torch_running_var=self.torch_running_var, bn_groups=self.bn_groups, dtype=self.dtype,
        remat=self.remat)
    backbone_width = self.resnet_width * 2**(len(self.resnet_blocks) - 1)
    # The official re-init leaves the conv bias at PyTorch's default U(+-1/sqrt(fan_in)).
    self.img_proj = nn.Conv(
        self.dim, (1, 1), kernel_init=layers.kaiming_fan_out_normal,
        bias_init=layers.torch_default_bias_init(backbone_width), dtype=self.dtype)
    self.aud_proj = layers.dense(self.dim, dtype=self.dtype)

  def encode(self, image: jax.Array, audio: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Runs both encoders.

    Args:
      image: [B, H, W, 3] ImageNet-normalised frames.
      audio: waveform [B, N] in [-1, 1] (or [B, F, T, 1] log spectrograms, see `audio_features`).
      train: batch statistics (train) or running statistics (eval) in the BatchNorms.

    Returns:
      img_feat [B, h, w, D] and aud_feat [B, D], both L2-normalised over D, float32.
    """
    img_backbone = self.imgnet(image.astype(self.dtype), train=train)
    self.sow('intermediates', 'img_backbone', img_backbone)
    img_proj = self.img_proj(img_backbone)
    self.sow('intermediates', 'img_projected', img_proj)
    aud_backbone = self.audnet(self.audio_features(audio).astype(self.dtype), train=train)
    self.sow('intermediates', 'aud_backbone', aud_backbone)
    aud_proj = self.aud_proj(aud_backbone)
    self.sow('intermediates', 'aud_projected', aud_proj)
    return layers.l2_normalize(img_proj.astype(jnp.float32)), layers.l2_normalize(aud_proj.astype(jnp.float32))


class EZVSL(DualEncoder):
  """EZ-VSL: map = <img_feat, aud_feat> / tau, trained with the max-pooled cross-modal contrastive loss.

  Attributes:
    num_classes: accepted for a uniform model interface; unused.
    resnet_width: base width of both ResNet-18s (64 = the paper).
    resnet_blocks: BasicBlocks per ResNet stage.
    image_strides: stage strides of the image ResNet (official 1, 2, 2, 2: maps of H/32 x W/32).
    dim: embedding width D.
    tau: temperature.
    loss_groups: contrastive negatives per group of the batch (`contrastive_loss`; 1 = global batch,
      k = the official per-GPU negatives on k GPUs).
    bn_groups: BatchNorm statistics per group of the batch (1 = synchronised over the global batch,
      k = the official per-GPU statistics on k GPUs).
    bn_momentum: Flax-convention BatchNorm momentum (0.9 = PyTorch 0.1).
    torch_running_var: PyTorch-style unbiased running-variance update.
    dtype: computation dtype (DualEncoder: parameters, statistics, features, loss and maps stay float32).
    remat: rematerialise the ResNet blocks (`resnet.ResNet.remat`).
    audio_input: 'waveform' (the model computes the log spectrogram) | 'spectrogram' (given).
    sample_rate: Hz of the waveform (the spectrogram's frequency scaling).
  """
  num_classes: int = 0
  resnet_width: int = 64
  resnet_blocks: Sequence[int] = (2, 2, 2, 2)
  image_strides: Sequence[int] = (1, 2, 2, 2)
  dim: int = 512
  tau: float = postprocess.OFFICIAL_TAU
  loss_groups: int = 1
  bn_groups: int = 1
  bn_momentum: float = 0.9
  torch_running_var: bool = True
  dtype: Any = jnp.float32
  remat: bool = False
  audio_input: str = 'waveform'
  sample_rate: float = 16000.0

  def setup(self):
    self.setup_encoders()

  def __call__(self, image: jax.Array, audio: jax.Array, visual_class: jax.Array | None = None,
               audio_label: jax.Array | None = None, *, train: bool) -> tuple[dict, dict]:
    """Forward pass and loss; visual_class / audio_label are ignored (EZ-VSL uses no labels).

    Args:
      image: [B, H, W, 3].
      audio: waveform [B, N] (or [B, F, T, 1], `audio_features`).
      visual_class: ignored.
      audio_label: ignored.
      train: training mode (BatchNorm batch statistics).

    Returns:
      losses {'loss', 'loss_loc'} (scalars) and outputs {'map' [B, h, w], 'img_feat' [B, h, w, D],
      'aud_feat' [B, D], 'S_logits' [B, B, h, w] ([G, B/G, B/G, h, w] with loss_groups = G > 1)}.
    """
    del visual_class, audio_label
    img_feat, aud_feat = self.encode(image, audio, train=train)
    img_feat, aud_feat = img_feat.astype(jnp.float32), aud_feat.astype(jnp.float32)
    loss_loc, pooled, logits = contrastive_loss(img_feat, aud_feat, self.tau, self.loss_groups)
    self.sow('intermediates', 'xmil_logits', pooled)
    losses = {'loss': loss_loc, 'loss_loc': loss_loc}
    outputs = {'map': own_map(img_feat, aud_feat, self.tau), 'img_feat': img_feat, 'aud_feat': aud_feat,
               'S_logits': logits}
    return losses, outputs

  def localize(self, image: jax.Array, audio: jax.Array, class_ids: jax.Array, *,
               train: bool = False) -> jax.Array:
    """Class-agnostic maps: the same <img_feat, aud_feat> / tau for every source.

    Args:
      image: [B, H, W, 3].
      audio: waveform [B, N] (or [B, F, T, 1], `audio_features`).
      class_ids: [B, S]; only S is used.
      train: BatchNorm mode (keep False for evaluation).

    Returns:
      raw localization logits [B, S, h, w].
    """
    img_feat, aud_feat = self.encode(image, audio, train=train)
    maps = jnp.einsum('bhwd,bd->bhw', img_feat.astype(jnp.float32), aud_feat.astype(jnp.float32)) / self.tau
    return jnp.broadcast_to(maps[:, None], (maps.shape[0], class_ids.shape[1]) + maps.shape[1:])
