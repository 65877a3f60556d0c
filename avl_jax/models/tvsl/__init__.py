"""T-VSL (two-stage, as released), its single-stage ablation and AVGN on AudioCLIP encoders (docs/tvsl.md).

  model = tvsl.TVSL()                                  # official switches by default
  variables = tvsl_weights.torch_state_dict_to_variables(state_dict)   # avl_jax.convert
  ids = tvsl.text_bank.tokenize(Tokenizer(bpe_path), names)
  bank = tvsl.encode_text_bank(variables, ids)         # once; cache it (append rows for zero-shot classes)
  losses, outputs = model.apply(variables, canvas, waveform, bank, class_rows, train=False)
  maps = model.apply(variables, canvas, waveform, bank, class_rows, method='localize')   # [B, K, h, w]
  scores = model.postprocess(maps)['score']            # bicubic to the canvas, min-max, inversion
  tx = tvsl.optimizer(optax.adam(1e-2))               # only the adapters train
"""
from avl_jax.models.tvsl import postprocess
from avl_jax.models.tvsl import text_bank
from avl_jax.models.tvsl.avgn_audioclip import AVGNAudioCLIP
from avl_jax.models.tvsl.model import TVSL
from avl_jax.models.tvsl.params import count_params
from avl_jax.models.tvsl.params import optimizer
from avl_jax.models.tvsl.params import FROZEN_PARAMS
from avl_jax.models.tvsl.postprocess import postprocess_maps
from avl_jax.models.tvsl.single_stage import TVSLSingleStage
from avl_jax.models.tvsl.text_bank import encode_text_bank
