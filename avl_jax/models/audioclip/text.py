"""CLIP's causal text transformer (AudioCLIP's text tower: `token_embedding`, `transformer.*`, ...).

Axis letters: N texts, L tokens (context length 77), H heads, K head width, D width (512), E output width.

Spec tvsl.md §2.3: token + positional embedding, pre-LN residual blocks with a causal mask, QuickGELU MLPs,
`ln_final`, the feature at the end-of-text token (the largest id) times `text_projection`. LayerNorms run
in float32 (eps 1e-5) whatever the computation dtype, as CLIP's LayerNorm subclass does.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's QuickGELU x * sigmoid(1.702 x) (not the erf GELU)."""
  return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(name: str) -> nn.LayerNorm:
  """A float32 nn.LayerNorm whose parameters sit directly under `name` (`ln_1`: scale, bias)."""
  return layers.layer_norm(name=name, dtype=jnp.float32)


class MultiheadSelfAttention(nn.Module):
  """nn.MultiheadAttention with a packed input projection (`attn.in_proj_weight`, rows [q | k | v]).

  Attributes:
    num_heads: H.
    dtype: computation dtype (softmax in float32).
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [N, L, D], mask [L, L] bool (True = may attend) -> [N, L, D]."""
    batch, length, width = x.shape
    head_width = width // self.num_heads
    kernel = self.param('in_proj_kernel', nn.initializers.normal(width**-0.5), (width, 3 * width), jnp.float32)
    bias = self.param('in_proj_bias', nn.initializers.zeros, (3 * width,), jnp.float32)
    qkv = jnp.einsum('nld,de->nle', x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_width)
    query = qkv[:, :, 0] * head_width**-0.5
    logits = jnp.einsum('nlhk,nmhk->nhlm', query, qkv[:, :, 1]).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attended = jnp.einsum('nhlm,nmhk->nlhk', weights, qkv[:, :, 2]).reshape(batch, length, width)
    return nn.Dense(width, kernel_init=nn.initializers.normal(width**-0.5), dtype=self.dtype,
                    name='out_proj')(attended)


class Mlp(nn.Module):
  """`mlp`: c_fc (D -> 4D), QuickGELU, c_proj (4D -> D)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> [..., D]."""
    width = x.shape[-1]
    hidden = quick_gelu(nn.Dense(4 * width, kernel_init=nn.initializers.normal((2 * width)**-0.5),
                                 dtype=self.dtype, name='c_fc')(x))
    return nn.Dense(width, kernel_init=nn.initializers.normal(width**-0.5), dtype=self.dtype,
                    name='c_proj')(hidden)


class ResidualAttentionBlock(nn.Module):
  """x <- x + attn(ln_1(x)); x <- x + mlp(ln_2(x)) (`transformer.resblocks.{i}`)."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [N, L, D] -> [N, L, D]."""
    normed = _layer_norm('ln_1')(x.astype(jnp.float32)).astype(self.dtype)
    x = x + MultiheadSelfAttention(self.num_heads, dtype=self.dtype, name='attn')(normed, mask)
    normed = _layer_norm('ln_2')(x.astype(jnp.float32)).astype(self.dtype)
    return x + Mlp(dtype=self.dtype, name='mlp')(normed)


class Transformer(nn.Module):
  """`transformer`: `resblocks_{i}` for i < layers."""
  layers: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [N, L, D] -> [N, L, D]."""
    for index in range(self.layers):
      x = ResidualAttentionBlock(self.num_heads, dtype=self.dtype, name=f'resblocks_{index}')(x, mask)
    return x


class TextTransformer(nn.Module):
  """CLIP's text encoder: token ids -> [N, E].

  Its variables are the official root-level text entries (`token_embedding`, `positional_embedding`,
  `transformer`, `ln_final`, `text_projection`); AudioCLIP keeps them under `text/`.

  Attributes:
    vocab_size: token table rows (49408).
    context_length: positional table rows (77); inputs may be shorter (the mask is causal, so trailing
      padding never changes earlier positions).
    width: D (512).
    layers: residual blocks (12).
    num_heads: heads (8).
    output_dim: E (1024).
    dtype: computation dtype.
  """
  vocab_size: int = VOCAB_SIZE
  context_length: int = CONTEXT_LENGTH
  width: int = 512
  layers: int = 12
  num_heads: int = 8
  output_dim: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids [N, L] int (SOT ... EOT, zero padding) -> text features [N, E] (not normalised)."""
    length = ids.shape[-1]
    if length > self.context_length:
      raise ValueError(f'{length} tokens exceed the context length {self.context_length}.')
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name='token_embedding')
    positions = self.param('positional_embedding', nn.initializers.normal(0.01),
                           (self.context_length, self.width), jnp.float32)
    x = (embed(ids) + positions[:length]).astype(self.dtype)
    causal = jnp.tril(jnp.ones((length, length), bool))
    x = Transformer(self.layers, self.num_heads, dtype=self.dtype, name='transformer')(x, causal)
    x = _layer_norm('ln_final')(x.astype(jnp.float32))
    projection = self.param('text_projection', nn.initializers.normal(self.width**-0.5),
                            (self.width, self.output_dim), jnp.float32)
    # End of text = the largest id (49407); argmax takes the first occurrence, like torch.argmax.
    pooled = jnp.take_along_axis(x, jnp.argmax(ids, axis=-1)[:, None, None], axis=1)[:, 0]
    return jnp.dot(pooled.astype(self.dtype), projection.astype(self.dtype))
