r"""Converts PyTorch weights researchers already have into avl_jax variables checkpoints.

  python -m avl_jax.convert --format=avgn_torch --input=best.pth --output=weights/avgn_vgginstruments
  python -m avl_jax.convert --format=torchvision_resnet18 --input=resnet18-f37072fd.pth --output=weights/resnet18
  python -m avl_jax.convert --format=audioclip --input=AudioCLIP-Full-Training.pt --output=weights/audioclip
  python -m avl_jax.convert --format=tvsl --input=model_best.pth --output=weights/tvsl

Formats:
  avgn_torch            an official AVGN checkpoint (stoneMo/AVGN `train.py` saves `{'model': state_dict, ...}`;
                        a bare state dict and DDP `module.` keys work too). The model's hyperparameters
                        (classes, width D, depths, ResNet widths and blocks, MLP ratio) are read from the
                        tensor shapes; the number of heads cannot be and comes from --num_heads (official: 8).
                        The dead audio `han_encoder` branch is skipped with one log line; any other unknown,
                        missing or mis-shaped key is an error naming the key and both shapes.
  torchvision_resnet18  torchvision's ImageNet ResNet-18 (`resnet18-f37072fd.pth`, the IMAGENET1K_V1 weights,
                        from https://download.pytorch.org/models/resnet18-f37072fd.pth) -> the visual encoder
                        `imgnet` of AVGN / EZ-VSL. Training configs load it with `config.init_from`.
  audioclip             AudioCLIP release weights (github AndreyGuzhov/AudioCLIP, release v0.1):
                        `AudioCLIP-Full-Training.pt` / `AudioCLIP-Partial-Training.pt` (the whole model),
                        `CLIP.pt` (image + text towers, a state dict or a TorchScript archive) or `ESRNXFBSP.pt`
                        (audio tower) -> the variables of `avl_jax.models.audioclip.AudioCLIP` (a partial file
                        gives its part of the tree). Unknown, missing or mis-shaped keys are errors; the
                        recomputed `audio.window`, the empty `audio.fbsp.bias` and BatchNorm counters are dropped.
  tvsl                  a T-VSL training checkpoint (github enyac-group/T-VSL `main.py` saves `model_latest.pth`
                        and `model_best.pth` = `{'model': DDP state dict, 'optimizer': ..., ...}`; 896 entries:
                        AudioCLIP's 861 with their re-estimated BatchNorm statistics, plus the adapters, gates,
                        `fusion_proj` and `logit_scale_ml`) -> the variables of `avl_jax.models.tvsl.TVSL`
                        (released sizes). An AudioCLIP checkpoint gives only the `audioclip` subtree (merge it into
                        freshly initialised T-VSL variables with `tvsl.params.with_audioclip`). Strict like
                        `audioclip`. The class-text bank is not in the checkpoint: `tvsl.encode_text_bank`.

Input: a `.pth`/`.pt` file (needs torch: `pip install -e .[convert]`) or an `.npz` of {PyTorch name: array}
(no torch needed). Output: `{output}/variables/` (Orbax) and `{output}/avl_jax_variables.json` recording the
format, the source file and its SHA-256, and the model fields the weights fit. Use the output with
`python -m avl_jax.main ... --config.init_from={output}` (initialisation) or
`python -m avl_jax.evaluate ... --weights={output}` (evaluation without training).
"""
import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from avl_jax.convert import convert_lib  # noqa: E402


def define_flags() -> dict[str, flags.FlagHolder]:
  """The converter's flags, defined only when it runs as a binary (`python -m avl_jax.convert`): importing this
  module defines none, so it never collides with the flags of other binaries imported in the same process."""
  return {
      "format": flags.DEFINE_enum("format", None, convert_lib.FORMATS,
                                  "Layout of --input (see the module docstring)."),
      "input": flags.DEFINE_string("input", None, "The PyTorch checkpoint (.pth / .pt) or an .npz of named arrays."),
      "output": flags.DEFINE_string("output", None, "Directory to create (must not hold converted weights yet)."),
      "num_heads": flags.DEFINE_integer("num_heads", 8,
                                        "avgn_torch: attention heads (not recoverable from shapes)."),
      "unsafe_pickle": flags.DEFINE_bool(
          "unsafe_pickle", False, "Load a .pth with full pickle (torch.load(weights_only=False)) when the safe "
          "loader refuses it. Only for files you trust: unpickling can run arbitrary code."),
  }


def main(argv, *, options: dict[str, flags.FlagHolder]):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("format", "input", "output"):
    if options[name].value is None:
      raise app.UsageError(f"--{name} is required.")
  input_path, output_dir = options["input"].value, options["output"].value
  try:
    metadata = convert_lib.convert(options["format"].value, input_path, output_dir,
                                   num_heads=options["num_heads"].value,
                                   unsafe_pickle=options["unsafe_pickle"].value)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Converted {metadata['format']} {input_path} -> {os.path.abspath(output_dir)} "
        f"({metadata['num_parameters']:,} values; model fields {metadata['model']}).")


if __name__ == "__main__":
  app.run(functools.partial(main, options=define_flags()))
