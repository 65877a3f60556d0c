"""What the two-stage T-VSL and its single-stage ablation share: frozen AudioCLIP towers, the six gated adapters,
text-guided conditioning and the localization maps (docs/tvsl.md §2-§4, §10).

Axis letters: B batch, K sources per sample, C classes (text-bank rows), L image tokens (h * w), J audio
tokens, D joint width (1024), H/W canvas height/width, h/w token grid (H / 32, W / 32).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers

from avl_jax.models.audioclip import model as audioclip_model
from avl_jax.models.tvsl import layers as tvsl_layers
from avl_jax.models.tvsl import postprocess as tvsl_postprocess

BN_MODES = ('train_stats', 'frozen')
AUDIO_SCALES = ('official', 'audioclip')
CLASS_SOURCES = ('oracle', 'predicted')
LABEL_ORDERS = ('official', 'consistent')
POS_INTERPS = ('official_1d', 'grid_2d')
INT16_SCALE = 32768.0  # AudioCLIP's own loader feeds int16-range samples.


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f'{name}={value!r}; expected one of {tuple(choices)}.')


# Shared with the AVGN family (predicted-class evaluation).
select_top_classes = layers.select_top_classes


def first_occurrences(class_rows: jax.Array) -> jax.Array:
  """[B, K] bool: the row is not padding (-1) and does not repeat an earlier slot of its sample."""
  repeated = jnp.any((class_rows[:, :, None] == class_rows[:, None, :])
                     & jnp.tril(jnp.ones((class_rows.shape[1],) * 2, bool), k=-1)[None], axis=-1)
  return (class_rows >= 0) & ~repeated


def tower_model(model: nn.Module) -> audioclip_model.AudioCLIP:
  """The frozen AudioCLIP with a T-VSL-style model's tower fields (an unbound module; `encode_text_bank` runs its
  text tower)."""
  return audioclip_model.AudioCLIP(
      embed_dim=model.embed_dim, image_layers=model.image_layers, image_width=model.image_width,
      image_heads=model.image_heads, image_resolution=model.image_resolution, pos_interp=model.pos_interp,
      text_width=model.text_width, text_layers=model.text_layers, text_heads=model.text_heads,
      audio_layers=model.audio_layers, frozen=True, dtype=model.dtype, bn_groups=model.bn_groups)


class TVSLBase(nn.Module):
  """Base class: fields, towers, adapters and the per-class conditioning. Not a model by itself.

  Subclasses declare nothing new for the towers; they call `setup_common()` from `setup()`. Field meanings
  are documented on `TVSL`.
  """
  embed_dim: int = 1024
  image_layers: Sequence[int] = (3, 4, 6, 3)
  image_width: int = 64
  image_heads: int = 32
  image_resolution: int = 224
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  audio_layers: Sequence[int] = (3, 4, 6, 3)
  adapter_hidden: int = 2048
  bn_mode: str = 'train_stats'
  bn_groups: int = 1
  audio_scale: str = 'official'
  pos_interp: str = 'official_1d'
  class_source: str = 'oracle'
  top_k: int | None = None
  score_threshold: float | None = None
  invert_map: bool = True
  loss_groups: int = 1
  label_order: str = 'official'
  dtype: Any = jnp.float32

  def setup_common(self) -> None:
    """Checks the switches; creates `audioclip` (frozen), the six MLPs and their gates."""
    check_choice('bn_mode', self.bn_mode, BN_MODES)
    check_choice('audio_scale', self.audio_scale, AUDIO_SCALES)
    check_choice('pos_interp', self.pos_interp, POS_INTERPS)
    check_choice('class_source', self.class_source, CLASS_SOURCES)
    check_choice('label_order', self.label_order, LABEL_ORDERS)
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f'top_k={self.top_k} must be at least 1 (or None: as many as the given sources).')
    self.audioclip = tower_model(self)
    for mlp_name, gate_name in tvsl_layers.ADAPTERS:
      setattr(self, mlp_name, tvsl_layers.AdapterMLP(self.adapter_hidden))
      setattr(self, gate_name, self.param(gate_name, nn.initializers.ones, (), jnp.float32))

  def adapter(self, mlp_name: str, x: jax.Array) -> jax.Array:
    """G(x) = w x + (1 - w) MLP(x) of the named official adapter (`visual_proj`, ...)."""
    gate_name = dict(tvsl_layers.ADAPTERS)[mlp_name]
    return tvsl_layers.gated(getattr(self, gate_name), getattr(self, mlp_name), x)

  # ----------------------------------------------------------------------------------------------- towers

  def encode_tokens(self, canvas: jax.Array, waveform: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Runs the frozen towers (no gradient).

    Args:
      canvas: [B, H, W, 3] CLIP-normalised two-frame canvas [own | partner] (224x448 officially).
      waveform: [B, S] or [B, 1, S] mixture in [-2, 2] (sum of two [-1, 1] clips).
      train: training step; with bn_mode='train_stats' the towers' BatchNorms use batch statistics and
        update their running statistics (`batch_stats` must be mutable).

    Returns:
      'image_tokens' [B, L, D] (attention-pool token mode, not normalised), 'audio_tokens' [B, J, D] (not
      normalised), 'audio_embedding' [B, D] (the unused global path), all float32.
    """
    tower_train = train and self.bn_mode == 'train_stats'
    if self.audio_scale == 'audioclip':
      waveform = waveform * INT16_SCALE
    if self.is_initializing():  # The text tower is frozen and unused here, but part of the checkpoint.
      self.audioclip.encode_text(jnp.zeros((1, 2), jnp.int32))
    image_tokens = self.audioclip.encode_image(canvas, train=tower_train, return_tokens=True)
    audio_tokens, audio_embedding = self.audioclip.encode_audio(waveform, train=tower_train, return_tokens=True)
    return {'image_tokens': image_tokens, 'audio_tokens': audio_tokens, 'audio_embedding': audio_embedding}

  def adapt_tokens(self, image_tokens: jax.Array, audio_tokens: jax.Array) -> dict[str, jax.Array]:
    """The token adapters (docs/tvsl.md §4 steps 2-3).

    Args:
      image_tokens: [B, L, D] raw tower tokens.
      audio_tokens: [B, J, D] raw tower tokens.

    Returns:
      'image_tokens_pre_adapter' = n(tokens) [B, L, D]; 'image_tokens' V = n(G_vp(.)) [B, L, D];
      'mean_img_feature' = mean_l G_vp(.) [B, D] (before the re-normalisation); 'audio_tokens' A =
      n(G_ap(raw)) [B, J, D]; 'mean_aud_feature' = mean_j G_ap(raw) [B, D] (raw magnitude).
    """
    visual_pre = tvsl_layers.normalize(image_tokens)
    visual = self.adapter('visual_proj', visual_pre)
    audio = self.adapter('audio_proj', audio_tokens)
    return {
        'image_tokens_pre_adapter': visual_pre,
        'image_tokens': tvsl_layers.normalize(visual),
        'mean_img_feature': jnp.mean(visual, axis=1),
        'audio_tokens': tvsl_layers.normalize(audio),
        'mean_aud_feature': jnp.mean(audio, axis=1),
    }

  # --------------------------------------------------------------------------------------- conditioning

  def condition(self, image_tokens: jax.Array, audio_tokens: jax.Array,
                text: jax.Array) -> dict[str, jax.Array]:
    """Text-guided visual and audio conditioning for K classes per sample (docs/tvsl.md §4 steps 5-8).

    Args:
      image_tokens: V [B, L, D] unit tokens.
      audio_tokens: A [B, J, D] unit tokens.
      text: t_k [B, K, D] unit class-text embeddings.

    Returns:
      'image_mask' m_k [B, K, L], 'audio_mask' mu_k [B, K, J]; 'img_cls_feat' v_k^cls, 'aud_cls_feat'
      a_k^cls, 'aud_query' q_k, 'img_aud_feat' v_k^av (train branch), all [B, K, D] unit vectors.
    """
    image_mask = tvsl_layers.token_mask(image_tokens, text)
    audio_mask = tvsl_layers.token_mask(audio_tokens, text)
    image_mean = tvsl_layers.masked_mean(image_mask, image_tokens)  # u_k
    audio_mean = tvsl_layers.masked_mean(audio_mask, audio_tokens)  # r_k
    return {
        'image_mask': image_mask,
        'audio_mask': audio_mask,
        'img_cls_feat': tvsl_layers.normalize(self.adapter('img_cls_proj', image_mean)),
        'aud_cls_feat': tvsl_layers.normalize(self.adapter('aud_cls_proj', audio_mean)),
        'aud_query': tvsl_layers.normalize(self.adapter('aud_img_proj', audio_mean)),
        'img_aud_feat': tvsl_layers.normalize(self.adapter('img_aud_proj', image_mean)),
    }

  def class_maps(self, image_tokens: jax.Array, image_mask: jax.Array, aud_query: jax.Array,
                 grid_hw: tuple[int, int]) -> jax.Array:
    """The official eval branch (docs/tvsl.md §4 step 9): h_k = n_tokens(n(G_iap(m_k * V)) . q_k).

    G_iap runs per conditioned token here, while training applies it to their mean (the release's
    train/test mismatch, kept).

    Args:
      image_tokens: V [B, L, D].
      image_mask: m_k [B, K, L].
      aud_query: q_k [B, K, D].
      grid_hw: (h, w) with h * w = L, tokens row-major.

    Returns:
      maps [B, K, h, w], each L2-normalised over its L tokens.
    """
    conditioned = image_mask[..., None] * image_tokens[:, None]  # [B, K, L, D]
    adapted = tvsl_layers.normalize(self.adapter('img_aud_proj', conditioned))
    maps = tvsl_layers.normalize(jnp.einsum('bkld,bkd->bkl', adapted, aud_query))
    return maps.reshape(maps.shape[:2] + tuple(grid_hw))

  def query_maps(self, adapted: dict[str, jax.Array], text_bank: jax.Array, class_rows: jax.Array,
                 grid_hw: tuple[int, int]) -> jax.Array:
    """Maps of the requested classes only (the eval branch, no class features).

    Args:
      adapted: `adapt_tokens` outputs.
      text_bank: [C, D].
      class_rows: [B, K] bank rows (-1: padding, mapped as row 0).
      grid_hw: (h, w).

    Returns:
      [B, K, h, w].
    """
    text = jnp.asarray(text_bank, jnp.float32)[jnp.maximum(class_rows, 0)]
    image_mask = tvsl_layers.token_mask(adapted['image_tokens'], text)
    audio_mask = tvsl_layers.token_mask(adapted['audio_tokens'], text)
    query = tvsl_layers.normalize(
        self.adapter('aud_img_proj', tvsl_layers.masked_mean(audio_mask, adapted['audio_tokens'])))
    return self.class_maps(adapted['image_tokens'], image_mask, query, grid_hw)

  # ------------------------------------------------------------------------------------------- entry points
  # Subclasses define `heads(image_tokens, audio_tokens, text_bank, class_rows, labels, *, grid_hw, with_maps)`
  # and `localize_from_tokens(image_tokens, audio_tokens, text_bank, class_rows, *, grid_hw, return_classes)`.

  def __call__(self, canvas: jax.Array, waveform: jax.Array, text_bank: jax.Array, class_rows: jax.Array,
               labels: jax.Array | None = None, *, train: bool,
               with_maps: bool | None = None) -> tuple[dict, dict]:
    """The forward pass with the model's losses (computed in eval mode too).

    Args:
      canvas: [B, H, W, 3].
      waveform: [B, S] or [B, 1, S].
      text_bank: [C, D].
      class_rows: [B, K] int ground-truth classes (bank rows; -1 = padding).
      labels: [B, K] int dataset label indices (TVSL: see `label_order`; ignored by the single stage), or None.
      train: training step (tower BatchNorm per `bn_mode`; `batch_stats` must then be mutable).
      with_maps: compute the eval-branch maps of the given classes (default: when not training).

    Returns:
      (losses, outputs) of `heads`, outputs also with 'image_tokens_raw' [B, L, D], 'audio_tokens_raw'
      [B, J, D] and 'audio_embedding' [B, D] from the towers.
    """
    tokens = self.encode_tokens(canvas, waveform, train=train)
    losses, outputs = self.heads(
        tokens['image_tokens'], tokens['audio_tokens'], text_bank, class_rows, labels,
        grid_hw=self.grid_hw(canvas), with_maps=not train if with_maps is None else with_maps)
    outputs.update(image_tokens_raw=tokens['image_tokens'], audio_tokens_raw=tokens['audio_tokens'],
                   audio_embedding=tokens['audio_embedding'])
    return losses, outputs

  def localize(self, canvas: jax.Array, waveform: jax.Array, text_bank: jax.Array,
               class_rows: jax.Array | None = None, *, train: bool = False,
               return_classes: bool = False):
    """Raw localization maps, one per source class (the official `forward` in eval mode).

    class_source='oracle' maps the given class_rows; 'predicted' maps the model's top-K classes (TVSL: stage
    1's detector; single stage: the channel scores; K = top_k, else class_rows.shape[1]; with score_threshold
    fewer may be valid), so no labels are needed and any bank row, including rows appended for classes never
    trained on, can come out or be queried.

    Args:
      canvas: [B, H, W, 3].
      waveform: [B, S] or [B, 1, S].
      text_bank: [C, D].
      class_rows: [B, K] int bank rows (oracle: required; predicted: only its K is used, if top_k is None).
      train: tower BatchNorm mode (keep False).
      return_classes: also return the classes behind the maps.

    Returns:
      maps [B, K, h, w] (each L2-normalised over the tokens; post-process with `postprocess`); with
      return_classes (maps, {'class_rows' [B, K], 'scores' [B, K] the selection scores of those classes,
      'valid' [B, K] bool, 'bank_scores' [B, C] the selection score of every bank row}).
    """
    tokens = self.encode_tokens(canvas, waveform, train=train)
    return self.localize_from_tokens(tokens['image_tokens'], tokens['audio_tokens'], text_bank, class_rows,
                                     grid_hw=self.grid_hw(canvas), return_classes=return_classes)

  # ------------------------------------------------------------------------------------------- helpers

  @staticmethod
  def grid_hw(canvas: jax.Array) -> tuple[int, int]:
    """Token grid (H / 32, W / 32) of a [B, H, W, 3] canvas."""
    return canvas.shape[1] // 32, canvas.shape[2] // 32

  def num_predicted(self, class_rows: jax.Array | None) -> int:
    """K for predicted-class inference: `top_k`, else the number of given (GT) sources."""
    if self.top_k is not None:
      return self.top_k
    if class_rows is None:
      raise ValueError("class_source='predicted' with top_k=None takes K from class_rows (the number of "
                       'ground-truth sources); pass class_rows or set top_k.')
    return class_rows.shape[1]

  def class_heads(self, adapted: dict[str, jax.Array], conditioned: dict[str, jax.Array], text_bank: jax.Array,
                  targets: jax.Array, valid: jax.Array, grid_hw: tuple[int, int],
                  with_maps: bool) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """What both models compute from the class-conditioned features: the class logits against the bank, L_img
    and L_aud (cross-entropy on `targets` [B, K], weighted by `valid`), L_cnt, and the outputs dict (the
    `adapt_tokens` outputs, the class features, the logits, 'valid' and, with_maps, the stop-gradient maps)."""
    scales = self.class_temperatures()
    img_cls_logits = scales['image_text'] * conditioned['img_cls_feat'] @ text_bank.T
    aud_cls_logits = scales['audio_text'] * conditioned['aud_cls_feat'] @ text_bank.T
    weights = valid.astype(jnp.float32)
    loss_img = tvsl_layers.cross_entropy(img_cls_logits, targets, weights)
    loss_aud = tvsl_layers.cross_entropy(aud_cls_logits, targets, weights)
    loss_cnt, cnt_logits = tvsl_layers.contrastive_loss(
        conditioned['aud_query'], conditioned['img_aud_feat'], valid, scales['audio_image'], self.loss_groups)
    outputs = dict(adapted)
    outputs.update({key: conditioned[key] for key in tvsl_layers.CLASS_FEATURES})
    outputs.update(img_cls_logits=img_cls_logits, aud_cls_logits=aud_cls_logits, cnt_logits=cnt_logits,
                   valid=valid)
    if with_maps:
      outputs['maps'] = jax.lax.stop_gradient(self.class_maps(
          adapted['image_tokens'], conditioned['image_mask'], conditioned['aud_query'], grid_hw))
    return {'loss_img': loss_img, 'loss_aud': loss_aud, 'loss_cnt': loss_cnt}, outputs

  def class_temperatures(self) -> dict[str, jax.Array]:
    """The frozen AudioCLIP temperatures: image-text (L_img), audio-text (L_aud), audio-image (L_cnt)."""
    return self.audioclip.temperatures()

  def postprocess(self, raw_maps: Any, out_hw: tuple[int, int] | None = None,
                  threshold: float = tvsl_postprocess.THRESHOLD) -> dict[str, Any]:
    """The official post-processing with this model's `invert_map` (`tvsl.postprocess.postprocess_maps`).

    Plain NumPy on host arrays: call it on an unbound model (`model.postprocess(maps)`).
    """
    return tvsl_postprocess.postprocess_maps(raw_maps, invert=self.invert_map, out_hw=out_hw,
                                             threshold=threshold)
