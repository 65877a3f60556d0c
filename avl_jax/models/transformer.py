"""Pre-norm ViT transformer block with a fused qkv projection (AVGN's AttnBlock, docs/avgn.md §3.1).

Axis letters: B batch, L tokens, N heads, K head width, D token width.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers


class Attention(nn.Module):
  """Multi-head self-attention with one fused `qkv` Linear(D -> 3D) and an output `proj`.

  The fused output feature f = s * D + n * K + k, s in {q, k, v}: [q | k | v], heads contiguous inside each
  (docs/avgn.md §15.5), which is the PyTorch layout of the converted checkpoints.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    batch, length, width = x.shape
    head_width = width // self.num_heads
    qkv = layers.dense(3 * width, name='qkv', dtype=self.dtype)(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_width)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Logits accumulated and softmaxed in float32, the weights cast back to the computation dtype.
    logits = jnp.einsum('blnk,bmnk->bnlm', query, key, preferred_element_type=jnp.float32) * head_width**-0.5
    weights = layers.softmax(logits, -1, self.dtype)
    attended = jnp.einsum('bnlm,bmnk->blnk', weights, value).reshape(batch, length, width)
    return layers.dense(width, name='proj', dtype=self.dtype)(attended)


class AttnBlock(nn.Module):
  """z <- z + DropPath(Attn(LN1(z))); z <- z + DropPath(MLP(LN2(z))), independent DropPath masks.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D.
    drop_path: stochastic-depth rate of both branches (train only; 'dropout' RNG stream).
    dtype: computation dtype (the attention logits and softmax are float32; LayerNorm statistics too).
  """
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:
    """tokens [B, L, D] -> [B, L, D]. `train` may be passed positionally (static argument 2 under nn.remat)."""
    width = tokens.shape[-1]
    drop_path = layers.DropPath(self.drop_path)
    attended = Attention(self.num_heads, dtype=self.dtype, name='attn')(
        layers.layer_norm(name='norm1', dtype=self.dtype)(tokens))
    tokens = tokens + drop_path(attended, train=train)
    mlp_out = layers.Mlp(int(width * self.mlp_ratio), dtype=self.dtype, name='mlp')(
        layers.layer_norm(name='norm2', dtype=self.dtype)(tokens))
    return tokens + drop_path(mlp_out, train=train)
