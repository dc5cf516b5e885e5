"""Content filters: each returns a reason string (counted in the report) or None to keep.

Order of checks (first failing one is the reason): unreadable -> too_large -> binary -> invalid_utf8 ->
empty -> long_lines -> language_excluded; `duplicate` is decided later in the main process, in input order,
so the first copy is kept whatever the worker count.

Defaults follow common code-corpus practice (The Stack / StarCoder): files over 1 MB are dropped (they are
mostly generated or data), lines over 1,000 characters mark minified or generated code, and a NUL byte
marks a binary file (a .pyc or .so is caught before its UTF-8 check). Text mode keeps long lines: prose
paragraphs are single lines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

# Reasons that are malformed input (what --strict refuses); the others are policy and never an error.
BAD_INPUT_REASONS = (
    "unreadable", "malformed_json", "missing_content", "missing_repo", "invalid_utf8", "binary", "empty",
    "not_in_repo",
)
POLICY_REASONS = ("too_large", "long_lines", "language_excluded", "duplicate")


@dataclass
class FilterConfig:
    """Which documents to keep. 0 disables a numeric limit."""

    max_bytes: int = 1_000_000  # UTF-8 bytes of one file's content
    max_line_length: int = 1000  # characters in the longest line (file/repo modes)
    dedupe: bool = True  # drop exact duplicates (file/text: per document; repo: whole repositories)
    languages: Optional[Tuple[str, ...]] = None  # keep only these languages (None: all)


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
    """Policy filters on decoded text. `code`: apply the line-length limit (file and repo modes)."""
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
    return None, ""


def parse_languages(value: Optional[str]) -> Optional[Sequence[str]]:
    """'python,c' -> ('python', 'c'); empty or None -> None (all languages)."""
    if not value:
        return None
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())
