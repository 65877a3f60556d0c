"""The official metadata files (lists, csv, json) of the real datasets: where they come from and how to read them.

The official files of stoneMo/AVGN (Apache-2.0) are bundled in avl_jax/datasets/metadata/ (see its README for
the attribution and license). A file of the same name in the manual directory (`<manual_dir>/metadata/NAME` or
`<manual_dir>/NAME`) overrides the bundled copy; files that are not bundled (the VGGSound train lists) must
be there. Formats: docs/datasets.md.
"""
import csv
import dataclasses
import hashlib
import io
import json
import pathlib
import re
from typing import Any

from etils import epath

BUNDLED_DIR = pathlib.Path(__file__).resolve().parent / "metadata"


@dataclasses.dataclass(frozen=True)
class MetadataFile:
  """A metadata file that was found: its path and where it came from ('manual' or 'bundled')."""
  name: str
  path: str
  origin: str

  def provenance(self) -> dict[str, str]:
    """{'path', 'origin', 'sha256'}: recorded in the prepared dataset's metadata."""
    digest = hashlib.sha256(epath.Path(self.path).read_bytes()).hexdigest()
    return {"path": self.path, "origin": self.origin, "sha256": digest}


def find(name: str, manual_dir: str | None, *, bundled: bool = True) -> MetadataFile | None:
  """The user's copy of metadata file `name` in the manual dir, else the bundled one, else None."""
  if manual_dir:
    root = epath.Path(manual_dir)
    for candidate in (root / "metadata" / name, root / name):
      if candidate.exists():
        return MetadataFile(name, str(candidate), "manual")
  if bundled and (BUNDLED_DIR / name).exists():
    return MetadataFile(name, str(BUNDLED_DIR / name), "bundled")
  return None


def find_first(names: tuple[str, ...], manual_dir: str | None, *, bundled: bool = True) -> MetadataFile | None:
  """`find` for the first of several accepted names that exists."""
  for name in names:
    found = find(name, manual_dir, bundled=bundled)
    if found is not None:
      return found
  return None


def require(name: str, manual_dir: str | None, *, bundled: bool = True, hint: str = "") -> MetadataFile:
  """`find`, or a FileNotFoundError that says where the file is expected."""
  found = find(name, manual_dir, bundled=bundled)
  if found is None:
    where = f"{manual_dir}/metadata/{name} or {manual_dir}/{name}" if manual_dir else f"the manual dir ({name})"
    raise FileNotFoundError(f"Metadata file {name} not found: expected at {where}. {hint}".strip())
  return found


def read_rows(path: str) -> list[list[str]]:
  """Rows of a comma-separated list (.txt or .csv, LF or CRLF); fields stripped, blank lines dropped."""
  try:
    text = epath.Path(path).read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text list ({e}).") from e
  rows = []
  for row in csv.reader(io.StringIO(text)):
    fields = [field.strip() for field in row]
    if any(fields):
      rows.append(fields)
  return rows


def read_json(path: str) -> Any:
  try:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from e


def entries_by_file(path: str) -> dict[str, dict[str, Any]]:
  """An annotation JSON (a list of objects with a 'file' id: music_*.json, vggss.json) indexed by id."""
  entries = read_json(path)
  if not isinstance(entries, list):
    raise ValueError(f"{path}: expected a JSON list of annotations, got {type(entries).__name__}.")
  index = {}
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
      raise ValueError(f"{path}: annotation {i} has no 'file' id: {str(entry)[:200]}")
    index[entry["file"]] = entry
  return index


def underscore_class(display_name: str) -> str:
  """VGG-SS display name -> the csv spelling: 'female speech, woman speaking' -> 'female_speech_woman_speaking'."""
  return "_".join(part for part in re.split(r"[,\s]+", display_name) if part)


def vocabulary(rows: list[list[str]], columns: tuple[int, ...]) -> list[str]:
  """Sorted distinct class names in `columns` of `rows` (the official label index = position in this list)."""
  return sorted({row[c] for row in rows for c in columns if c < len(row) and row[c]})


def music_video_id(frame_id: str) -> str:
  """MUSIC frame id `{ytid}_{seg:03d}_{frame:05d}` -> ytid (the id without its last 10 characters)."""
  return frame_id[:-10]


def music_frame_index(frame_id: str) -> int:
  """MUSIC frame id -> the frame's index in its video (the last 5 digits)."""
  return int(frame_id[-5:])


def is_music_frame_id(frame_id: str) -> bool:
  return re.fullmatch(r".+_\d{3}_\d{5}", frame_id) is not None
