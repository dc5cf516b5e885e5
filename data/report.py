"""The JSON report written next to PREFIX.bin/.idx: what went in, what came out, what was skipped and why.

Accounting invariant (asserted before writing): every input record (a file, a JSONL line, a file of a
repository) is either kept in a document or skipped under exactly one reason, so
`records.total == records.kept + records.skipped`. Each reason keeps its first 5 examples in input order
("path: detail" or "file.jsonl:LINE: detail"), so the report is identical for any worker count.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Sequence

from data.filters import BAD_INPUT_REASONS

MAX_EXAMPLES = 5


REPORT_SUFFIX = ".report.json"


class BadInputError(ValueError):
    """Input or arguments data/prepare.py cannot use (--strict: malformed records, listed by reason with
    examples); the message says what to fix."""


def report_path(prefix) -> Path:
    return Path(f"{prefix}{REPORT_SUFFIX}")


def read_report(prefix) -> Optional[Dict]:
    """PREFIX.report.json as a dict, None when there is none; ValueError when it is not JSON."""
    path = report_path(prefix)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def output_record(bin_path: Path, idx_path: Path, content_sha256: str) -> Dict:
    """What ties a report to its .bin/.idx: their sizes, the .idx's sha256 (1/3 of the .bin's size at most:
    12 bytes a document against >= 4 a token) and the sha256 of every document's tokens in order, which
    training uses as the content's name (megatron's index cache key)."""
    return {"bin_bytes": Path(bin_path).stat().st_size, "idx_bytes": Path(idx_path).stat().st_size,
            "idx_sha256": file_sha256(idx_path), "content_sha256": content_sha256}


class Report:
    """`bad_reasons`: the skip reasons that are malformed input (strict mode refuses them); data/prepare.py
    uses data.filters.BAD_INPUT_REASONS, the SFT dataset (data.sft) its own."""

    def __init__(self, bad_reasons: Sequence[str] = BAD_INPUT_REASONS, **settings) -> None:
        self.bad_reasons = tuple(bad_reasons)
        self.settings = settings
        self.documents = 0
        self.tokens = 0
        self.records_kept = 0
        self.over_budget = 0
        self.languages: Dict[str, Dict[str, int]] = defaultdict(lambda: {"records": 0, "tokens": 0})
        self.skipped: Dict[str, Dict] = {}
        self.tokenizer: Optional[Dict] = None  # data.tokenizer.tokenizer_identity of the tokenizer used
        self.output: Optional[Dict] = None  # output_record of the finished .bin/.idx

    def add_document(self, ntokens: int, languages: Dict[str, tuple], over_budget: bool) -> None:
        self.documents += 1
        self.tokens += ntokens
        self.over_budget += int(over_budget)
        for language, (records, tokens) in languages.items():
            self.languages[language]["records"] += records
            self.languages[language]["tokens"] += tokens
            self.records_kept += records

    def add_skip(self, reason: str, origin: str, detail: str = "", count: int = 1) -> None:
        entry = self.skipped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += count
        if hasattr(detail, "group"):  # data.filters.GroupedDetail
            groups = entry.setdefault(f"per_{detail.kind}", {})
            groups[detail.group] = groups.get(detail.group, 0) + count
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(f"{origin}: {detail}" if detail else origin)

    @property
    def records_skipped(self) -> int:
        return sum(entry["count"] for entry in self.skipped.values())

    def bad_input(self) -> Dict[str, Dict]:
        return {reason: entry for reason, entry in self.skipped.items() if reason in self.bad_reasons}

    def strict_error(self, option: str = "--strict",
                     when: str = "the run stops at the first ~1 MiB batch with any") -> BadInputError:
        """One error listing every malformed record by reason; `option` names the switch that asked for it."""
        count = sum(e["count"] for e in self.bad_input().values())
        lines = [f"{option}: {count} malformed input record(s) ({when}):"]
        for reason, entry in sorted(self.bad_input().items()):
            lines.append(f"  {reason}: {entry['count']}, e.g.")
            lines.extend(f"    {example}" for example in entry["examples"])
        lines.append(f"Fix or remove these records, or run without {option} to skip and count them.")
        return BadInputError("\n".join(lines))

    def to_dict(self) -> Dict:
        written = {name: value for name, value in (("tokenizer", self.tokenizer), ("output", self.output))
                   if value is not None}  # data/prepare.py's reports; the SFT/DPO readers have no output files
        return {
            "settings": self.settings,
            "documents": self.documents,
            "tokens": self.tokens,
            "records": {
                "total": self.records_kept + self.records_skipped,
                "kept": self.records_kept,
                "skipped": self.records_skipped,
            },
            "documents_over_budget": self.over_budget,
            "languages": {k: dict(v) for k, v in sorted(self.languages.items())},
            "skipped": {k: self.skipped[k] for k in sorted(self.skipped)},
            **written,
        }

    def write(self, path: Path) -> None:
        data = self.to_dict()
        assert data["records"]["total"] == data["records"]["kept"] + data["records"]["skipped"]
        assert sum(v["tokens"] for v in data["languages"].values()) == self.tokens, "per-language tokens must add up"
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v['count']}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.documents} documents, {self.tokens} tokens from {self.records_kept} records; "
            f"skipped: {skipped}"
        )
