"""Enumerate raw inputs (directories, JSONL files) as ordered, picklable work units.

Decisions:
- The main process only *lists* inputs; workers read and parse them. A unit carries a path or one raw JSONL
  line, never decoded text, so the listing of the 257 MB / 7,733-file stdlib tree takes ~0.1 s and the
  reading is parallel.
- Order is the input order: directories are walked with sorted names (symlinked directories are not
  followed, so a link loop cannot hang the walk), JSONL files line by line. Output order never depends on
  the worker count.
- Units are grouped into batches of ~1 MiB / 256 units so one inter-process round trip carries enough work
  (per-document round trips cost more than tokenizing a typical 4 KB file).
- Repo mode: in a directory input each subdirectory is one repository (files at the top level are counted
  as `not_in_repo`); in JSONL, consecutive lines with the same repo name form one repository (sort by repo
  first; a repo name that reappears later simply starts another repository document).
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from data.report import BadInputError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
# Never source files: version-control internals, caches and build output (a stdlib tree holds ~1,700 .pyc files
# in __pycache__, a checked-out project its virtualenv or node_modules). A pattern ending in "/" matches
# directories only, so a script named "build" is still read.
DEFAULT_EXCLUDE = (
    ".git/", ".hg/", ".svn/", "__pycache__/", ".venv/", "venv/", "node_modules/", "build/", "dist/", "*.egg-info/",
    ".eggs/", ".tox/", ".nox/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".ipynb_checkpoints/",
)
CONTENT_FIELDS = ("content", "text")
PATH_FIELDS = ("path", "max_stars_repo_path", "file_path", "filename")
REPO_FIELDS = ("repo_name", "repo", "max_stars_repo_name")
LANGUAGE_FIELDS = ("language", "lang")

@dataclass
class FileUnit:
    """One file on disk: a document in file/text mode."""

    path: str  # absolute or input-relative path to read
    name: str  # path shown in reports and repo documents (relative to the input root)
    size: int  # bytes, from the listing (progress and the size filter)


@dataclass
class LineUnit:
    """One raw JSONL line."""

    origin: str  # "file.jsonl:LINE"
    raw: bytes


@dataclass
class RepoUnit:
    """One repository: its files in a stable order (sorted relative paths / JSONL line order)."""

    name: str
    files: List[object] = field(default_factory=list)  # FileUnit | LineUnit
    skips: List[Tuple[str, str, str]] = field(default_factory=list)  # (reason, origin, detail) found while listing


def _walk_files(root: Path, exclude: Sequence[str] = ()) -> Iterator[Tuple[str, str, int]]:
    """(path, relative name, size) of every file under root in sorted order.

    `exclude`: glob patterns matched against each directory and file *name* (e.g. "site-packages", "*.pyc";
    "build/" matches directories only); excluded entries are not inputs at all, so they are not walked (and
    not counted).
    """
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d, exclude, directory=True))
        for filename in sorted(filenames):
            if _excluded(filename, exclude):
                continue
            full = os.path.join(dirpath, filename)
            try:
                size = os.stat(full).st_size
            except OSError:
                size = 0  # broken link or vanished file: the worker's read reports it as unreadable
            yield full, os.path.relpath(full, root), size


def _excluded(name: str, patterns: Sequence[str], directory: bool = False) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern.rstrip("/")) for pattern in patterns
               if directory or not pattern.endswith("/"))


def _raise_walk_error(error: OSError) -> None:
    raise error


def is_jsonl(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(JSONL_SUFFIXES)


def list_inputs(inputs: Sequence[Path]) -> List[Path]:
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise BadInputError(f"input path(s) do not exist: {missing}; fix --input (directories and/or JSONL files)")
    return [Path(p) for p in inputs]


def iter_units(inputs: Sequence[Path], mode: str, exclude: Sequence[str] = ()) -> Iterator[object]:
    """Work units in input order. mode: file | text (one document per file/line) or repo."""
    for path in list_inputs(inputs):
        if path.is_dir():
            if mode == "repo":
                yield from _repo_units_from_dir(path, exclude)
            else:
                for full, name, size in _walk_files(path, exclude):
                    yield FileUnit(full, name, size)
        elif is_jsonl(path):
            lines = _iter_lines(path)
            yield from (_repo_units_from_lines(lines) if mode == "repo" else lines)
        else:  # a single plain file
            if mode == "repo":
                raise BadInputError(f"--mode repo needs a directory of repositories or JSONL, got the file {path}")
            yield FileUnit(str(path), path.name, path.stat().st_size)


def _iter_lines(path: Path) -> Iterator[LineUnit]:
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            yield LineUnit(f"{path}:{line_no}", raw)


def _repo_units_from_dir(root: Path, exclude: Sequence[str]) -> Iterator[RepoUnit]:
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        is_dir = entry.is_dir(follow_symlinks=False)
        if _excluded(entry.name, exclude, directory=is_dir):
            continue
        if is_dir:
            unit = RepoUnit(entry.name)
            for full, name, size in _walk_files(Path(entry.path), exclude):
                unit.files.append(FileUnit(full, name, size))
            yield unit
        else:
            yield RepoUnit(entry.name, skips=[("not_in_repo", entry.path, "a file directly under the repo-mode input root")])


def _repo_units_from_lines(lines: Iterator[LineUnit]) -> Iterator[RepoUnit]:
    """Group consecutive lines by repo name; the name is parsed here (repo mode only)."""
    current: Optional[RepoUnit] = None
    for line in lines:
        record, _ = parse_json_line(line.raw)
        repo = first_str(record, REPO_FIELDS) if isinstance(record, dict) else None
        if repo is None:
            if current is not None:
                yield current
                current = None
            if isinstance(record, dict):
                yield RepoUnit("", skips=[("missing_repo", line.origin, f"no string field among {list(REPO_FIELDS)}")])
            else:  # not a JSON object: the worker reads it again and reports why
                yield RepoUnit("", files=[line])
            continue
        if current is None or current.name != repo:
            if current is not None:
                yield current
            current = RepoUnit(repo)
        current.files.append(line)
    if current is not None:
        yield current


def parse_json_line(raw: bytes):
    """(record, error message). Errors are returned, not raised: the caller counts them by reason."""
    try:
        return json.loads(raw), None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, f"{type(error).__name__}: {error}"


def first_str(record: dict, fields: Sequence[str]) -> Optional[str]:
    for name in fields:
        value = record.get(name)
        if isinstance(value, str):
            return value
    return None


def unit_weight(unit: object) -> int:
    if isinstance(unit, FileUnit):
        return unit.size
    if isinstance(unit, LineUnit):
        return len(unit.raw) + 1
    return sum(unit_weight(f) for f in unit.files) or 1


def batched(units: Iterator[object], max_bytes: int = 1 << 20, max_units: int = 256) -> Iterator[List[object]]:
    """Group units into ordered batches of about max_bytes (a large unit travels alone)."""
    batch, weight = [], 0
    for unit in units:
        batch.append(unit)
        weight += unit_weight(unit)
        if weight >= max_bytes or len(batch) >= max_units:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


def total_input_bytes(inputs: Sequence[Path], exclude: Sequence[str] = ()) -> int:
    """For the progress bar: the size of every input file (a directory walk without reading)."""
    total = 0
    for path in list_inputs(inputs):
        if path.is_dir():
            total += sum(size for _, _, size in _walk_files(path, exclude))
        else:
            total += path.stat().st_size
    return total


def select_shard(units: Iterator[object], index: int, count: int, total_bytes: int) -> Iterator[object]:
    """The units of shard `index` of `count`: contiguous in input order, split by input bytes, so the shards'
    outputs concatenated in index order are a one-machine run's."""
    done = 0
    for unit in units:
        if min(count - 1, done * count // max(1, total_bytes)) == index:
            yield unit
        done += unit_weight(unit)
