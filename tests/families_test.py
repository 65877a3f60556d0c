"""Model families: the registry, and generic train / eval files that never branch on a model or family."""
import ast
import os
import re

import pytest

from avl_jax import config_lib
from avl_jax import families
from avl_jax import models
from avl_jax.recipes import tvsl as tvsl_recipe

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERIC_FILES = ("train.py", "eval_lib.py", "evaluate.py", "input_pipeline.py", "checkpointing.py",
                 "evaluation/scoring.py", "evaluation/writers.py", "evaluation/gt.py", "weights.py",
                 "localize.py", "localize_lib.py", "localize_clips.py", "localize_model.py", "localize_outputs.py",
                 "localize_synthetic.py", "resampling.py", "pipeline/__init__.py", "pipeline/data_source.py",
                 "pipeline/data_config.py", "pipeline/image_ops.py", "pipeline/audio_ops.py",
                 "pipeline/train_transforms.py", "pipeline/global_order.py", "pipeline/eval_transforms.py",
                 "config_lib.py", "cli.py", "main.py", "sweep.py", "sweep_lib.py", "sharding.py", "param_rules.py",
                 "audio.py", "visualize.py", "prepare.py", "logs.py", "resolve.py")
MODEL_WORDS = re.compile(r"avgn|ezvsl|tvsl|t-vsl|audioclip", re.IGNORECASE)
ALLOWED: dict[str, str] = {}  # file -> a word it may contain (none today)


def code_words(source: str) -> list[tuple[int, str]]:
  """(line, identifier or string literal) of the code: names, attributes, arguments, imports, strings; not
  comments or docstrings (which may cite the papers)."""
  tree = ast.parse(source)
  docstrings = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        docstrings.add(id(first.value))
  words = []
  for node in ast.walk(tree):
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Name):
      words.append((line, node.id))
    elif isinstance(node, ast.Attribute):
      words.append((line, node.attr))
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      words.append((line, node.name))
    elif isinstance(node, ast.arg):
      words.append((line, node.arg))
    elif isinstance(node, ast.keyword) and node.arg:
      words.append((line, node.arg))
    elif isinstance(node, ast.alias):
      words.append((line, node.name))
    elif isinstance(node, ast.ImportFrom) and node.module:
      words.append((line, node.module))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
      words.append((line, node.value))
  return words


def model_name_comparisons(source: str) -> list[int]:
  """Lines comparing `model_name` with anything (==, !=, in)."""
  lines = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Compare):
      sides = [node.left] + list(node.comparators)
      if any(isinstance(s, ast.Attribute) and s.attr == "model_name" for s in sides):
        lines.append(node.lineno)
  return lines


@pytest.mark.parametrize("name", GENERIC_FILES)
def test_generic_files_name_no_model_or_family(name):
  with open(os.path.join(REPO_ROOT, "avl_jax", name)) as f:
    source = f.read()
  allowed = ALLOWED.get(name)
  found = [(line, w) for line, w in code_words(source)
           if MODEL_WORDS.search(w.replace(allowed, "") if allowed else w)]
  assert not found, f"avl_jax/{name} names a model or family (move it into avl_jax/families/): {found}"
  assert not model_name_comparisons(source), f"avl_jax/{name} compares config.model_name"


def test_the_grep_finds_what_it_should():
  source = ('"""AVGN in a docstring is fine."""\n# so is T-VSL in a comment\n'
            'if config.model_name == "tvsl":\n  x = tvsl_bank.rows\n')
  words = [w for _, w in code_words(source) if MODEL_WORDS.search(w)]
  assert sorted(words) == ["tvsl", "tvsl_bank"]
  assert model_name_comparisons(source) == [3]


def test_every_model_has_exactly_one_family():
  assert set(families.BY_MODEL) == set(models.MODELS)
  assert sum(len(f.model_names) for f in families.FAMILIES) == len(models.MODELS)
  with pytest.raises(ValueError, match="valid names"):
    families.get("avgnn")


