"""T-VSL's single-stage ablation as docs/tvsl.md §11 defines it (`tvsl_single_stage`).

Axis letters: B batch, K sources per sample, C classes (text-bank rows), L image tokens, J audio tokens,
D joint width, h/w token grid.

No class-instance detection stage (no `fusion_proj`, `logit_scale_ml` or L_mcl): every class embedding of the
bank conditions both modalities at once, and the losses use only the mixture's multi-hot label. Because the
conditioning of class n depends on t_n alone, the features of the positive classes are exactly the
per-class conditioning of `TVSLBase.condition` applied to those classes; only predicted-class inference needs
all C classes, and gets them by einsum without materialising [B, C, L, D].
"""
import jax
import jax.numpy as jnp

from avl_jax.models.tvsl import base
from avl_jax.models.tvsl import layers as tvsl_layers


class TVSLSingleStage(base.TVSLBase):
  """Single-stage T-VSL. Fields as `TVSL`, with these differences:

  * label_order is ignored: the class index of a loss is the text-bank row ('consistent', docs/tvsl.md §11.3).
  * class_source='predicted' ranks classes by the channel score rho_{b,n} = <a^cls_{b,n}, t_n> (the audio
    class feature conditioned on class n against its own text embedding), not by a stage-1 detector.
  * Repeated classes in a sample count once (the multi-hot label).
  """

  def setup(self):
    self.setup_common()

  def heads(self, image_tokens: jax.Array, audio_tokens: jax.Array, text_bank: jax.Array,
            class_rows: jax.Array, labels: jax.Array | None = None, *, grid_hw: tuple[int, int],
            with_maps: bool = True) -> tuple[dict, dict]:
    """Adapters, all-class conditioning of the positives, L_img + L_aud + L_cnt, maps.

    Args:
      image_tokens: [B, L, D] raw image tokens.
      audio_tokens: [B, J, D] raw audio tokens.
      text_bank: T [C, D].
      class_rows: [B, K] bank rows of the classes in the mixture (-1 = padding); the set P of positives.
      labels: ignored (the loss targets are the bank rows, docs/tvsl.md §11.3).
      grid_hw: (h, w).
      with_maps: also compute the maps of the positive classes.

    Returns:
      losses 'loss' = loss_img + loss_aud + loss_cnt and the terms; outputs 'img_cls_logits' /
      'aud_cls_logits' [B, K, C], 'cnt_logits' [G, K B/G, K B/G], 'img_cls_feat', 'aud_cls_feat',
      'aud_query', 'img_aud_feat' [B, K, D], 'valid' [B, K], the `adapt_tokens` outputs, 'maps' [B, K, h, w].
    """
    del labels
    text_bank = jnp.asarray(text_bank, jnp.float32)
    adapted = self.adapt_tokens(image_tokens, audio_tokens)
    valid = base.first_occurrences(class_rows)
    rows = jnp.maximum(class_rows, 0)
    conditioned = self.condition(adapted['image_tokens'], adapted['audio_tokens'], text_bank[rows])
    losses, outputs = self.class_heads(adapted, conditioned, text_bank, rows, valid, grid_hw, with_maps)
    losses = {'loss': losses['loss_img'] + losses['loss_aud'] + losses['loss_cnt'], **losses}
    return losses, outputs

  def channel_scores(self, adapted: dict[str, jax.Array], text_bank: jax.Array) -> jax.Array:
    """rho [B, C] = <n(G_acp(r_{b,n})), t_n> for every bank class, r = (1/J) M_a^T A (docs/tvsl.md §11.4)."""
    audio_mask = tvsl_layers.normalize_eps(
        jnp.einsum('bjd,cd->bcj', adapted['audio_tokens'], text_bank), axis=-1)  # M_a [B, C, J]
    audio_mean = tvsl_layers.masked_mean(audio_mask, adapted['audio_tokens'])  # [B, C, D]
    aud_cls_feat = tvsl_layers.normalize(self.adapter('aud_cls_proj', audio_mean))
    return jnp.einsum('bcd,cd->bc', aud_cls_feat, text_bank)

  def localize_from_tokens(self, image_tokens: jax.Array, audio_tokens: jax.Array, text_bank: jax.Array,
                           class_rows: jax.Array | None = None, *, grid_hw: tuple[int, int],
                           return_classes: bool = False):
    """`localize` after the towers (see `TVSL.localize_from_tokens`). 'scores' are the channel scores rho of
    the mapped classes (with score_threshold, slots with rho below it are invalid, the best one always valid),
    'bank_scores' those of every bank row."""
    text_bank = jnp.asarray(text_bank, jnp.float32)
    adapted = self.adapt_tokens(image_tokens, audio_tokens)
    bank_scores = self.channel_scores(adapted, text_bank) if return_classes or self.class_source == 'predicted' \
        else None
    if self.class_source == 'predicted':
      rows, scores, valid = base.select_top_classes(bank_scores, self.num_predicted(class_rows), self.score_threshold)
    else:
      if class_rows is None:
        raise ValueError("class_source='oracle' needs class_rows (the ground-truth classes).")
      rows, valid = class_rows, class_rows >= 0
      text = text_bank[jnp.maximum(rows, 0)]
      audio_mask = tvsl_layers.token_mask(adapted['audio_tokens'], text)
      aud_cls_feat = tvsl_layers.normalize(
          self.adapter('aud_cls_proj', tvsl_layers.masked_mean(audio_mask, adapted['audio_tokens'])))
      scores = jnp.sum(aud_cls_feat * text, axis=-1)
    maps = self.query_maps(adapted, text_bank, rows, grid_hw)
    if return_classes:
      return maps, {'class_rows': rows, 'scores': scores, 'valid': valid, 'bank_scores': bank_scores}
    return maps
