"""AudioCLIP: CLIP's image and text towers plus the ESResNeXt-fbsp audio tower in one 1024-d space.

Axis letters: B batch (waveforms / images), N texts, L samples, H/W image height/width, K tokens,
E joint width (1024).

Spec tvsl.md §2. Variables: `visual/*` (image.ModifiedResNet), `text/*` (text.TextTransformer; the official
keys of these have no prefix), `audio/*` (audio.ESResNeXtFBSP) and the log temperatures `logit_scale`
(image-text), `logit_scale_ai` (audio-image), `logit_scale_at` (audio-text). With `frozen` (the default,
as in T-VSL) every output is cut from the gradient, so a training step never differentiates through the
towers and their parameters get exactly zero gradient; BatchNorm can still run on batch statistics
(`train=True`, T-VSL's `bn_mode='train_stats'`).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avl_jax.models.audioclip import audio as audio_lib
from avl_jax.models.audioclip import image as image_lib
from avl_jax.models.audioclip import text as text_lib

TEMPERATURE_MIN, TEMPERATURE_MAX = 1.0, 100.0
# logits name -> (log-temperature parameter, row modality, column modality).
LOGITS = {
    'audio_image': ('logit_scale_ai', 'audio', 'image'),
    'audio_text': ('logit_scale_at', 'audio', 'text'),
    'image_text': ('logit_scale', 'image', 'text'),
}


def normalize(x: jax.Array) -> jax.Array:
  """x / ||x||_2 over the last axis, without an epsilon (the official `x / x.norm(dim=-1)`)."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def temperature(log_scale: jax.Array) -> jax.Array:
  """clamp(exp(s), 1, 100): the multiplier of cosine logits."""
  return jnp.clip(jnp.exp(log_scale), TEMPERATURE_MIN, TEMPERATURE_MAX)


def symmetric_cross_entropy(logits: jax.Array) -> jax.Array:
  """CE(logits, arange) + CE(logits^T, arange), means over rows; logits [B, B] (pair i is the target)."""
  diagonal_rows = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  diagonal_cols = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  return -jnp.mean(diagonal_rows) - jnp.mean(diagonal_cols)


def contrastive_loss(logits: dict[str, jax.Array]) -> jax.Array:
  """The official `AudioCLIP.loss_fn`: symmetric CE summed over the given pairs, divided by (#pairs)!."""
  if not logits:
    raise ValueError('contrastive_loss needs at least one pair of modalities.')
  for name, value in logits.items():
    if value.ndim != 2 or value.shape[0] != value.shape[1]:
      raise ValueError(f'{name} logits have shape {value.shape}: the loss pairs sample i of one modality '
                       'with sample i of the other, so every modality needs the same batch size.')
  total = sum(symmetric_cross_entropy(value) for value in logits.values())
  return total / math.factorial(len(logits))


