"""Loading evaluation rows from a local file, the package's built-in data, or a cached Hugging
Face dataset.

A source is, in this order: a `.jsonl`, `.json` or `.parquet` file (a path relative to the
working directory, to `data_root()`, or to the built-in folder `kdknob_jax/data/builtin`), a
directory holding `<split>.jsonl|json|parquet`, or a Hugging Face `datasets` name ("name" or
"name:config") that is already in the local cache. "builtin:capitals/test.jsonl" names a
built-in file only. Every row is a plain dict; nothing here knows what the fields mean (see
tasks.py). The list they come in (`Records`) also remembers each row's file and line, so a
bad row can be reported where it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kdknob_jax.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_SPLIT = "test"
BUILTIN_PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).resolve().parent / "builtin"


class Records(list):
  """The rows of a dataset (plain dicts), plus where each came from.

  It is a list, so it compares equal to a list of the same dicts; slicing keeps the origins.

  Attributes:
    source: what was loaded: the file path, or "Hugging Face dataset 'name'".
    path: the file, or None for a Hugging Face dataset.
    lines: for a .jsonl file, the 1-based line number of each row; otherwise None.
    positions: each row's 0-based position among all the rows of the source.
  """

  def __init__(self, rows=(), source: str = "", path: Path | None = None,
               lines: list[int] | None = None, positions: list[int] | None = None):
    super().__init__(rows)
    self.source = source
    self.path = path
    self.lines = lines
    self.positions = list(range(len(self))) if positions is None else positions

  def __getitem__(self, index):
    if isinstance(index, slice):
      return Records(list.__getitem__(self, index), self.source, self.path,
                     None if self.lines is None else self.lines[index], self.positions[index])
    return list.__getitem__(self, index)

  def where(self, i: int) -> str:
    """Where row i is: "file.jsonl:12" (a line), or "<source> row 7" (a 0-based position)."""
    if self.lines is not None and i < len(self.lines):
      return f"{self.source}:{self.lines[i]}"
    if i < len(self.positions):
      return f"{self.source} row {self.positions[i]}"
    return f"row {i}"  # appended after loading: no origin to report


def data_root() -> Path:
  """The folder that relative dataset paths are also looked up in.

  Returns:
    `$KDKNOB_DATA` when set, else `<repo root>/../shared/data`, where the repo root is the
    directory that holds the `kdknob_jax` package. The folder may not exist (a user's machine).
  """
  env = os.environ.get("KDKNOB_DATA")
  if env:
    return Path(env).expanduser()
  repo_root = Path(__file__).resolve().parents[2]
  return repo_root.parent / "shared" / "data"


def _candidates(source: str) -> list[Path]:
  if source.startswith(BUILTIN_PREFIX):
    return [BUILTIN_ROOT / source[len(BUILTIN_PREFIX):]]
  path = Path(source).expanduser()
  if path.is_absolute():
    return [path]
  # The built-in folder comes last, so a user's own file of the same name wins.
  return [path, data_root() / path, BUILTIN_ROOT / path]


def _in_directory(directory: Path, split: str | None) -> Path:
  """`<split>.<suffix>` inside a dataset folder such as gsm8k/."""
  split = split or DEFAULT_SPLIT
  for suffix in SUFFIXES:
    candidate = directory / f"{split}{suffix}"
    if candidate.is_file():
      return candidate
  present = sorted(p.name for p in directory.iterdir() if p.suffix in SUFFIXES)
  raise DataError(f"{directory} is a directory with no {split}.jsonl, {split}.json or "
                  f"{split}.parquet; files there: {present or 'none'}. Pass one of them, or a "
                  f"split= that names one.")


def _text(raw: bytes, path: Path, first_line: int = 1) -> str:
  """`raw` decoded as UTF-8, or a DataError naming the file, the line and the byte."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = first_line + raw.count(b"\n", 0, e.start)
    raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                    f"{e.start}). Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 "
                    f"IN > OUT` if it is Latin-1.") from e


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
  rows, lines = [], []
  with path.open("rb") as f:
    for lineno, raw in enumerate(f, start=1):
      line = _text(raw, path, lineno)
      if not line.strip():
        continue  # a trailing newline or spacer line is common and harmless
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno}). Each line of "
                        f"a .jsonl file must be one complete JSON object; fix or delete that "
                        f"line.") from e
      if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object ({{...}}), got "
                        f"{type(row).__name__}. Each line must hold one row as an object.")
      rows.append(row)
      lines.append(lineno)
  return rows, lines


def _read_json(path: Path) -> list[dict]:
  try:
    data = json.loads(_text(path.read_bytes(), path))
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno}). A .json "
                    f"dataset must be a list of objects; for one object per line name the "
                    f"file .jsonl.") from e
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a JSON list of row objects at the top level, got "
                    f"{type(data).__name__}. Wrap the rows in [...] or use .jsonl.")
  for i, row in enumerate(data):
    if not isinstance(row, dict):
      # json has no cheap per-element line numbers, so name the list position instead
      raise DataError(f"{path}: element {i} of the list is {type(row).__name__}, not a JSON "
                      f"object. Every row must be an object ({{...}}).")
  return data


