"""AudioCLIP in Flax (audio, image and text towers; CLIP tokenizer), the frozen backbone of T-VSL.

  model = audioclip.AudioCLIP()
  variables = audioclip_weights.torch_state_dict_to_variables(state_dict)  # avl_jax.convert
  ids = audioclip.Tokenizer(bpe_path).tokenize(['dog barking'])
  outputs = model.apply(variables, audio=waveforms * 32768, image=images, text=ids)
"""
from avl_jax.models.audioclip.audio import ESResNeXtFBSP
from avl_jax.models.audioclip.image import ModifiedResNet
from avl_jax.models.audioclip.model import AudioCLIP
from avl_jax.models.audioclip.text import TextTransformer
from avl_jax.models.audioclip.tokenizer import Tokenizer