class AudioCLIP(nn.Module):
  """AudioCLIP (`model/audioclip.py`), eval and train modes, global and T-VSL token modes.

  Attributes:
    embed_dim: joint width E.
    image_layers: bottlenecks per stage of the image ResNet.
    image_width: stem width of the image ResNet.
    image_heads: attention-pool heads.
    image_resolution: the resolution of the positional table (224 -> 7x7).
    pos_interp: token-mode positional interpolation ('official_1d' or 'grid_2d', see image.AttentionPool2d).
    text_width, text_layers, text_heads, context_length, vocab_size: text transformer.
    audio_layers: bottlenecks per stage of the ESResNeXt.
    frozen: stop gradients at every output of the towers and at the temperatures.
    dtype: computation dtype of the towers (e.g. jnp.bfloat16); parameters, BatchNorm statistics, the
      audio front end, LayerNorms and softmaxes stay float32.
    bn_groups: train-mode BatchNorm statistics per group of the batch in the image and audio towers (1 = the
      whole batch seen by the call, a SyncBN under jit; k = per-device statistics on k devices, as T-VSL's
      DDP run without SyncBN).
  """
  embed_dim: int = 1024
  image_layers: Sequence[int] = (3, 4, 6, 3)
  image_width: int = 64
  image_heads: int = 32
  image_resolution: int = 224
  pos_interp: str = 'official_1d'
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  context_length: int = text_lib.CONTEXT_LENGTH
  vocab_size: int = text_lib.VOCAB_SIZE
  audio_layers: Sequence[int] = (3, 4, 6, 3)
  frozen: bool = True
  dtype: Any = jnp.float32
  bn_groups: int = 1

  def setup(self):
    self.visual = image_lib.ModifiedResNet(
        self.image_layers, self.image_width, self.image_heads, self.embed_dim, self.image_resolution,
        self.pos_interp, dtype=self.dtype, bn_groups=self.bn_groups)
    self.text = text_lib.TextTransformer(
        self.vocab_size, self.context_length, self.text_width, self.text_layers, self.text_heads,
        self.embed_dim, dtype=self.dtype)
    self.audio = audio_lib.ESResNeXtFBSP(self.audio_layers, embed_dim=self.embed_dim, dtype=self.dtype,
                                         bn_groups=self.bn_groups)
    # CLIP initialises its temperature at 1 / 0.07, AudioCLIP the two audio ones at 100.
    self.logit_scale = self.param('logit_scale', nn.initializers.constant(np.log(1 / 0.07)), (), jnp.float32)
    self.logit_scale_ai = self.param('logit_scale_ai', nn.initializers.constant(np.log(100.0)), (),
                                     jnp.float32)
    self.logit_scale_at = self.param('logit_scale_at', nn.initializers.constant(np.log(100.0)), (),
                                     jnp.float32)

  def _output(self, tree: Any) -> Any:
    """Tower outputs as float32 (whatever the computation dtype), cut from the gradient when frozen."""
    tree = jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    return jax.tree.map(jax.lax.stop_gradient, tree) if self.frozen else tree

  def encode_audio(self, waveform: jax.Array, *, train: bool = False, return_tokens: bool = False):
    """waveform [B, L] in int16 range -> [B, E] (not normalised); with return_tokens (tokens [B, K, E],
    embedding [B, E]) (K = 143 for 5 s at 44.1 kHz)."""
    return self._output(self.audio(waveform, train=train, return_tokens=return_tokens))

  def encode_image(self, image: jax.Array, *, train: bool = False, return_tokens: bool = False) -> jax.Array:
    """image [B, H, W, 3] CLIP-normalised -> [B, E], or tokens [B, (H/32)(W/32), E] (not normalised)."""
    return self._output(self.visual(image, train=train, return_tokens=return_tokens))

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """ids [N, L] from tokenizer.Tokenizer.tokenize -> [N, E] (not normalised)."""
    return self._output(self.text(ids))

  def temperatures(self) -> dict[str, jax.Array]:
    """{'audio_image', 'audio_text', 'image_text'} -> clamp(exp(logit_scale_*), 1, 100)."""
    return {name: self._output(temperature(getattr(self, param))) for name, (param, _, _) in LOGITS.items()}

  def fbsp_norm_loss(self) -> jax.Array:
    """The official audio `loss_ttf` (scalar)."""
    return self._output(self.audio.fbsp_norm_loss())

  def logits(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Scaled cosine logits of every pair of given normalised features.

    Args:
      features: a subset of {'audio': [B_a, E], 'image': [B_i, E], 'text': [N, E]}.

    Returns:
      {'audio_image': [B_a, B_i], 'audio_text': [B_a, N], 'image_text': [B_i, N]} for the pairs present.
    """
    scales = self.temperatures()
    return {name: scales[name] * features[rows] @ features[cols].T
            for name, (_, rows, cols) in LOGITS.items() if rows in features and cols in features}

  def __call__(self, audio: jax.Array | None = None, image: jax.Array | None = None,
               text: jax.Array | None = None, *, train: bool = False,
               with_loss: bool = False) -> dict[str, Any]:
    """The official forward: normalised features, logits and optionally the loss.

    Args:
      audio: waveforms [B, L] in int16 range, or None.
      image: images [B, H, W, 3], or None.
      text: token ids [N, L_text], or None.
      train: BatchNorm with batch statistics.
      with_loss: also return the official loss (needs equal batch sizes: sample i of each modality
        forms a pair).

    Returns:
      {'features': {modality: [., E]}, 'logits': {pair: [., .]}} (float32), plus with_loss 'loss_ce'
      (contrastive_loss), 'loss_ttf' (fbsp_norm_loss, when audio is given) and 'loss' (their sum).
      The unnormalised embeddings are sown to 'intermediates' as `{modality}_embed_raw`.
    """
    raw = {}
    if audio is not None:
      raw['audio'] = self.encode_audio(audio, train=train)
    if image is not None:
      raw['image'] = self.encode_image(image, train=train)
    if text is not None:
      raw['text'] = self.encode_text(text)
    features = {}
    for modality, embedding in raw.items():
      self.sow('intermediates', f'{modality}_embed_raw', embedding)
      features[modality] = normalize(embedding)
    outputs = {'features': features, 'logits': self.logits(features)}
    if with_loss:
      outputs['loss_ce'] = contrastive_loss(outputs['logits'])
      outputs['loss'] = outputs['loss_ce']
      if audio is not None:
        outputs['loss_ttf'] = self.fbsp_norm_loss()
        outputs['loss'] = outputs['loss'] + outputs['loss_ttf']
    return outputs