def _read_parquet(path: Path) -> list[dict]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"Reading {path} needs pyarrow: `pip install pyarrow`.") from e
  try:
    table = pq.read_table(path)
  except Exception as e:  # pyarrow raises several unrelated types for a damaged file
    raise DataError(f"{path}: not a readable Parquet file ({e}). Re-export it, or convert it "
                    f"to .jsonl.") from e
  return table.to_pylist()


def _read_file(path: Path) -> Records:
  suffix = path.suffix.lower()
  if suffix == ".jsonl":
    rows, lines = _read_jsonl(path)
    return Records(rows, str(path), path, lines)
  if suffix == ".json":
    return Records(_read_json(path), str(path), path)
  if suffix == ".parquet":
    return Records(_read_parquet(path), str(path), path)
  raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use one of "
                  f"{', '.join(SUFFIXES)}.")


def _read_hf(source: str, split: str | None, tried: list[Path]) -> list[dict]:
  name, _, config = source.partition(":")
  split = split or DEFAULT_SPLIT
  tried_text = ", ".join(str(p) for p in tried)
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"{source!r} is not a file (tried {tried_text}) and the `datasets` package "
                    f"is not installed to load it as a Hugging Face dataset: "
                    f"`pip install datasets`, or pass a .jsonl/.json/.parquet path.") from e
  try:
    ds = datasets.load_dataset(name, config or None, split=split)
  except Exception as e:  # datasets raises many types (hub, cache, config errors)
    raise DataError(f"{source!r} is not a file (tried {tried_text}) and loading it as the "
                    f"Hugging Face dataset {name!r} (config {config or None!r}, split {split!r}) "
                    f"failed: {type(e).__name__}: {e}. There is no network here, so a dataset "
                    f"name only works when it is already in the local HF cache; otherwise pass "
                    f"a local .jsonl/.json/.parquet file.") from e
  if hasattr(ds, "to_list"):
    return ds.to_list()
  return [dict(row) for row in ds]


def _resolve(source: str, split: str | None) -> tuple[Path | None, list[Path]]:
  tried = _candidates(source)
  for path in tried:
    if path.is_file():
      return path, tried
    if path.is_dir():
      return _in_directory(path, split), tried
  return None, tried


def load_records(source: str, split: str | None = None, limit: int | None = None,
                 offset: int = 0) -> Records:
  """Rows of a dataset as dicts.

  Args:
    source: a `.jsonl`, `.json` or `.parquet` path (relative to the working directory, or else
      to `data_root()`, or else to the built-in data, e.g. "gsm8k/test.jsonl"; or
      "builtin:capitals/test.jsonl" for a built-in file only), a dataset directory, or a
      Hugging Face `datasets` name, optionally "name:config", that is present in the local
      cache.
    split: the split of a Hugging Face dataset, or the file stem inside a directory; "test"
      when None. Ignored for a file path.
    limit: keep at most this many rows (None: all).
    offset: skip this many rows first; the result is rows[offset:offset + limit].

  Returns:
    A non-empty `Records` (a list of dicts, one per row, in file order) that knows each row's
    file and line, for error messages.

  Raises:
    DataError: the source cannot be found or read, a row is not a JSON object, a line is not
      valid JSON (the message gives file:line), or the selection is empty.
  """
  if offset < 0:
    raise DataError(f"offset must be >= 0, got {offset}.")
  if limit is not None and limit < 1:
    raise DataError(f"limit must be a positive number of rows or None, got {limit}.")
  path, tried = _resolve(str(source), split)
  if path is not None:
    rows = _read_file(path)
    if str(source).startswith(BUILTIN_PREFIX):
      # Rows say where they came from in the reports a run writes: the package's own name for
      # the file, not where this machine installed it.
      rows.source = str(source)
    where = rows.source
  elif str(source).startswith(BUILTIN_PREFIX):
    present = sorted(str(p.relative_to(BUILTIN_ROOT)) for p in BUILTIN_ROOT.rglob("*")
                     if p.suffix in SUFFIXES) if BUILTIN_ROOT.is_dir() else []
    raise DataError(f"No built-in dataset {source!r} (looked for {tried[0]}); built-in files: "
                    f"{present or 'none'}. Write it as builtin:<one of those>.")
  elif Path(source).suffix.lower() in SUFFIXES:
    # A file name is never a hub id; trying one would only add a slow, confusing hub error.
    raise DataError(f"Dataset file {source!r} not found; tried "
                    f"{', '.join(str(p) for p in tried)}. It is not tried as a Hugging Face "
                    f"dataset name because it ends in {Path(source).suffix}. Check the path, or "
                    f"set $KDKNOB_DATA to the folder holding your data.")
  else:
    where = f"Hugging Face dataset {source!r}"
    rows = Records(_read_hf(str(source), split, tried), where)
  total = len(rows)
  rows = rows[offset:] if limit is None else rows[offset:offset + limit]
  if not rows:
    raise DataError(f"{where}: no rows selected ({total} rows in all, offset={offset}, "
                    f"limit={limit}). Use a smaller offset, or a source that has rows.")
  return rows
