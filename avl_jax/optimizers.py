"""Optimizer and learning-rate schedules from `config.optimizer` (fields documented in config_lib.base_config).

Adam as torch.optim.Adam (coupled L2 weight decay), optional global-norm clipping, frozen parameters by a
regex on their paths (`param_rules`). Schedules: 'constant' (official AVGN), 'cosine' (linear warm-up, then
cosine to 0) and 'cosine_tvsl' (the official T-VSL per-iteration cosine over epochs counted from 1).
"""
import jax.numpy as jnp
import ml_collections
import optax

from avl_jax import param_rules

SCHEDULES = ("constant", "cosine", "cosine_tvsl")  # config.optimizer.schedule


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  opt = config.optimizer
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
        decay_steps=max(config.num_train_steps, opt.warmup_steps + 1))
  if opt.schedule == "cosine_tvsl":
    # T-VSL's per-iteration cosine over epochs counted from 1 (docs/tvsl.md §6): lr = lr0 / 2 (1 + cos(pi e / E)),
    # e = 1 + step / steps_per_epoch in [1, E + 1), no warm-up.
    epochs = config.get("num_epochs") or opt.get("cosine_epochs")
    if not epochs:
      raise ValueError("config.optimizer.schedule='cosine_tvsl' counts epochs: set config.num_epochs (or "
                       "config.optimizer.cosine_epochs when training by steps).")
    steps_per_epoch = config.num_train_steps / epochs
    return lambda step: opt.learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * (1 + step / steps_per_epoch) / epochs))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; expected one of {list(SCHEDULES)}.")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam as torch.optim.Adam (coupled L2 weight decay), optional global-norm clipping."""
  opt = config.optimizer
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0:
    chain.append(optax.add_decayed_weights(opt.weight_decay))
  chain.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  chain.append(optax.scale_by_learning_rate(learning_rate_schedule(config)))
  # Parameters matching config.optimizer.frozen (a regex on parameter paths) get zero updates and no state.
  return param_rules.freeze(optax.chain(*chain), opt.get("frozen"))
