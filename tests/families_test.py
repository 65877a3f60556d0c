"""Model families: the registry, and generic train / eval files that never branch on a model or family."""
import ast
import os
import re

import pytest

from avl_jax import config_lib
from avl_jax import families
from avl_jax import models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERIC_FILES = ("train.py", "eval_lib.py", "evaluate.py", "input_pipeline.py", "checkpointing.py",
                 "evaluation/scoring.py", "evaluation/writers.py", "evaluation/gt.py")
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
    config = config_lib.tvsl_paper_config("vggsound_duet", f"runlocal,model={model_name}")
  assert config.model_name == model_name
  family = families.of(config)
  model = family.create_model(config)
  inputs = family.dummy_inputs(config, 2)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs, train=False))
  assert "params" in variables and jax.tree.leaves(variables["params"])
