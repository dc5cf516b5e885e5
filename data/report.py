"""The JSON report written next to PREFIX.bin/.idx: what went in, what came out, what was skipped and why.

Accounting invariant (asserted before writing): every input record (a file, a JSONL line, a file of a
repository) is either kept in a document or skipped under exactly one reason, so
`records.total == records.kept + records.skipped`. Each reason keeps its first 5 examples in input order
("path: detail" or "file.jsonl:LINE: detail"), so the report is identical for any worker count.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, Sequence

from data.filters import BAD_INPUT_REASONS

MAX_EXAMPLES = 5


class BadInputError(ValueError):
    """--strict found malformed input; the message lists every reason with examples."""


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
