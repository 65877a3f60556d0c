"""AVGN on AudioCLIP encoders: the AVGN grouping model with T-VSL's frozen towers instead of two ResNet-18s.

Axis letters: B batch, C classes, S sources, h/w token grid (7x7 for a 224x224 frame), D AVGN width, E joint
width (1024).

Neither official code base has this model and docs/tvsl.md does not define it; this is the simplest faithful
reading, documented here:

* Image: one 224x224 frame (AVGN's input; CLIP-normalised) -> the frozen CLIP RN50 attention pool in token
  mode (the 1024-d joint-space tokens T-VSL uses) -> `img_proj` (Dense E -> D, AVGN's 1x1 conv) -> L2 norm
  = img_feat [B, 7, 7, D].
* Audio: the waveform -> the frozen ESResNeXt-fbsp global embedding [B, E] (AudioCLIP's audio embedding, the
  counterpart of AVGN's max-pooled audio ResNet) -> `aud_proj` (Dense E -> D) -> L2 norm = aud_feat [B, D].
* Everything after the encoders (class tokens, grouping transformers, losses, maps) is AVGN unchanged; the
  `audio` argument of AVGN's methods is the waveform [B, S] or [B, 1, S] (the towers' own front end).
* The towers are frozen (`params.FROZEN_PARAMS`: zero updates, no optimizer state) and follow T-VSL's switches:
  bn_mode 'train_stats' and audio_scale 'official' by default, so that a comparison with T-VSL differs in the
  head only. pos_interp defaults to 'grid_2d', which for a 7x7 grid is CLIP's own table without the CLS row
  (T-VSL's 1-D rule would stretch 49 rows onto 48 tokens and add the CLS row to token 0).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import avgn
from avl_jax.models import layers
from avl_jax.models.tvsl import base


class AVGNAudioCLIP(avgn.AVGN):
  """AVGN with frozen AudioCLIP encoders (see the module docstring).

  Attributes (in addition to AVGN's; resnet_width / resnet_blocks / bn_momentum / torch_running_var are
  unused):
    embed_dim, image_layers, image_width, image_heads, image_resolution, text_width, text_layers,
      text_heads, audio_layers: AudioCLIP tower sizes (released values by default). The text tower is built
      (its weights are part of the checkpoint) but not used.
    bn_mode: 'train_stats' (towers' BatchNorm on batch statistics in training, as T-VSL) or 'frozen'.
    audio_scale: 'official' (T-VSL: the [-1, 1] waveform into the int16 rescale) or 'audioclip' (x 32768).
    pos_interp: 'grid_2d' (default here) or 'official_1d'.
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
  bn_mode: str = 'train_stats'
  audio_scale: str = 'official'
  pos_interp: str = 'grid_2d'

  def setup_encoders(self) -> None:
    """Creates the frozen `audioclip` towers and the `img_proj` / `aud_proj` projections."""
    base.check_choice('bn_mode', self.bn_mode, base.BN_MODES)
    base.check_choice('audio_scale', self.audio_scale, base.AUDIO_SCALES)
    self.audioclip = base.tower_model(self)
    self.img_proj = nn.Dense(self.dim, kernel_init=layers.kaiming_fan_out_normal,
                             bias_init=layers.torch_default_bias_init(self.embed_dim), dtype=self.dtype)
    self.aud_proj = layers.dense(self.dim, dtype=self.dtype)

  def encode(self, image: jax.Array, audio: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Runs the frozen towers and the projections.

    Args:
      image: [B, H, W, 3] CLIP-normalised frames (224x224 -> a 7x7 token grid).
      audio: the waveform [B, S] or [B, 1, S].
      train: training step (tower BatchNorm per `bn_mode`; the projections have no BatchNorm).

    Returns:
      img_feat [B, H/32, W/32, D] and aud_feat [B, D], both L2-normalised over D.
    """
    tower_train = train and self.bn_mode == 'train_stats'
    waveform = audio * base.INT16_SCALE if self.audio_scale == 'audioclip' else audio
    if self.is_initializing():  # The unused text tower's parameters belong to the checkpoint layout.
      self.audioclip.encode_text(jnp.zeros((1, 2), jnp.int32))
    tokens = self.audioclip.encode_image(image, train=tower_train, return_tokens=True)
    batch, height, width = image.shape[0], image.shape[1] // 32, image.shape[2] // 32
    img_proj = self.img_proj(tokens.reshape(batch, height, width, tokens.shape[-1]).astype(self.dtype))
    self.sow('intermediates', 'img_projected', img_proj)
    aud_proj = self.aud_proj(self.audioclip.encode_audio(waveform, train=tower_train).astype(self.dtype))
    self.sow('intermediates', 'aud_projected', aud_proj)
    return (layers.l2_normalize(img_proj.astype(jnp.float32)), layers.l2_normalize(aud_proj.astype(jnp.float32)))
