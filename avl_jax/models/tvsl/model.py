"""T-VSL (Mahmud et al., CVPR 2024) as released (github enyac-group/T-VSL), docs/tvsl.md.

Axis letters: B batch, K sources per sample, C classes (text-bank rows), L image tokens, J audio tokens,
D joint width (1024), H/W canvas height/width, h/w token grid.

canvas [own | partner] -> frozen CLIP RN50 tokens (98) -> G_vp;  mixture -> frozen ESResNeXt tokens (143) -> G_ap.
Stage 1 scores every text-bank class from the fused token means (multi-label, L_mcl). Per source class k the
text embedding t_k weights the tokens (cosine masks), giving class features (L_img, L_aud against the bank),
an audio query q_k and a visual feature v_k (L_cnt, symmetric InfoNCE). The map of class k is the cosine of
each conditioned, adapted visual token with q_k.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models.tvsl import base
from avl_jax.models.tvsl import layers as tvsl_layers


class TVSL(base.TVSLBase):
  """Two-stage T-VSL. Defaults reproduce the official release (docs/tvsl.md §10 column "official").

  Inputs everywhere: canvas [B, H, W, 3] (CLIP-normalised, 224x448 = [own | partner]), waveform [B, S] or
  [B, 1, S] (mixture, 5 s at 44.1 kHz), text_bank [C, D] (unit class-text embeddings from
  `text_bank.encode_text_bank`, computed once and cached; appending rows adds zero-shot classes),
  class_rows [B, K] int (text-bank rows of the sources' classes, -1 = padding).

  Attributes:
    embed_dim, image_layers, image_width, image_heads, image_resolution, text_width, text_layers,
      text_heads, audio_layers: AudioCLIP tower sizes (released: 1024, RN50, 12-layer text, ResNeXt-50).
    adapter_hidden: hidden width of the adapter MLPs (2048).
    bn_mode: 'train_stats' (official): in training the frozen towers' BatchNorms use batch statistics and
      overwrite their running statistics (PyTorch momentum 0.1, unbiased variance; `audio.att5.bn` twice per
      step), and evaluation uses those re-estimated statistics. 'frozen': BatchNorm always uses the
      checkpoint's running statistics.
    bn_groups: tower BatchNorm statistics per consecutive group of the batch. Official: one group per
      device (DDP without SyncBN, 64 samples each); 1 = the whole batch under jit (a SyncBN).
    audio_scale: 'official': the [-2, 2] mixture enters AudioCLIP's int16 rescale unscaled
      ((2x + 1) / 65535, about -90 dB); 'audioclip': multiplied by 32768 first, as AudioCLIP expects.
    pos_interp: token-mode positional table of the image attention pool: 'official_1d' (T-VSL: linear
      interpolation over the flattened 49 rows, the CLS embedding added to token 0) or 'grid_2d' (bilinear
      resize of the 7x7 grid to the token grid, no CLS embedding).
    class_source: which classes drive `localize`: 'oracle' (official: the given ground-truth classes) or
      'predicted' (stage 1's top-K classes; no labels needed). Training always uses the given classes.
    top_k: K of predicted-class inference; None = as many as the given class_rows have (docs/tvsl.md §10).
    score_threshold: predicted mode: slots whose stage-1 probability sigma(z) is below it are invalid
      (the best class always stays), so the number of sources per sample varies up to top_k.
    invert_map: official post-processing inverts the min-max map before thresholding (`postprocess`);
      False keeps the min-max map (high = cosine with the audio query).
    loss_groups: contrastive negatives per consecutive group of the batch. Official ('per_device'): one
      group per device; 1 = the global batch.
    label_order: 'official': the CE / BCE targets are the dataset's label indices (`labels`, the position
      in the sorted underscore names), used directly as text-bank columns although the bank is sorted by
      display names (VGG-SS: classes 29 and 30 swapped, `text_bank.official_label_indices`);
      'consistent': the targets are the bank rows of the class names (`class_rows`).
    dtype: computation dtype of the towers; the adapters run in float32.
  """

  def setup(self):
    self.setup_common()
    # Stage 1: Linear(2D, 2D), GELU, Linear(2D, 2D) on [mean image ; mean audio], no gate.
    self.fusion_proj = tvsl_layers.AdapterMLP(2 * self.embed_dim, 2 * self.embed_dim)
    self.logit_scale_ml = self.param(tvsl_layers.STAGE1_SCALE, nn.initializers.constant(tvsl_layers.LOG_100),
                                     (), jnp.float32)

  def stage1(self, mean_img_feature: jax.Array, mean_aud_feature: jax.Array,
             text_bank: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Multi-label class-instance detection against the text bank (docs/tvsl.md §4 step 4).

    s_ml = clamp(exp(logit_scale_ml), 1, 100) is the constant 100 in the release (exp(ln 100) > 100 in
    float32 saturates the clamp, so its gradient is exactly 0); it is read from the parameter and cut from
    the gradient (docs/tvsl.md §3).

    Args:
      mean_img_feature: [B, D] token mean of G_vp (unit-scale).
      mean_aud_feature: [B, D] token mean of G_ap (raw magnitude, dominates the fusion input).
      text_bank: T [C, D] unit class embeddings.

    Returns:
      (fusion_feature f = n(fusion_proj([v; a])) [B, 2D], logits z = s_ml f n([T | T])^T [B, C]).
    """
    fused = self.fusion_proj(jnp.concatenate([mean_img_feature, mean_aud_feature], axis=-1))
    fusion_feature = tvsl_layers.normalize(fused)
    doubled_bank = tvsl_layers.normalize(jnp.concatenate([text_bank, text_bank], axis=-1))
    scale = jax.lax.stop_gradient(tvsl_layers.temperature(self.logit_scale_ml))
    return fusion_feature, scale * fusion_feature @ doubled_bank.T

  def loss_targets(self, class_rows: jax.Array, labels: jax.Array | None) -> jax.Array:
    """[B, K] int class columns of L_mcl / L_img / L_aud under `label_order` (padding keeps -1)."""
    if self.label_order == 'official' and labels is not None:
      return jnp.where(class_rows >= 0, labels, -1)
    return class_rows

  def heads(self, image_tokens: jax.Array, audio_tokens: jax.Array, text_bank: jax.Array,
            class_rows: jax.Array, labels: jax.Array | None = None, *, grid_hw: tuple[int, int],
            with_maps: bool = True) -> tuple[dict, dict]:
    """Everything after the towers: adapters, stage 1, conditioning, the four losses, the maps.

    Args:
      image_tokens: [B, L, D] raw image tokens (`encode_tokens`).
      audio_tokens: [B, J, D] raw audio tokens.
      text_bank: T [C, D] unit class embeddings.
      class_rows: [B, K] int bank rows of the sources' classes (conditioning), -1 = padding.
      labels: [B, K] int dataset label indices (the loss targets under label_order='official'); None = the
        same as class_rows.
      grid_hw: (h, w) of the image tokens.
      with_maps: also compute the eval-branch maps.

    Returns:
      losses: 'loss' = loss_mcl + loss_img + loss_cnt + loss_aud, and each term.
      outputs: 'stage1_logits' [B, C], 'fusion_feature' [B, 2D], 'img_cls_logits' / 'aud_cls_logits'
        [B, K, C], 'cnt_logits' [G, K B/G, K B/G], 'text_feat', 'img_cls_feat', 'aud_cls_feat', 'aud_query',
        'img_aud_feat' [B, K, D], 'valid' [B, K], the `adapt_tokens` outputs, and 'maps' [B, K, h, w] (no
        gradient) when with_maps.
    """
    text_bank = jnp.asarray(text_bank, jnp.float32)
    adapted = self.adapt_tokens(image_tokens, audio_tokens)
    fusion_feature, stage1_logits = self.stage1(
        adapted['mean_img_feature'], adapted['mean_aud_feature'], text_bank)
    valid = class_rows >= 0
    text = text_bank[jnp.maximum(class_rows, 0)]  # t_k [B, K, D]
    conditioned = self.condition(adapted['image_tokens'], adapted['audio_tokens'], text)
    targets = self.loss_targets(class_rows, labels)
    # y = label_1 + ... + label_K (not clipped, as the official sum of one-hots).
    multi_hot = jnp.sum(jax.nn.one_hot(targets, text_bank.shape[0]) * valid[..., None].astype(jnp.float32), axis=1)
    loss_mcl = tvsl_layers.bce_with_logits(stage1_logits, multi_hot)
    losses, outputs = self.class_heads(adapted, conditioned, text_bank, targets, valid, grid_hw, with_maps)
    losses = {'loss': losses['loss_img'] + losses['loss_aud'] + losses['loss_cnt'] + loss_mcl,
              'loss_mcl': loss_mcl, **losses}
    outputs.update(stage1_logits=stage1_logits, fusion_feature=fusion_feature, text_feat=text)
    return losses, outputs

  def localize_from_tokens(self, image_tokens: jax.Array, audio_tokens: jax.Array, text_bank: jax.Array,
                           class_rows: jax.Array | None = None, *, grid_hw: tuple[int, int],
                           return_classes: bool = False):
    """`localize` after the towers: the frozen towers' tokens (`encode_tokens`) can be computed once and
    queried with many classes or banks.

    Args:
      image_tokens: [B, L, D] raw image tokens.
      audio_tokens: [B, J, D] raw audio tokens.
      text_bank, class_rows, return_classes: as `localize` ('scores': stage 1's probabilities of the classes,
        'bank_scores': of every bank row).
      grid_hw: (h, w) of the image tokens.
    """
    text_bank = jnp.asarray(text_bank, jnp.float32)
    adapted = self.adapt_tokens(image_tokens, audio_tokens)
    _, stage1_logits = self.stage1(adapted['mean_img_feature'], adapted['mean_aud_feature'], text_bank)
    probabilities = jax.nn.sigmoid(stage1_logits)
    if self.class_source == 'predicted':
      rows, scores, valid = base.select_top_classes(
          probabilities, self.num_predicted(class_rows), self.score_threshold)
    else:
      if class_rows is None:
        raise ValueError("class_source='oracle' needs class_rows (the ground-truth classes).")
      rows, valid = class_rows, class_rows >= 0
      scores = jnp.take_along_axis(probabilities, jnp.maximum(rows, 0), axis=1)
    maps = self.query_maps(adapted, text_bank, rows, grid_hw)
    if return_classes:
      return maps, {'class_rows': rows, 'scores': scores, 'valid': valid, 'bank_scores': probabilities}
    return maps
