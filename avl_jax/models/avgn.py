"""AVGN: audio-visual grouping network (CVPR 2023), as the official code computes it (docs/avgn.md).

Axis letters: B batch, S sources, C classes, L tokens, H/W image height/width, h/w feature-map
height/width, F freq bins, T frames, D token width.

image -> ResNet-18 -> img_proj -> L2 = img_feat [B, h, w, D]; waveform -> log spectrogram -> ResNet-18 (max
pool) -> aud_proj -> L2 = aud_feat [B, D]. Learnable class tokens `av_token` [C, D] (zeros at init, shared by both branches) group
the image tokens (xv [B, C, D]) and the audio token (xa [B, C, D]). The map of a source of class c is
<img_feat, xa[:, c]> / tau; training uses the class of the visual source.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.metrics import postprocess
from avl_jax.models import ezvsl
from avl_jax.models import grouping
from avl_jax.models import layers
from avl_jax.models import transformer

# GroupingBlock_Han of the official audio encoder: built with 10 group tokens, never called (docs/avgn.md §14).
HAN_GROUP_TOKENS = 10
# PyTorch's binary_cross_entropy clamps each log term at -100.
BCE_LOG_CLAMP = -100.0
CLASS_SOURCES = ('oracle', 'predicted')


def cross_entropy_with_arange(logits: jax.Array) -> jax.Array:
  """CE(logits [N, N], arange N), mean over rows: the target of row i is column i."""
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """PyTorch BCE of sigmoid(logits) against targets, log terms clamped at -100, mean over all entries.

  Computed from logits (log-sigmoid) so that gradients stay finite; this differs from PyTorch's
  probability-based form only where the float32 sigmoid saturates (docs/avgn.md §8).
  """
  log_prob = jnp.maximum(jax.nn.log_sigmoid(logits), BCE_LOG_CLAMP)
  log_not_prob = jnp.maximum(jax.nn.log_sigmoid(-logits), BCE_LOG_CLAMP)
  return -jnp.mean(targets * log_prob + (1.0 - targets) * log_not_prob)


class ModalityTransformer(nn.Module):
  """The official `ModalityTrans`: AttnBlocks over [tokens, class tokens], then a GroupingBlock.

  No positional embedding, no final norm. Sows `tokens_after_blocks` [B, L, D] and
  `group_tokens_after_blocks` [B, C, D] to 'intermediates'.

  Attributes:
    depth: number of AttnBlocks.
    num_heads: heads of the AttnBlocks and of the grouping cross attention.
    mlp_ratio: MLP hidden / D.
    drop_path: stochastic depth of every AttnBlock (constant, not a ramp).
    hard_assign: hard (Gumbel, straight-through) assignment in the GroupingBlock.
    with_han_params: also create the inert `han_encoder` parameters (official audio encoder layout).
    dtype: computation dtype.
    remat: rematerialise every AttnBlock and the GroupingBlock (`nn.remat`); same parameters, values equal up
      to float rounding.
  """
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.1
  hard_assign: bool = False
  with_han_params: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, class_tokens: jax.Array, *, train: bool) -> jax.Array:
    """tokens [B, L, D] (L2-normalised), class_tokens [C, D] -> grouped class features [B, C, D]."""
    batch, length, width = tokens.shape
    class_tokens = jnp.broadcast_to(class_tokens.astype(self.dtype), (batch,) + class_tokens.shape)
    sequence = jnp.concatenate([tokens.astype(self.dtype), class_tokens], axis=1)
    # Under remat `train` is a static positional argument: (self, tokens, train) / (self, tokens, classes, train).
    attn_block = layers.maybe_remat(transformer.AttnBlock, self.remat, static_argnums=(2,))
    grouping_block = layers.maybe_remat(grouping.GroupingBlock, self.remat, static_argnums=(3,))
    for index in range(self.depth):
      sequence = attn_block(
          self.num_heads, self.mlp_ratio, self.drop_path, dtype=self.dtype, name=f'blocks_{index}')(
              sequence, train)
    tokens, class_tokens = sequence[:, :length], sequence[:, length:]
    self.sow('intermediates', 'tokens_after_blocks', tokens)
    self.sow('intermediates', 'group_tokens_after_blocks', class_tokens)
    if self.with_han_params and self.is_initializing():
      # Only materialises the dead branch's parameters so official checkpoints round-trip.
      han_tokens = jnp.zeros((batch, HAN_GROUP_TOKENS, width), self.dtype)
      grouping.GroupingBlock(self.num_heads, self.mlp_ratio, dtype=self.dtype, name='han_encoder')(
          tokens, han_tokens, False)
    return grouping_block(
        self.num_heads, self.mlp_ratio, hard=self.hard_assign, dtype=self.dtype, name='grouping')(
            tokens, class_tokens, train)


class AVGN(ezvsl.DualEncoder):
  """Audio-visual grouping network (docs/avgn.md).

  Attributes:
    num_classes: C, number of class tokens.
    resnet_width: base width of both ResNet-18s (64 = the paper); stages use w, 2w, 4w, 8w.
    resnet_blocks: BasicBlocks per ResNet stage.
    image_strides: stage strides of the image ResNet (official 1, 2, 2, 2: maps of H/32 x W/32).
    dim: token width D (img_proj / aud_proj map 8w -> D).
    depth_vis: AttnBlocks of the visual ModalityTransformer.
    depth_aud: AttnBlocks of the audio ModalityTransformer.
    num_heads: attention heads (transformers and grouping).
    mlp_ratio: MLP hidden / D.
    drop_path: stochastic depth of every AttnBlock.
    tau: temperature of the localization logits.
    attn_assign: 'soft' or 'hard' (Gumbel, straight-through) class assignment.
    loc_audio_grad: the localization loss trains the audio path (encoder, grouping, class tokens) too
      (official). False stops its gradient at the selected audio class vector, so that only the audio
      classification loss shapes the audio path (docs/switches.md: with oracle classes the localization loss
      pulls xa[b, c] towards class c's visual prototype and drowns the audio-presence signal).
    with_han_params: create the inert `audio_encoder/han_encoder` parameters of the official checkpoint.
    loss_groups: contrastive negatives per group of the batch (1 = the global batch; k = the official
      per-GPU negatives on k GPUs; see `ezvsl.contrastive_loss`).
    bn_groups: BatchNorm statistics per group of the batch (1 = synchronised over the global batch; k = the
      official per-GPU statistics on k GPUs).
    bn_momentum: Flax-convention BatchNorm momentum (0.9 = PyTorch 0.1).
    torch_running_var: PyTorch-style unbiased running-variance update.
    class_source: which classes `localize` maps: 'oracle' (official: the given ground-truth classes) or
      'predicted' (the model's own audio classifier, sigmoid(fc_prob_a(xa)), top-K).
    top_k: K of predicted-class inference; None = as many as the given class_ids have.
    score_threshold: predicted mode: slots whose probability is below it are invalid (the best class always
      stays), so the number of sources per sample varies up to K.
    dtype: computation dtype of the encoders and transformers (e.g. bfloat16). Parameters, BatchNorm statistics,
      the log spectrogram, the L2-normalised features, softmaxes, LayerNorm statistics, the class heads
      (fc_cls, fc_prob_a, fc_prob_v), all losses, logits and maps are float32 whatever it is.
    remat: rematerialise the ResNet blocks, AttnBlocks and GroupingBlocks (`nn.remat`): less activation
      memory, more compute in the backward pass; the same parameters and (up to float rounding) values.
    audio_input: 'waveform' (the model computes the log spectrogram) | 'spectrogram' (given, as the official
      code's input; parity tests).
    sample_rate: Hz of the waveform.
  """
  num_classes: int
  resnet_width: int = 64
  resnet_blocks: Sequence[int] = (2, 2, 2, 2)
  image_strides: Sequence[int] = (1, 2, 2, 2)
  dim: int = 512
  depth_vis: int = 3
  depth_aud: int = 3
  num_heads: int = 8
  mlp_ratio: float = 4.0
  drop_path: float = 0.1
  tau: float = postprocess.OFFICIAL_TAU
  attn_assign: str = 'soft'
  loc_audio_grad: bool = True
  with_han_params: bool = False
  loss_groups: int = 1
  bn_groups: int = 1
  bn_momentum: float = 0.9
  torch_running_var: bool = True
  class_source: str = 'oracle'
  top_k: int | None = None
  score_threshold: float | None = None
  dtype: Any = jnp.float32
  remat: bool = False
  audio_input: str = 'waveform'
  sample_rate: float = 16000.0

  def setup(self):
    if self.attn_assign not in ('soft', 'hard'):
      raise ValueError(f"attn_assign must be 'soft' or 'hard', got {self.attn_assign!r}.")
    if self.class_source not in CLASS_SOURCES:
      raise ValueError(f'class_source={self.class_source!r}; expected one of {CLASS_SOURCES}.')
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f'top_k={self.top_k} must be at least 1 (or None: as many as the given sources).')
    self.setup_encoders()
    self.av_token = self.param('av_token', nn.initializers.zeros, (self.num_classes, self.dim), jnp.float32)
    hard = self.attn_assign == 'hard'
    self.visual_encoder = ModalityTransformer(
        self.depth_vis, self.num_heads, self.mlp_ratio, self.drop_path, hard_assign=hard, dtype=self.dtype,
        remat=self.remat)
    self.audio_encoder = ModalityTransformer(
        self.depth_aud, self.num_heads, self.mlp_ratio, self.drop_path, hard_assign=hard,
        with_han_params=self.with_han_params, dtype=self.dtype, remat=self.remat)
    # The class heads read float32 vectors and compute in float32 (their logits feed the losses).
    self.fc_cls = layers.dense(self.num_classes, dtype=jnp.float32)
    self.fc_prob_a = layers.dense(1, dtype=jnp.float32)
    self.fc_prob_v = layers.dense(1, dtype=jnp.float32)

  def _audio_class_vectors(self, aud_feat: jax.Array, *, train: bool) -> jax.Array:
    """aud_feat [B, D] -> xa [B, C, D] (float32): the audio token grouped into every class."""
    return self.audio_encoder(aud_feat[:, None, :], self.av_token, train=train).astype(jnp.float32)

  def __call__(self, image: jax.Array, audio: jax.Array, visual_class: jax.Array, audio_label: jax.Array,
               *, train: bool) -> tuple[dict, dict]:
    """Forward pass with all losses of docs/avgn.md §8.

    Args:
      image: [B, H, W, 3] ImageNet-normalised frames.
      audio: waveform [B, N] in [-1, 1] ([B, F, T, 1] log spectrograms with audio_input='spectrogram').
      visual_class: [B] int class of the visual source; selects xa[b, class] and is the visual BCE target.
      audio_label: [B, C] multi-hot classes audible in the mixture (audio BCE target).
      train: batch-stat BatchNorm, DropPath ('dropout' RNG) and Gumbel noise ('gumbel' RNG, hard only).

    Returns:
      losses: scalars 'loss' (= loss_loc + loss_cls_token + loss_cls_pred), 'loss_loc', 'loss_cls_token',
        'loss_cls_pred', 'loss_bce_v', 'loss_bce_a'.
      outputs: 'map' [B, h, w] (S[b, b], no gradient), 'img_feat' [B, h, w, D], 'aud_feat' [B, D],
        'xv' / 'xa' [B, C, D], 'aud_selected' [B, D], 'S_logits' [B, B, h, w], 'av_cls_logits' [C, C],
        'logit_prob_v' / 'logit_prob_a' / 'prob_v' / 'prob_a' [B, C].
    """
    img_feat, aud_feat = self.encode(image, audio, train=train)
    batch, height, width, dim = img_feat.shape
    xv = self.visual_encoder(
        img_feat.reshape(batch, height * width, dim), self.av_token, train=train).astype(jnp.float32)
    xa = self._audio_class_vectors(aud_feat, train=train)

    # The audio vector of the visual source's class, unnormalised (its norm is ~23 at init).
    aud_selected = xa[jnp.arange(batch), visual_class]
    img_feat = img_feat.astype(jnp.float32)
    loc_audio = aud_selected if self.loc_audio_grad else jax.lax.stop_gradient(aud_selected)
    loss_loc, pooled, logits = ezvsl.contrastive_loss(img_feat, loc_audio, self.tau, self.loss_groups)
    self.sow('intermediates', 'xmil_logits', pooled)

    av_cls_logits = self.fc_cls(self.av_token).astype(jnp.float32)
    loss_cls_token = cross_entropy_with_arange(av_cls_logits)

    logit_prob_v = self.fc_prob_v(xv)[..., 0].astype(jnp.float32)
    logit_prob_a = self.fc_prob_a(xa)[..., 0].astype(jnp.float32)
    visual_target = jax.nn.one_hot(visual_class, self.num_classes, dtype=jnp.float32)
    loss_bce_v = binary_cross_entropy(logit_prob_v, visual_target)
    loss_bce_a = binary_cross_entropy(logit_prob_a, audio_label.astype(jnp.float32))
    loss_cls_pred = loss_bce_v + loss_bce_a

    losses = {
        'loss': loss_loc + loss_cls_token + loss_cls_pred,
        'loss_loc': loss_loc,
        'loss_cls_token': loss_cls_token,
        'loss_cls_pred': loss_cls_pred,
        'loss_bce_v': loss_bce_v,
        'loss_bce_a': loss_bce_a,
    }
    outputs = {
        'map': ezvsl.own_map(img_feat, aud_selected, self.tau),
        'img_feat': img_feat,
        'aud_feat': aud_feat,
        'xv': xv,
        'xa': xa,
        'aud_selected': aud_selected,
        'S_logits': logits,
        'av_cls_logits': av_cls_logits,
        'logit_prob_v': logit_prob_v,
        'logit_prob_a': logit_prob_a,
        'prob_v': jax.nn.sigmoid(logit_prob_v),
        'prob_a': jax.nn.sigmoid(logit_prob_a),
    }
    return losses, outputs

  def localize(self, image: jax.Array, audio: jax.Array, class_ids: jax.Array, *,
               train: bool = False, return_classes: bool = False) -> jax.Array | tuple[jax.Array, dict]:
    """One map per source: of its (ground-truth) class (class_source='oracle', the official multi-source
    evaluation), or of each of the K classes the audio classifier scores highest ('predicted').

    The encoders run once; the visual grouping branch (losses only) is skipped.

    Args:
      image: [B, H, W, 3].
      audio: the mixture's waveform [B, N] ([B, F, T, 1] with audio_input='spectrogram').
      class_ids: [B, S] int class of each source; -1 marks padding (its map is valid but meaningless).
        Predicted mode reads only S (the default K).
      train: BatchNorm / DropPath mode (keep False for evaluation).
      return_classes: also return {'class_scores': the audio classifier's logits [B, C] (which classes the
        model hears), 'class_ids': the mapped classes [B, K], 'valid': [B, K] bool (predicted: above
        score_threshold; oracle: not padding)}.

    Returns:
      raw localization logits [B, K, h, w] = <img_feat[b], xa[b, class]> / tau (K = S for oracle), and the
      classes dict with return_classes.
    """
    img_feat, aud_feat = self.encode(image, audio, train=train)
    xa = self._audio_class_vectors(aud_feat, train=train)
    class_scores = self.fc_prob_a(xa)[..., 0].astype(jnp.float32)
    if self.class_source == 'predicted':
      ids, _, valid = layers.select_top_classes(jax.nn.sigmoid(class_scores), self.top_k or class_ids.shape[1],
                                                self.score_threshold)
    else:
      ids, valid = jnp.clip(class_ids, 0, self.num_classes - 1), class_ids >= 0
    source_vectors = jnp.take_along_axis(xa, ids[..., None], axis=1)
    maps = jnp.einsum('bhwd,bsd->bshw', img_feat.astype(jnp.float32), source_vectors) / self.tau
    if return_classes:
      return maps, {'class_scores': class_scores, 'class_ids': ids, 'valid': valid}
    return maps
