"""Test set-up shared by every test module.

Fakes 8 CPU devices so sharding code paths run on a laptop. The flag must be set before JAX initialises its
backends, i.e. before any test module imports jax.
"""
import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow (imported by tfds/clu) must not grab the GPU or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Many tests build the same tiny model in fresh jits (train, resume, evaluate): a persistent compilation cache
# turns every repeat compile into a disk read (XLA:CPU compiles are the slowest part of this suite).
jax.config.update("jax_compilation_cache_dir", os.environ.get("AVL_JAX_TEST_CACHE", "/tmp/avl_jax_test_jit_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# grain's multiprocess workers read absl flags; outside absl.app they must be marked parsed.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "tests" / "testdata"


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  """tests/testdata: the golden reference files (`avgn/`, `audioclip/`; tests/testdata/README.md)."""
  if not GOLDEN.is_dir():
    raise FileNotFoundError(f"Golden reference data not found at {GOLDEN} (part of the repository).")
  return GOLDEN


@pytest.fixture(scope="session")
def golden_weights_lib():
  """tests/golden_weights.py: the seeded weight recipes of the golden sets (`.AVGN`, `.AUDIOCLIP`)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("golden_weights", REPO_ROOT / "tests" / "golden_weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """synthetic_av/tiny built once per test process (a few seconds)."""
  from avl_jax import datasets  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  datasets.prepare("synthetic_av/tiny", str(data_dir))
  return str(data_dir)


@pytest.fixture
def tiny_config(tiny_data_dir):
  """configs/synthetic_av.py:tiny pointed at the tiny dataset, unlocked for test overrides."""
  from avl_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(str(REPO_ROOT / "configs" / "synthetic_av.py"), f"tiny,data_dir={tiny_data_dir}")
