"""A readable log for the binaries: avl_jax's own INFO lines, other libraries' only at --verbosity >= 1.

Orbax, TFDS, clu's checkpoint helpers and grain log hundreds of INFO lines per run through absl (a tiny
20-step demo: 493 INFO lines, ~450 of them Orbax internals). `setup()` installs a filter on absl's handler
that keeps, below WARNING, only records from avl_jax itself and clu's metric and progress writers (the
scalars and steps/s); warnings and errors of every library always pass. `--verbosity=1` (absl's `-v 1`)
shows everything, as before.
"""
import logging as std_logging
import os

from absl import logging

_OWN = os.sep + "avl_jax" + os.sep
# Third-party INFO lines worth keeping: the metric writers' scalars and the progress reports.
_KEEP = (os.path.join("clu", "metric_writers") + os.sep, os.path.join("clu", "periodic_actions.py"))


class ThirdPartyInfoFilter(std_logging.Filter):
  """Drops INFO (and finer) records of other libraries unless absl's verbosity is >= 1."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
      return True
    path = record.pathname or ""
    return _OWN in path or any(k in path for k in _KEEP)


_FILTER = ThirdPartyInfoFilter()


def setup() -> None:
  """Installs the filter on absl's handler (idempotent); call at the start of a binary's main."""
  handler = logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
