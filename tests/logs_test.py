"""The binaries' log filter: avl_jax INFO and every warning pass; other libraries' INFO only at verbosity >= 1."""
import logging as std_logging
import os

from absl import logging
import pytest

from avl_jax import logs


def record(path: str, level: int) -> std_logging.LogRecord:
  return std_logging.LogRecord("absl", level, path, 1, "message", None, None)


@pytest.fixture
def verbosity():
  before = logging.get_verbosity()
  yield logging.set_verbosity
  logging.set_verbosity(before)


def test_third_party_info_is_dropped_unless_verbose(verbosity):
  verbosity(logging.INFO)
  f = logs.ThirdPartyInfoFilter()
  orbax = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
  ours = os.path.join("repo", "avl_jax", "train.py")
  scalars = os.path.join("site-packages", "clu", "metric_writers", "logging_writer.py")
  assert not f.filter(record(orbax, std_logging.INFO))
  assert f.filter(record(orbax, std_logging.WARNING)) and f.filter(record(orbax, std_logging.ERROR))
  assert f.filter(record(ours, std_logging.INFO)) and f.filter(record(scalars, std_logging.INFO))
  verbosity(logging.DEBUG)  # --verbosity=1
  assert f.filter(record(orbax, std_logging.INFO))


def test_setup_is_idempotent():
  logs.setup()
  logs.setup()
  assert logging.get_absl_handler().filters.count(logs._FILTER) == 1  # pylint: disable=protected-access
