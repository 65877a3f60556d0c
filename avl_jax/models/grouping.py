"""GroupViT-style grouping of input tokens into class tokens (AVGN's GroupingBlock, docs/avgn.md §3.2).

Axis letters: B batch, L input tokens, C class (group) tokens, N heads, K head width, D token width.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers


class CrossAttention(nn.Module):
  """Multi-head attention of queries over separate keys/values: `q_proj`, `k_proj`, `v_proj`, `proj`."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array) -> jax.Array:
    """queries [B, C, D], keys (also the values) [B, L, D] -> [B, C, D]."""
    batch, num_queries, width = queries.shape
    head_width = width // self.num_heads

    def split_heads(x: jax.Array) -> jax.Array:
      return x.reshape(x.shape[0], x.shape[1], self.num_heads, head_width)

    query = split_heads(layers.dense(width, name='q_proj', dtype=self.dtype)(queries))
    key = split_heads(layers.dense(width, name='k_proj', dtype=self.dtype)(keys))
    value = split_heads(layers.dense(width, name='v_proj', dtype=self.dtype)(keys))
    logits = jnp.einsum('bcnk,blnk->bncl', query, key, preferred_element_type=jnp.float32) * head_width**-0.5
    weights = layers.softmax(logits, -1, self.dtype)
    attended = jnp.einsum('bncl,blnk->bcnk', weights, value).reshape(batch, num_queries, width)
    return layers.dense(width, name='proj', dtype=self.dtype)(attended)


class CrossAttnBlock(nn.Module):
  """Post-norm cross-attention block (GroupViT `post_norm=True`): no norm on queries or keys.

  g <- g + Attn(g, x); g <- g + MLP(LN2(g)); g <- LN_post(g). No DropPath.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array) -> jax.Array:
    """queries [B, C, D], keys [B, L, D] -> [B, C, D]."""
    width = queries.shape[-1]
    tokens = queries + CrossAttention(self.num_heads, dtype=self.dtype, name='attn')(queries, keys)
    tokens = tokens + layers.Mlp(int(width * self.mlp_ratio), dtype=self.dtype, name='mlp')(
        layers.layer_norm(name='norm2', dtype=self.dtype)(tokens))
    return layers.layer_norm(name='norm_post', dtype=self.dtype)(tokens)


class AssignAttention(nn.Module):
  """Assigns each input token to the class tokens (one head, normalised over the class axis).

  raw[b, c, l] = q(g)[b, c] . k(x)[b, l] / sqrt(D); A = softmax over c (soft), or a straight-through one-hot
  (hard: Gumbel noise in train from the 'gumbel' RNG stream, plain argmax in eval);
  A_hat = A / (sum_l A + 1); out = proj(A_hat @ v(x)). Sown to 'intermediates': `assign_soft` [B, C, L],
  the softmax over c, and `assignment` [B, C, L], the A used (= assign_soft when soft).

  Attributes:
    hard: straight-through hard assignment instead of the soft one.
    gumbel_tau: Gumbel-softmax temperature (train, hard only).
    dtype: computation dtype of the projections (the assignment itself is float32, also sown as float32).
  """
  hard: bool = False
  gumbel_tau: float = 1.0
  dtype: Any = jnp.float32

  def _straight_through_one_hot(self, soft: jax.Array) -> jax.Array:
    """Forward: one-hot of the argmax over c; backward: the gradient of `soft`."""
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=1), soft.shape[1], axis=1, dtype=soft.dtype)
    return one_hot - jax.lax.stop_gradient(soft) + soft

  @nn.compact
  def __call__(self, class_tokens: jax.Array, tokens: jax.Array, *, train: bool) -> jax.Array:
    """class_tokens [B, C, D], tokens [B, L, D] -> grouped features [B, C, D]."""
    width = class_tokens.shape[-1]
    query = layers.dense(width, name='q_proj', dtype=self.dtype)(class_tokens)
    key = layers.dense(width, name='k_proj', dtype=self.dtype)(tokens)
    value = layers.dense(width, name='v_proj', dtype=self.dtype)(tokens)
    # The assignment (softmax over c, Gumbel noise, one-hot, renormalisation) is computed in float32.
    raw = jnp.einsum('bcd,bld->bcl', query, key, preferred_element_type=jnp.float32) * width**-0.5
    soft = jax.nn.softmax(raw, axis=1)
    self.sow('intermediates', 'assign_soft', soft)
    if not self.hard:
      assignment = soft
    elif train:
      noise = jax.random.gumbel(self.make_rng('gumbel'), raw.shape, raw.dtype)
      assignment = self._straight_through_one_hot(jax.nn.softmax((raw + noise) / self.gumbel_tau, axis=1))
    else:
      assignment = self._straight_through_one_hot(soft)
    self.sow('intermediates', 'assignment', assignment)
    # assign_eps = 1: a class token that receives little mass stays small instead of being renormalised.
    assignment = assignment / (jnp.sum(assignment, axis=-1, keepdims=True) + 1.0)
    grouped = jnp.einsum('bcl,bld->bcd', assignment.astype(self.dtype), value)
    return layers.dense(width, name='proj', dtype=self.dtype)(grouped)


class GroupingBlock(nn.Module):
  """GroupViT GroupingBlock with as many output groups as class tokens (C).

  g <- LN_tokens(g); x <- LN_x(x); g <- LN_post_tokens(MLP over the token axis C (hidden 0.5 D)(g));
  g <- CrossAttnBlock(g, x); h = Assign(g, x) + g; out = h + MLP_channels(LN_new(h)).

  Attributes:
    num_heads: heads of the pre-assignment cross attention.
    mlp_ratio: hidden / D of the channel MLPs.
    token_mlp_ratio: hidden / D of the token-axis MLP (0.5 in AVGN).
    hard: hard (Gumbel, straight-through) assignment.
    dtype: computation dtype (attention / assignment softmaxes and LayerNorm statistics stay float32).
  """
  num_heads: int
  mlp_ratio: float = 4.0
  token_mlp_ratio: float = 0.5
  hard: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, class_tokens: jax.Array, train: bool) -> jax.Array:
    """tokens [B, L, D], class_tokens [B, C, D] -> grouped class features [B, C, D].

    `train` may be passed positionally (static argument 3 under nn.remat).
    """
    width = class_tokens.shape[-1]
    num_classes = class_tokens.shape[1]
    class_tokens = layers.layer_norm(name='norm_tokens', dtype=self.dtype)(class_tokens)
    tokens = layers.layer_norm(name='norm_x', dtype=self.dtype)(tokens)
    # The token MLP mixes the C class tokens (acts on the token axis): weights (C, 0.5 D) and (0.5 D, C).
    token_mixer = layers.Mlp(int(width * self.token_mlp_ratio), num_classes, dtype=self.dtype,
                             name='mlp_inter')
    projected = jnp.swapaxes(token_mixer(jnp.swapaxes(class_tokens, 1, 2)), 1, 2)
    projected = layers.layer_norm(name='norm_post_tokens', dtype=self.dtype)(projected)
    projected = CrossAttnBlock(self.num_heads, self.mlp_ratio, dtype=self.dtype,
                               name='pre_assign_attn')(projected, tokens)
    grouped = AssignAttention(hard=self.hard, dtype=self.dtype, name='assign')(
        projected, tokens, train=train)
    grouped = grouped + projected
    channel_mlp = layers.Mlp(int(width * self.mlp_ratio), dtype=self.dtype, name='mlp_channels')
    return grouped + channel_mlp(layers.layer_norm(name='norm_new_x', dtype=self.dtype)(grouped))