@pytest.mark.parametrize("model_name", sorted(models.MODELS))
def test_family_dummy_inputs_initialise_the_model(model_name):
  """The family's dummy inputs are what its model's __call__ takes (shapes only: nothing is computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  if model_name in ("avgn", "ezvsl"):
    config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", "synthetic_av.py"),
                                    f"tiny,model={model_name}")
  else:  # the models on the AudioCLIP towers
    config = tvsl_recipe.paper_config("vggsound_duet", f"runlocal,model={model_name}")
  assert config.model_name == model_name
  family = families.of(config)
  model = family.create_model(config)
  inputs = family.dummy_inputs(config, 2)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs, train=False))
  assert "params" in variables and jax.tree.leaves(variables["params"])


def test_the_class_ablation_runs_for_models_that_map_the_classes_they_are_given():
  tiny = os.path.join(REPO_ROOT, "configs", "synthetic_av.py")
  for model_name, expected in (("avgn", True), ("ezvsl", False)):  # EZ-VSL's one map ignores the class
    config = config_lib.load_config(tiny, f"tiny,model={model_name}")
    assert families.of(config).maps_given_classes(config) is expected
  for model_name in ("tvsl", "avgn_audioclip"):
    config = tvsl_recipe.paper_config("vggsound_duet", f"runlocal,model={model_name}")
    assert families.of(config).maps_given_classes(config)
    config.model.class_source = "predicted"  # the model's own classes: nothing to swap
    assert not families.of(config).maps_given_classes(config)


LOCALIZE_METHODS = ("localize_vocabulary", "localize_all_classes", "localize_postprocess", "localize_fields")


def test_every_family_implements_localization():
  for family in families.FAMILIES:
    for name in LOCALIZE_METHODS:
      assert getattr(type(family), name) is not getattr(families.Family, name), f"{family.name} lacks {name}"


@pytest.mark.parametrize("model_name", ["avgn", "ezvsl"])
def test_localize_methods_of_a_class_and_a_class_agnostic_model(model_name, tmp_path):
  """The vocabulary, the maps and scores of every class (shapes only) and the post-processed maps."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from avl_jax.families import base  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", "synthetic_av.py"),
                                  f"tiny,model={model_name},data_dir={tmp_path}")
  family = families.of(config)
  config = family.localize_config(ml_collections.ConfigDict(config.to_dict()), ["red_solid_circle"])
  names = family.localize_vocabulary(config)
  model = family.create_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **family.dummy_inputs(config, 2), train=False))
  ds = config.dataset
  images = jax.ShapeDtypeStruct((3, ds.image_size, ds.image_size, 3), jnp.float32)
  waveforms = jax.ShapeDtypeStruct((3, base.num_samples(config)), jnp.float32)
  maps, scores = jax.eval_shape(
      lambda v, i, w: family.localize_all_classes(config, model, v, {}, i, w, len(names)), variables, images,
      waveforms)
  assert maps.shape[:2] == (3, len(names))
  if family.localize_class_agnostic(config):
    assert model_name == "ezvsl" and names == [base.AGNOSTIC_CLASS] and scores is None
  else:
    assert len(names) == ds.num_classes and names[0] == "red_solid_circle" and scores.shape == (3, len(names))
  raw = np.random.default_rng(0).normal(size=(2,) + maps.shape[2:]).astype(np.float32)
  display, values = family.localize_postprocess(config, raw, (224, 224))
  assert display.shape == values.shape == (2, 224, 224) and 0 <= display.min() and display.max() <= 1
  assert set(family.localize_fields(config)) == {"kind", "peak_value"}


def test_families_own_their_config_fields():
  """base_config holds every family's fields (config.text, config.eval.tvsl_*) and the default model's block;
  two families defining one field is an error, not a silent overwrite."""
  config = config_lib.base_config()
  for family in families.FAMILIES:
    for group, fields in family.config_fields().items():
      assert set(fields) <= set(config[group]), (family.name, group)
  assert config.model_name == families.DEFAULT_MODEL
  assert config.model.to_dict() == families.get(families.DEFAULT_MODEL).default_model_config().to_dict()
  assert families.renamed_fields()["eval.avgn_duet_gt_bug"] == "eval.official_duet_gt_bug"
  clash = type("Clash", (families.Family,), {"name": "clash", "config_fields": lambda self: {"eval": {"protocol": 1}}})
  original = families.FAMILIES
  families.FAMILIES = original + (clash(),)
  try:
    with pytest.raises(ValueError, match="config.eval.protocol: defined twice"):
      config_lib.base_config()
  finally:
    families.FAMILIES = original
