"""Preference pairs for DPO: {"prompt", "chosen", "rejected"} JSONL rendered with the SFT chat format.

Input (data.sources[0].prefix, the path of a .jsonl/.json/.ndjson file), one pair per line:
  {"prompt": "question" | [{"role": "system" | "user" | "assistant", "content": "..."}, ...],
   "chosen": "preferred reply", "rejected": "dispreferred reply"}
Other keys are ignored. A string prompt is one user turn; a list is the conversation so far and must not end
with an assistant turn (the replies are the next assistant turn).

Rendering: data.sft.ChatTemplate, the same ids SFT trains and inference serves: the prompt with Qwen2.5's
default system turn when it has none (data.system_prompt), then the generation prompt
"<|im_start|>assistant\\n", then the reply as template.reply gives it (content, <|im_end|>, "\\n"). Each pair is
two rows, prompt + chosen and prompt + rejected; a row's response mask marks the reply's content and its
<|im_end|> (not the final "\\n", never generated): DPO's sequence log-probabilities sum over those tokens.

Truncation (rows hold seq_length + 1 ids, as SFT's): the prompt is never cut (its head holds the system turn and
the question; a cut prompt asks something else). Each reply is cut at its end so that prompt + reply fits;
the pair is kept and counted as truncated. Skipped and counted, never an error: a prompt that leaves no room
for one reply token (prompt_too_long), and pairs whose two rows are identical once cut
(identical_after_truncation: its margin is 0 whatever the model, it only adds ln 2 to the loss). Malformed
lines are counted by reason with file:LINE examples (data.report.Report) and with data.strict=true are one
BadInputError listing them; chosen == rejected is malformed (identical_responses).

Samples: one pair per sample, [2, seq_length] tensors (chosen row first) in the fields megatron's GPTDataset
uses, plus `pair` (the pair's index in the file's kept pairs, which the reference pass keys on) and `ref_logps`
([2] float64, the frozen reference's log-probabilities from train.dpo_reference; zeros before they exist).
Splits and order: data.split divides the kept pairs in file order; each split draws pairs epoch by epoch in a
seeded order (data.sft.SFTDataset, unpacked), so sample i is the same pair on every rank and after a resume.
Cost: like data.sft, ids kept in memory, 5 bytes per id, two rows per pair (the prompt is held twice).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from data.config import DataConfig, split_percentages
from data.datasets import SPLIT_NAMES, DataValidationError, split_bounds
from data.filters import check_text
from data.report import Report
from data.sft import ROLES, ChatTemplate, RaggedRows, SFTDataset, make_sample
from data.sources import JSONL_SUFFIXES, iter_units, parse_json_line
from data.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

BAD_REASONS = ("malformed_json", "not_a_pair", "bad_prompt", "non_string_response", "invalid_utf8", "binary",
               "identical_responses")
POLICY_REASONS = ("blank_line", "prompt_too_long", "identical_after_truncation")
EXAMPLE = "data.sources='[{name: pairs, prefix: /data/pairs.jsonl, weight: 1.0}]'"


def _prompt_messages(prompt) -> Tuple[Optional[List[Dict[str, str]]], str]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], ""
    if not isinstance(prompt, list) or not prompt:
        return None, f"prompt is {type(prompt).__name__}; expected a string or a non-empty list of messages"
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None, f"prompt[{index}] is not a {{role, content}} message with role in {list(ROLES)}"
        if not isinstance(message.get("content"), str):
            return None, f"prompt[{index}] content is {type(message.get('content')).__name__}, not a string"
    if prompt[-1]["role"] == "assistant":
        return None, "the prompt ends with an assistant turn; the replies are the next assistant turn"
    return [{"role": m["role"], "content": m["content"]} for m in prompt], ""


def parse_pair(raw: bytes):
    """((messages, chosen, rejected), reason, detail) for one JSONL line; None and a reason when skipped."""
    if not raw.strip():
        return None, "blank_line", ""
    record, error = parse_json_line(raw)
    if error is not None:
        return None, "malformed_json", error
    if not isinstance(record, dict) or not {"prompt", "chosen", "rejected"} <= record.keys():
        return None, "not_a_pair", 'expected {"prompt": ..., "chosen": "...", "rejected": "..."}'
    messages, detail = _prompt_messages(record["prompt"])
    if messages is None:
        return None, "bad_prompt", detail
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], str):
            return None, "non_string_response", f"{key} is {type(record[key]).__name__}"
    for where, text in [*((f"prompt[{i}]", m["content"]) for i, m in enumerate(messages)),
                        ("chosen", record["chosen"]), ("rejected", record["rejected"])]:
        reason, detail = check_text(text)
        if reason is not None:
            return None, reason, f"{where}: {detail}"
    if record["chosen"] == record["rejected"]:
        return None, "identical_responses", "chosen == rejected: the pair states no preference"
    return (messages, record["chosen"], record["rejected"]), "", ""


class PairStore(RaggedRows):
    """Every kept pair as two rows (chosen, rejected) of <= max_ids ids; row 2i+1 is rejected."""

    def __init__(self, path: Path, template: ChatTemplate, max_ids: int) -> None:
        self.path = path
        self.report = Report(bad_reasons=BAD_REASONS, input=str(path), max_ids=max_ids)
        self.truncated_pairs = 0
        ids: List[np.ndarray] = []
        learnt: List[np.ndarray] = []
        for unit in iter_units([path], mode="file"):
            pair, reason, detail = parse_pair(unit.raw)
            if pair is None:
                self.report.add_skip(reason, unit.origin, detail)
                continue
            messages, chosen, rejected = pair
            prompt = template.render(messages, add_generation_prompt=True)[0]
            if len(prompt) + 1 > max_ids:  # the first reply token is label position len(prompt) - 1
                self.report.add_skip("prompt_too_long", unit.origin, f"prompt of {len(prompt)} ids, rows hold "
                                     f"{max_ids}: no room for a reply")
                continue
            rows, cut = [], False
            for content in template.tokenizer.encode_batch([chosen, rejected]):
                reply, mask = template.reply(content)
                cut |= len(prompt) + len(reply) > max_ids
                rows.append((np.concatenate([prompt, reply])[:max_ids],
                             np.concatenate([np.zeros(len(prompt), bool), mask])[:max_ids]))
            if np.array_equal(rows[0][0], rows[1][0]):
                self.report.add_skip("identical_after_truncation", unit.origin,
                                     f"both replies share their first {max_ids - len(prompt)} ids")
                continue
            self.truncated_pairs += int(cut)
            self.report.add_document(len(rows[0][0]) + len(rows[1][0]), {"pair": (1, 0)}, over_budget=cut)
            for row_ids, row_learnt in rows:
                ids.append(row_ids)
                learnt.append(row_learnt)
        self._keep_rows(ids, learnt)
        self.pad = template.pad
        self.reference: Optional[np.ndarray] = None  # [pairs, 2] float64, set by train.dpo_reference

    def __len__(self) -> int:
        return self.num_rows // 2

    def log_summary(self) -> None:
        report = self.report
        logger.info("DPO data %s: %d pairs, %d ids; %d pair(s) with a reply cut to fit %d ids; skipped: %s",
                    self.path, len(self), report.tokens, self.truncated_pairs, report.settings["max_ids"],
                    ", ".join(f"{k} {v['count']}" for k, v in sorted(report.skipped.items())) or "none")
        for reason, entry in sorted(report.skipped.items()):
            level = logging.INFO if reason in POLICY_REASONS else logging.WARNING
            logger.log(level, "DPO data: skipped %d line(s) as %s, e.g. %s", entry["count"], reason,
                       "; ".join(entry["examples"]))


def pair_sample(store: PairStore, pair: int, seq_length: int) -> Dict[str, torch.Tensor]:
    """Sample of pair `pair`: [2, seq_length] rows (chosen, rejected), its index and reference log-probs."""
    rows = [make_sample([store.row(2 * pair + k)], seq_length, store.pad, packed=False) for k in (0, 1)]
    sample = {key: torch.stack([rows[0][key], rows[1][key]]) for key in rows[0]}
    reference = store.reference[pair] if store.reference is not None else np.zeros(2)
    sample["pair"] = torch.tensor(pair, dtype=torch.int64)
    sample["ref_logps"] = torch.as_tensor(np.asarray(reference, dtype=np.float64))
    return sample


class PreferenceDataset(SFTDataset):
    """`num_samples` pairs drawn epoch by epoch from pairs [first, last) of a store (SFTDataset's order)."""

    def __init__(self, store: PairStore, first: int, last: int, num_samples: int, seq_length: int, seed: int,
                 split_index: int, pad: int) -> None:
        super().__init__(store, first, last, num_samples, seq_length, seed, split_index, pad, packed=False)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return pair_sample(self.store, int(self.conversations(index)[0]), self.seq_length)


class EveryPair(torch.utils.data.Dataset):
    """Pairs 0..N-1 in file order, padded by wrapping to `num_samples` (the reference pass's input)."""

    def __init__(self, store: PairStore, num_samples: int, seq_length: int) -> None:
        self.store, self.num_samples, self.seq_length = store, num_samples, seq_length

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return pair_sample(self.store, index % len(self.store), self.seq_length)


def pairs_source(cfg: DataConfig) -> Path:
    """The pairs file: data.sources names exactly one source whose prefix is a JSONL file."""
    path = Path(cfg.sources[0].prefix)
    if len(cfg.sources) != 1:
        problem = f"data.sources has {len(cfg.sources)} sources ({[s.name for s in cfg.sources]}); concatenate them"
    elif not path.name.lower().endswith(JSONL_SUFFIXES):
        problem = f"data.sources[0].prefix {str(path)!r} does not end in {list(JSONL_SUFFIXES)}"
    elif not path.is_file():
        problem = f"data.sources[0].prefix {str(path)!r} is not a file"
    else:
        return path
    raise DataValidationError(f"stage=dpo reads one JSONL file of pairs (the prefix is its path, suffix "
                              f"included): {problem}; e.g. {EXAMPLE}")


def build_preference_datasets(cfg: DataConfig, seq_length: int, train_samples: int, valid_samples: int, seed: int,
                              tokenizer: Optional[Tokenizer] = None):
    """(train_ds, valid_ds) of pair samples (valid_ds None when valid_samples == 0); both share one PairStore.

    Same contract as data.sft.build_sft_datasets. More train samples than train pairs repeat pairs (a second
    epoch), which published DPO recipes avoid: logged as a warning.
    """
    path = pairs_source(cfg)
    template = ChatTemplate(tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer), cfg.system_prompt)
    store = PairStore(path, template, max_ids=seq_length + 1)
    if cfg.strict and store.report.bad_input():
        raise store.report.strict_error("data.strict=true", f"every line of {path} was read")
    store.log_summary()
    bounds = split_bounds(cfg.split, len(store))
    datasets = []
    for index, wanted in enumerate((train_samples, valid_samples)):
        first, last = bounds[index] if bounds[index] is not None else (0, 0)
        if not wanted:
            datasets.append(None)
            continue
        if last <= first:
            name, share = SPLIT_NAMES[index], split_percentages(cfg.split)[index]
            raise DataValidationError(
                f"{wanted} {name} samples requested but data.split {cfg.split!r} ({share:.0%} {name}) leaves the "
                f"{name} split of {path} ({len(store)} usable pairs) empty; add pairs or widen that share, or "
                "train without validation: data.split='100,0,0' train.eval_interval=0")
        if index == 0 and wanted > last - first:
            logger.warning("DPO data: %d train samples from %d train pairs = %.2f epochs (DPO recipes train one: "
                           "train.train_iters = pairs / global_batch_size)", wanted, last - first,
                           wanted / (last - first))
        datasets.append(PreferenceDataset(store, first, last, wanted, seq_length,
                                          cfg.seed if cfg.seed is not None else seed, index, template.pad))
    return datasets[0], datasets[1]
