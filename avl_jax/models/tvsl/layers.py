"""T-VSL's trainable pieces and the arithmetic its heads share (docs/tvsl.md §3-§5).

Axis letters: B batch, K sources per sample, C classes (text-bank rows), L tokens, D width (1024),
G contrastive groups (devices), N items of a contrastive problem.

Two normalisations appear in the official code and are kept apart on purpose (docs/tvsl.md §13.8): `normalize`
(x / ||x||, no epsilon) for tokens and embeddings, `normalize_eps` (PyTorch F.normalize, eps 1e-12) for the
conditioning masks.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from avl_jax.models import layers
from avl_jax.models.audioclip import model as audioclip_model

# (MLP, gate) names of the six gated adapters, as in the official state dict.
ADAPTERS = (
    ('visual_proj', 'vp_w'),
    ('audio_proj', 'ap_w'),
    ('img_cls_proj', 'icp_w'),
    ('aud_cls_proj', 'acp_w'),
    ('aud_img_proj', 'aip_w'),
    ('img_aud_proj', 'iap_w'),
)
FUSION = 'fusion_proj'
STAGE1_SCALE = 'logit_scale_ml'
LOG_100 = math.log(100.0)
# Sequential indices of the two Linears of every official MLP (index 1 is the GELU).
MLP_LAYERS = (('fc1', '0'), ('fc2', '2'))
# Per-class outputs of `TVSLBase.condition` that the heads return.
CLASS_FEATURES = ('img_cls_feat', 'aud_cls_feat', 'aud_query', 'img_aud_feat')
NEG_INF = -1e30  # Masks logits of padded contrastive items (finite: a fully masked row stays NaN-free).

normalize = audioclip_model.normalize
temperature = audioclip_model.temperature
normalize_eps = layers.l2_normalize
# PyTorch's default Linear weight init U(+-1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class AdapterMLP(nn.Module):
  """`nn.Sequential(Linear(D, hidden), GELU(), Linear(hidden, out))` with PyTorch's default init.

  Attributes:
    hidden: width of fc1 (official: 2048).
    out_features: width of fc2 (default: the input width).
  """
  hidden: int = 2048
  out_features: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> [..., out_features or D] (float32)."""
    out_features = self.out_features or x.shape[-1]
    h = nn.Dense(self.hidden, kernel_init=torch_linear_kernel_init,
                 bias_init=layers.torch_default_bias_init(x.shape[-1]), name='fc1')(x)
    h = layers.gelu(h)  # Exact erf GELU, nn.GELU's default.
    return nn.Dense(out_features, kernel_init=torch_linear_kernel_init,
                    bias_init=layers.torch_default_bias_init(self.hidden), name='fc2')(h)


def gated(gate: jax.Array, mlp: AdapterMLP, x: jax.Array) -> jax.Array:
  """The official adapter G(x) = w x + (1 - w) MLP(x) with an unconstrained scalar gate w (init 1)."""
  return gate * x + (1.0 - gate) * mlp(x)


def token_mask(tokens: jax.Array, text: jax.Array) -> jax.Array:
  """Conditioning weights m = F.normalize(tokens . t, over the tokens): [B, L, D], [B, K, D] -> [B, K, L].

  Cosines (tokens and t are unit vectors) scaled to unit L2 norm over the L tokens; they can be negative.
  """
  return normalize_eps(jnp.einsum('bld,bkd->bkl', tokens, text), axis=-1)


def masked_mean(weights: jax.Array, tokens: jax.Array) -> jax.Array:
  """Token mean of the conditioned tokens mean_l(m_l * x_l): [B, K, L], [B, L, D] -> [B, K, D]."""
  return jnp.einsum('bkl,bld->bkd', weights, tokens) / tokens.shape[1]


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted mean CE: logits [..., C], int targets [...], weights [...] (0 = padding) -> scalar."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.clip(targets, 0, logits.shape[-1] - 1)[..., None], axis=-1)[..., 0]
  return -jnp.sum(picked * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """PyTorch BCEWithLogitsLoss (mean over all entries) in its stable log-sigmoid form."""
  return -jnp.mean(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def _group_info_nce(logits: jax.Array, valid: jax.Array) -> jax.Array:
  """½[CE(l, diag) + CE(l^T, diag)] over the valid items of one problem: logits [N, N], valid [N]."""
  pair = valid[:, None] & valid[None, :]
  logits = jnp.where(pair, logits, NEG_INF)
  weights = valid.astype(logits.dtype)
  rows = jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  cols = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  count = jnp.maximum(jnp.sum(weights), 1.0)
  return -0.5 * (jnp.sum(rows * weights) + jnp.sum(cols * weights)) / count


def contrastive_loss(queries: jax.Array, keys: jax.Array, valid: jax.Array, scale: jax.Array,
                     groups: int = 1) -> tuple[jax.Array, jax.Array]:
  """The official `contrastive_loss`: symmetric InfoNCE between audio queries and visual features.

  Items are source-major within each group, as the official `torch.cat([q_1, q_2])` of a per-device batch:
  row k * (B / G) + b of a group is source k of its sample b. groups = G splits the batch into G consecutive
  equal parts, each its own problem (per-device negatives); the loss is the mean over groups (DDP averages
  the gradients of the devices).

  Args:
    queries: [B, K, D] unit audio queries q_k.
    keys: [B, K, D] unit visual features v_k^av.
    valid: [B, K] bool; padded sources are neither positives nor negatives.
    scale: the temperature (clamp(exp(logit_scale_ai), 1, 100)).
    groups: contrastive groups G (must divide B).

  Returns:
    (loss scalar, logits [G, K B/G, K B/G]).
  """
  batch, num_sources, width = queries.shape
  if groups < 1 or batch % groups:
    raise ValueError(f'loss_groups={groups} must divide the batch size {batch}.')

  def items(x):  # [B, K, ...] -> [G, K * B/G, ...], source-major inside each group.
    x = x.reshape((groups, batch // groups, num_sources) + x.shape[2:])
    return jnp.swapaxes(x, 1, 2).reshape((groups, num_sources * (batch // groups)) + x.shape[3:])

  logits = scale * jnp.einsum('gnd,gmd->gnm', items(queries), items(keys))
  losses = jax.vmap(_group_info_nce)(logits, items(valid))
  return jnp.mean(losses), logits
