"""Content filters: each returns a reason string (counted in the report) or None to keep.

Order of checks (first failing one is the reason): unreadable -> too_large -> binary -> invalid_utf8 ->
empty -> long_lines -> language_excluded -> the quality rules of data/quality.py (code only) -> contaminated
(data/decontaminate.py); `duplicate` and `near_duplicate` (data/near_dedup.py) are decided later in the main
process, in input order, so the first copy is kept whatever the worker count.

Defaults follow common code-corpus practice (The Stack / StarCoder): files over 1 MB are dropped (they are
mostly generated or data), lines over 1,000 characters mark minified or generated code, and a NUL byte
marks a binary file (a .pyc or .so is caught before its UTF-8 check). Text mode keeps long lines: prose
paragraphs are single lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

from data.decontaminate import default_index
from data.near_dedup import NearDedupConfig
from data.quality import QUALITY_REASONS, QualityConfig, check_quality

# Reasons that are malformed input (what --strict refuses); the others are policy and never an error.
BAD_INPUT_REASONS = (
    "unreadable", "malformed_json", "missing_content", "missing_repo", "invalid_utf8", "binary", "empty",
    "not_in_repo",
)
POLICY_REASONS = ("too_large", "long_lines", "language_excluded", *QUALITY_REASONS, "contaminated", "duplicate",
                  "near_duplicate")


class GroupedDetail(str):
    """A skip's detail that also names the group the report counts it under: the report's entry for the reason
    gets `per_<kind>: {group: count}` (skipped.contaminated.per_benchmark, skipped.auto_generated.per_language)."""

    kind: str
    group: str

    def __new__(cls, text: str, kind: str, group: str) -> "GroupedDetail":
        detail = super().__new__(cls, text)
        detail.kind, detail.group = kind, group
        return detail

    def __reduce__(self):  # workers send it back to the main process
        return GroupedDetail, (str(self), self.kind, self.group)


@dataclass
class FilterConfig:
    """Which documents to keep. 0 disables a numeric limit."""

    max_bytes: int = 1_000_000  # UTF-8 bytes of one file's content
    max_line_length: int = 1000  # characters in the longest line (file/repo modes)
    dedupe: bool = True  # drop exact duplicates (file/text: per document; repo: whole repositories)
    languages: Optional[Tuple[str, ...]] = None  # keep only these languages (None: all)
    quality: QualityConfig = field(default_factory=QualityConfig)  # code only (file and repo modes)
    decontaminate: bool = True  # drop documents sharing a 10-gram with an evaluation problem
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)


def check_size(size: int, config: FilterConfig) -> Optional[str]:
    if config.max_bytes and size > config.max_bytes:
        return "too_large"
    return None


def decode_bytes(data: bytes) -> Tuple[Optional[str], Optional[str], str]:
    """(text, reason, detail) for raw file bytes."""
    nul = data.find(b"\x00")
    if nul >= 0:
        return None, "binary", f"NUL byte at offset {nul}"
    try:
        return data.decode("utf-8"), None, ""
    except UnicodeDecodeError as error:
        return None, "invalid_utf8", f"{error.reason} at byte {error.start}"


def check_text(text: str) -> Tuple[Optional[str], str]:
    """Checks for text that arrived as str (JSONL): NULs and lone surrogates are not valid documents."""
    if "\x00" in text:
        return "binary", f"NUL character at index {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return "invalid_utf8", f"{error.reason} at index {error.start}"
    return None, ""


def check_content(text: str, language: str, config: FilterConfig, code: bool) -> Tuple[Optional[str], str]:
    """Policy filters on decoded text. `code`: apply the line-length limit and the quality rules (file and repo
    modes). Quality skips are grouped by language, contamination by benchmark (see GroupedDetail)."""
    if not text.strip():
        return "empty", "no non-whitespace characters"
    if config.max_bytes and len(text) > config.max_bytes and len(text.encode("utf-8")) > config.max_bytes:
        return "too_large", f"{len(text.encode('utf-8'))} bytes > {config.max_bytes}"
    if code and config.max_line_length:
        longest = max(map(len, text.split("\n")))
        if longest > config.max_line_length:
            return "long_lines", f"a line of {longest} characters > {config.max_line_length}"
    if config.languages is not None and language not in config.languages:
        return "language_excluded", f"language {language!r} not in {list(config.languages)}"
    if code:
        reason, detail = check_quality(text, language, config.quality)
        if reason:
            return reason, GroupedDetail(detail, "language", language)
    if config.decontaminate:
        found = default_index().find(text)
        if found:
            return "contaminated", GroupedDetail(found.detail(), "benchmark", found.benchmark)
    return None, ""


def parse_languages(value: Optional[str]) -> Optional[Sequence[str]]:
    """'python,c' -> ('python', 'c'); empty or None -> None (all languages)."""
    if not value:
        return None
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())
