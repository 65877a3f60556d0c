"""The AVGN family: class-token models scored by the official AVGN protocol (docs/avgn.md, docs/metrics.md).

Models: `avgn` (AVGN), `ezvsl` (EZ-VSL, class-agnostic maps), `avgn_audioclip` (AVGN's grouping head on the
frozen AudioCLIP towers). They take (image [B, H, W, 3], waveform [B, N], visual_class [B], audio_label [B, C])
for training and `localize(image, waveform, class_ids [B, S])` -> raw logits [B, S, h, w]; the log spectrogram
(or the towers' own front end) is computed inside the model.

Evaluation: oracle classes (or, with config.model.class_source='predicted', the audio classifier's top-K
classes, each GT source scored with its best distinct predicted map), each source localized on its own frame where the test set stores one
(`source_image`), logits scored in the fixed range +-1/tau with the median binarisation of the official cIoU.

Localization of a user's clip (`localize_*`): every dataset class's map with the audio classifier's
probabilities (sigmoid of `fc_prob_a`); EZ-VSL maps one class-agnostic `base.AGNOSTIC_CLASS`. Peaks are read on
the official fixed-range score (logit + 1/tau) / (2/tau) (0.5 = logit 0), drawn min-max normalised.
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avl_jax import models
from avl_jax.evaluation import scoring
from avl_jax.evaluation import writers
from avl_jax.families import base
from avl_jax.metrics import postprocess
from avl_jax.models import avgn as avgn_model
from avl_jax.pipeline import data_source

# Frames each model expects (config.dataset.image_norm): the AudioCLIP towers read CLIP-normalised frames.
IMAGE_NORM = {"avgn": None, "ezvsl": None, "avgn_audioclip": "clip"}


class AVGNFamily(base.Family):
  name = "avgn"
  model_names = tuple(IMAGE_NORM)

  def default_model_config(self) -> ml_collections.ConfigDict:
    """config.model of every config (`config_lib.base_config`): AVGN at paper scale (docs/avgn.md §9)."""
    return ml_collections.ConfigDict(dict(
        resnet_width=64,           # ResNet-18 base width (64 in the paper); both encoders
        resnet_blocks=(2, 2, 2, 2),
        dim=512,                   # token width D
        depth_vis=3, depth_aud=3,  # AttnBlocks per ModalityTrans
        num_heads=8,
        mlp_ratio=4.0,
        drop_path=0.1,
        tau=postprocess.OFFICIAL_TAU,  # contrastive temperature (also the fixed-range map normalisation)
        attn_assign="soft",        # 'soft' (paper README) | 'hard' (Gumbel straight-through)
        # Official-behaviour switches (docs/avgn.md §2.3, §8). The official DDP run used per-GPU negatives and
        # per-GPU BatchNorm statistics; 1 = the whole global batch (our default, device-count independent),
        # k = split the global batch into k groups, e.g. the official run's GPU count.
        loss_groups=1,             # contrastive negatives per group of the batch
        bn_groups=1,               # BatchNorm batch statistics per group of the batch (1 = SyncBN)
        dtype="float32",           # compute dtype: 'bfloat16' keeps params, BatchNorm statistics, softmaxes,
                                   # the audio front end, losses and maps in float32
        remat=False,               # rematerialise ResNet / attention / grouping blocks in the backward pass
    ))

  def renamed_fields(self):
    return {"eval.avgn_duet_gt_bug": "eval.official_duet_gt_bug"}

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    norm = IMAGE_NORM[config.model_name]
    if norm and config.dataset.image_norm != norm:
      raise ValueError(f"config.dataset.image_norm={config.dataset.image_norm!r}: {config.model_name} reads "
                       f"{norm!r}-normalised frames (set --config.dataset.image_norm={norm}).")

  def tau(self, config: ml_collections.ConfigDict) -> float:
    """The model's temperature: config.model.tau, else the model's own default."""
    return float(self.field(config, "tau"))

  def dummy_inputs(self, config: ml_collections.ConfigDict, batch: int) -> dict[str, jax.Array]:
    ds = config.dataset
    return dict(image=jnp.zeros((batch, ds.image_size, ds.image_size, 3), jnp.float32),
                audio=jnp.zeros((batch, base.num_samples(config)), jnp.float32),
                visual_class=jnp.zeros((batch,), jnp.int32),
                audio_label=jnp.zeros((batch, ds.num_classes), jnp.float32))

  def train_apply(self, model, variables, consts, batch, rngs):
    del consts
    return model.apply(variables, batch["image"], batch["waveform"], batch["visual_class"], batch["audio_label"],
                       train=True, rngs=rngs, mutable=["batch_stats"])

  def has_audio_classifier(self, config: ml_collections.ConfigDict) -> bool:
    """AVGN and its AudioCLIP variant score classes from the audio; EZ-VSL maps one class-agnostic map."""
    return issubclass(models.MODELS[config.model_name], avgn_model.AVGN)

  def predicted(self, config: ml_collections.ConfigDict) -> bool:
    return self.has_audio_classifier(config) and self.field(config, "class_source") == "predicted"

  def maps_given_classes(self, config: ml_collections.ConfigDict) -> bool:
    return self.has_audio_classifier(config) and not self.predicted(config)

  def localize(self, config, model, variables, consts, image, waveform, class_ids):
    del consts
    if not self.has_audio_classifier(config):  # EZ-VSL: one class-agnostic map
      return {"maps": model.apply(variables, image, waveform, jnp.maximum(class_ids, 0), train=False,
                                  method=model.localize)}
    maps, classes = model.apply(variables, image, waveform, class_ids, train=False, return_classes=True,
                                method=model.localize)
    out = {"maps": maps, "class_scores": classes["class_scores"]}
    if self.predicted(config):
      out.update(pred_rows=classes["class_ids"], pred_valid=classes["valid"], gt_rows=class_ids)
    return out

  def eval_views(self, config, batch, partner_frames):
    del config, partner_frames
    if "source_image" in batch:  # each source on its own frame with the shared mixture (official validate_multi)
      views = [(batch["source_image"][:, s], s) for s in range(batch["source_image"].shape[1])]
    else:
      views = [(batch["image"], None)]
    return base.EvalViews(images=views, frames=batch["image_uint8"])

  def scoring_inputs(self, config, pred, example_idx, source_idx, gt, nbox):
    tau = self.tau(config)
    if not self.predicted(config):
      return base.ScoringInputs(raw_maps=pred["maps"][example_idx, source_idx], gt=gt, map_range="logits", tau=tau)
    maps, unmatched, extra = scoring.match_predicted(pred, example_idx, source_idx, gt, nbox,
                                                     dict(map_range="logits", tau=tau))
    maps[unmatched] = -1.0 / tau  # a GT source without a predicted map: the lowest logit everywhere
    return base.ScoringInputs(raw_maps=maps, gt=gt, map_range="logits", tau=tau, extra=extra)

  def result_fields(self, config):
    fields = {"map_range": "logits", "tau": self.tau(config)}
    if self.has_audio_classifier(config):
      fields["class_source"] = self.field(config, "class_source")
    return fields

  def draw(self, path: str, config, pred: dict[str, Any], n: int) -> None:
    predicted = "pred_rows" in pred  # panel s shows the s-th predicted class, every GT box on each panel
    classes = np.where(pred["pred_valid"], pred["pred_rows"], -1) if predicted else pred["source_class"]
    writers.write_heatmaps(path, pred["image_uint8"][:n], pred["maps"][:n], pred["boxes"][:n],
                           pred["box_source"][:n], classes[:n], self.tau(config),
                           class_names=data_source.dataset_class_names(config),
                           every_box_on_every_panel=predicted)

  # ---------------------------------------------------------------------------------------------- localization
  def localize_vocabulary(self, config):
    if not self.has_audio_classifier(config):
      return [base.AGNOSTIC_CLASS]
    return base.dataset_vocabulary(config)

  def localize_class_agnostic(self, config):
    return not self.has_audio_classifier(config)

  def localize_all_classes(self, config, model, variables, consts, images, waveforms, num_classes):
    del consts
    ids = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (images.shape[0], num_classes))
    if not self.has_audio_classifier(config):  # EZ-VSL: its one map (the class id is ignored)
      return model.apply(variables, images, waveforms, ids[:, :1] * 0, train=False, method=model.localize), None
    maps, classes = model.apply(variables, images, waveforms, ids, train=False, return_classes=True,
                                method=model.localize)
    return maps, jax.nn.sigmoid(classes["class_scores"])

  def localize_postprocess(self, config, raw_maps, size):
    """Bicubic to `size`; value: the official fixed-range score (logit + 1/tau) / (2/tau); display: its min-max."""
    values = postprocess.avgn_scores(postprocess.upsample_to(raw_maps, size), self.tau(config))
    return postprocess.minmax_normalize(values), values

  def localize_fields(self, config):
    return {"kind": "avgn" if self.has_audio_classifier(config) else "agnostic",
            "peak_value": "avgn_fixed_range_score"}


FAMILY = AVGNFamily()
