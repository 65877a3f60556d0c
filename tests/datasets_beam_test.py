"""The Apache Beam path (DirectRunner) writes the same examples, order and skip reports as the local path.

apache-beam 2.77 needs protobuf<7, Pillow<13 and pyarrow<26, so it usually lives in its own virtualenv
(`.venv-beam`, made by `bash launch/prepare_data.sh --beam ...`, or AVL_BEAM_PYTHON=/path/to/python). Where
apache_beam is importable the comparison runs in this process; otherwise
`test_beam_matches_local_in_the_beam_venv` runs it in the Beam virtualenv, and skips (saying how to create it)
where there is none.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = [("music/duet", "frames"), ("vggsound/duet", "video"), ("vgginstruments/multi", "video")]


def _beam_python() -> str | None:
  python = os.environ.get("AVL_BEAM_PYTHON") or str(REPO / ".venv-beam" / "bin" / "python")
  return python if os.path.exists(python) else None


def _same_records(a: dict, b: dict) -> bool:
  if a.keys() != b.keys():
    return False
  for key in a:
    values_a = a[key] if isinstance(a[key], list) else [a[key]]
    values_b = b[key] if isinstance(b[key], list) else [b[key]]
    if len(values_a) != len(values_b) or not all(np.array_equal(x, y) for x, y in zip(values_a, values_b)):
      return False
  return True


@pytest.mark.parametrize("name,layout", CASES)
def test_beam_matches_local_inprocess(tmp_path, name, layout):
  pytest.importorskip("apache_beam")
  dataset, variant = name.split("/")
  tree = fake_raw.make_tree(dataset, variant, str(tmp_path / "raw"), layout)
  local = fake_raw.build(name, tree.root, str(tmp_path / "local"))
  beam = fake_raw.build(name, tree.root, str(tmp_path / "beam"), beam_runner="DirectRunner")
  for split in ("train", "test"):
    local_records = fake_raw.read_split(name, str(tmp_path / "local"), split)
    beam_records = fake_raw.read_split(name, str(tmp_path / "beam"), split)
    assert [r["id"] for r in beam_records] == [r["id"] for r in local_records]
    assert len(local_records) == len(tree.expected[split])
    for a, b in zip(local_records, beam_records):
      assert _same_records(a, b), a["id"]
    reports = [builder_lib.read_report(os.path.join(b.data_dir, f"skipped_{split}.csv")) for b in (local, beam)]
    assert reports[0] == reports[1] and len(reports[0]) == len(tree.expected_skips[split])
    assert not os.path.exists(os.path.join(beam.data_dir, f"skipped_{split}.beam.csv"))
  assert beam.info.metadata["skipped"] == local.info.metadata["skipped"]


def test_beam_matches_local_in_the_beam_venv():
  if importlib.util.find_spec("apache_beam") is not None:
    pytest.skip("apache_beam is importable here: test_beam_matches_local_inprocess ran in this process")
  python = _beam_python()
  if python is None:
    pytest.skip("apache-beam is not installed in this environment and there is no Beam virtualenv at "
                f"{REPO / '.venv-beam'}: create it with `bash launch/prepare_data.sh --beam --demo vggsound duet "
                "/tmp/raw_demo` (or set AVL_BEAM_PYTHON), then rerun.")
  has_pytest = subprocess.run([python, "-c", "import pytest, apache_beam"], capture_output=True, check=False)
  assert has_pytest.returncode == 0, (
      f"the Beam virtualenv's python ({python}) cannot import pytest and apache_beam: install "
      "avl_jax[beam,test] into it (launch/test.sh does), then rerun.")
  result = subprocess.run(
      [python, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "inprocess"],
      cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
      env={k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST")})
  tail = (result.stdout + result.stderr)[-3000:]
  assert result.returncode == 0, tail
  assert f"{len(CASES)} passed" in result.stdout, tail


def test_prepare_data_script_beam_and_local_paths_agree(tmp_path):
  """`launch/prepare_data.sh --beam` (DirectRunner, in the Beam virtualenv) and the local path give the same
  dataset from the same raw tree (a 44.1 kHz config with fixed test partners)."""
  if importlib.util.find_spec("apache_beam") is not None:
    beam_python = sys.executable
  else:
    beam_python = _beam_python()
    if beam_python is None:
      pytest.skip("no apache-beam here and no Beam virtualenv at .venv-beam: create it with "
                  "`bash launch/prepare_data.sh --beam --demo vggsound duet /tmp/raw_demo`, then rerun.")

  def prepare(python: str, data_dir: str, *beam: str) -> str:
    env = dict(os.environ, AVL_SKIP_INSTALL="1", PATH=f"{pathlib.Path(python).parent}:{os.environ['PATH']}")
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "prepare_data.sh"), *beam, "--demo", "--set", "num_workers=1",
         "vgginstruments", "multi_44k", str(tmp_path / "raw"), data_dir],
        capture_output=True, text=True, env=env, timeout=400, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "vgginstruments/multi_44k ready in" in result.stdout
    return result.stdout

  prepare(sys.executable, str(tmp_path / "local"))
  assert "--beam_runner=DirectRunner" in prepare(beam_python, str(tmp_path / "beam"), "--beam")
  name = "vgginstruments/multi_44k"
  for split in ("train", "test"):
    local = fake_raw.read_split(name, str(tmp_path / "local"), split)
    beam = fake_raw.read_split(name, str(tmp_path / "beam"), split)
    assert local and [r["id"] for r in beam] == [r["id"] for r in local]
    assert all(_same_records(a, b) for a, b in zip(local, beam))
    assert all(int(r["sample_rate"]) == 44100 for r in local)
    reports = [builder_lib.read_report(str(tmp_path / d / name / "1.0.0" / f"skipped_{split}.csv"))
               for d in ("local", "beam")]
    assert reports[0] == reports[1]
