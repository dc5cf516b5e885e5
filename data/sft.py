"""Supervised fine-tuning data: ChatML conversations from JSONL, loss on the assistant's turns only.

Input (data.sources[0].prefix, the path of a .jsonl/.json/.ndjson file): one conversation per line,
  {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
Other keys of a line or a message are ignored.

Template (DESIGN.md section 4), each message: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, as ids
  [<|im_start|>] + encode(role) + encode("\\n") + encode(content) + [<|im_end|>] + encode("\\n").
- Special ids are inserted structurally and each piece is encoded as ordinary text, so a literal "<|im_end|>" in
  a code answer stays text (DESIGN.md's hazard). Qwen2.5-Coder's own finetuning/sft/binarize_data.py cuts a turn
  into the same pieces. The ids equal tokenizing the rendered string except where content starts with
  whitespace that the pre-tokenizer would merge with the role's "\\n" (content "\\nx": "\\n" "\\n" instead of
  one "\\n\\n" token).
- Loss (what the model learns): every assistant turn's content tokens and its <|im_end|>, nothing else: not
  <|im_start|>, the role or the "\\n" after it (inference supplies "<|im_start|>assistant\\n" itself), not system
  or user turns, not padding, and not the "\\n" after <|im_end|>: generation stops at <|im_end|> (the chat
  stages' generation_config.json, train/hf_convert.py), so that newline is template, never generated.
  Qwen's binarize_data.py differs: it also trains <|im_start|>/<|im_end|>/"\\n" of every turn and, by default,
  only the last assistant turn; DESIGN.md asks for assistant turns only, and every turn answers its context.

Samples, shaped like megatron's GPTDataset (train.trainer and data.loader take them unchanged): one
conversation per sample, cut to seq_length + 1 ids (counted: conversations and ids cut), padded with
<|endoftext|>; tokens = ids[:-1], labels = ids[1:], loss_mask[i] = 1 iff labels[i] is learnt, position_ids
0..seq_length-1. Padding follows the conversation under a causal mask, so it changes no real position's
logits, and the trainer's loss is the per-token mean over the global batch's masked tokens.

Skipping: nothing is dropped without a count. Malformed lines are counted by reason with file:LINE examples
(data.report.Report), logged, and with data.strict=true are one BadInputError listing them all. Blank lines,
and conversations whose every learnt token lies beyond seq_length + 1 (a row that teaches nothing), are
counted too but are never errors.

Cost: the file is read and tokenized once per rank when the dataset is built and kept in memory as int32 ids
plus one bool per id (5 bytes per kept token). Measured on this project's (shared, loaded) machine, one
core, 6,316 conversations of Python stdlib code (23.6 MB JSONL, 5.69M ids), parsing included: 1.3-1.7 s with
gigatoken (3.3-4.5M ids/s), 2.7-3.6 s with tiktoken (1.6-2.1M ids/s); 28 MB held. So ~100k conversations of
~1k ids cost ~25 s (gigatoken) to ~60 s (tiktoken) and 0.5 GB per rank; a set of ~1M+ conversations would
want a cached, memory-mapped index built by one rank (not built here).

Split and order: data.split divides the kept conversations in file order with megatron's rounding
(data.datasets.split_bounds), so train and valid never share a conversation and the split does not move with
the seed (shuffle a file sorted by topic beforehand). Each split serves any number of samples: sample i is
conversation perm_e[i mod N] with epoch e = i div N and perm_e a permutation seeded by (seed, split, e), so
epochs repeat in a fresh order and sample i is the same on every rank and after a resume (data.loader
addresses samples by index).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data.config import DataConfig, split_percentages
from data.datasets import SPLIT_NAMES, DataValidationError, split_bounds
from data.filters import check_text
from data.report import Report
from data.sources import JSONL_SUFFIXES, iter_units, parse_json_line
from data.tokenizer import EOD, IM_END, IM_START, Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# Malformed input: data.strict=true refuses these.
BAD_REASONS = ("malformed_json", "not_a_conversation", "missing_role", "unknown_role", "non_string_content",
               "invalid_utf8", "binary", "no_assistant_turn")
# Counted, never an error.
POLICY_REASONS = ("blank_line", "no_loss_after_truncation")


class ChatTemplate:
    """ChatML ids for one tokenizer; the structural pieces (special ids, roles, "\\n") are encoded once."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        missing = [name for name in (IM_START, IM_END, EOD) if name not in tokenizer.special]
        if missing:
            raise ValueError(f"tokenizer {tokenizer.name} lacks {missing}: ChatML needs <|im_start|>, <|im_end|> "
                             "and <|endoftext|> (use data.tokenizer=qwen2.5)")
        self.tokenizer = tokenizer
        self.im_start = tokenizer.special[IM_START]
        self.im_end = tokenizer.special[IM_END]
        self.pad = tokenizer.special[EOD]
        self.newline = tokenizer.encode_array("\n")
        self.roles = {role: tokenizer.encode_array(role) for role in ROLES}

    def encode(self, messages: Sequence[Dict[str, str]]) -> Tuple[np.ndarray, np.ndarray]:
        """(ids int32, learnt bool) of a whole conversation; learnt marks assistant content and its <|im_end|>."""
        contents = self.tokenizer.encode_batch([message["content"] for message in messages])
        ids: List[np.ndarray] = []
        learnt: List[np.ndarray] = []
        for message, content in zip(messages, contents):
            head = np.concatenate([[self.im_start], self.roles[message["role"]], self.newline])
            body = np.append(content, self.im_end)
            ids += [head, body, self.newline]
            learnt += [np.zeros(len(head), bool), np.full(len(body), message["role"] == "assistant"),
                       np.zeros(len(self.newline), bool)]
        return np.concatenate(ids).astype(np.int32), np.concatenate(learnt)


def parse_conversation(raw: bytes) -> Tuple[Optional[List[Dict[str, str]]], str, str]:
    """(messages, reason, detail) for one JSONL line; messages is None when the line is skipped for `reason`."""
    if not raw.strip():
        return None, "blank_line", ""
    record, error = parse_json_line(raw)
    if error is not None:
        return None, "malformed_json", error
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None, "not_a_conversation", 'expected {"messages": [{"role": ..., "content": ...}, ...]}'
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            return None, "missing_role", f"messages[{index}] has no string 'role'"
        if role not in ROLES:
            return None, "unknown_role", f"messages[{index}] role {role!r} is not one of {list(ROLES)}"
        if not isinstance(content, str):
            return None, "non_string_content", f"messages[{index}] content is {type(content).__name__}"
        reason, detail = check_text(content)
        if reason is not None:
            return None, reason, f"messages[{index}]: {detail}"
    if not any(message["role"] == "assistant" for message in messages):
        return None, "no_assistant_turn", f"{len(messages)} message(s), none from the assistant"
    return messages, "", ""


class ConversationStore:
    """Every kept conversation, cut to `max_ids` ids, as flat arrays (no per-conversation Python objects)."""

    def __init__(self, path: Path, template: ChatTemplate, max_ids: int) -> None:
        if not path.name.lower().endswith(JSONL_SUFFIXES):
            raise ValueError(f"{path}: SFT conversations are read from JSONL, a name ending in {list(JSONL_SUFFIXES)}")
        self.path = path
        self.report = Report(bad_reasons=BAD_REASONS, input=str(path), max_ids=max_ids)
        self.truncated_ids = 0
        self.learnt_ids = 0
        ids: List[np.ndarray] = []
        learnt: List[np.ndarray] = []
        for unit in iter_units([path], mode="file"):
            messages, reason, detail = parse_conversation(unit.raw)
            if messages is None:
                self.report.add_skip(reason, unit.origin, detail)
                continue
            conversation, targets = template.encode(messages)
            kept, cut = conversation[:max_ids], targets[:max_ids]
            if not cut[1:].any():  # a label is ids[1:]: the first id is never learnt
                self.report.add_skip("no_loss_after_truncation", unit.origin,
                                     f"{len(conversation)} ids; the first assistant token is past {max_ids}")
                continue
            self.truncated_ids += len(conversation) - len(kept)
            self.learnt_ids += int(cut[1:].sum())
            self.report.add_document(len(kept), {"chatml": (1, len(kept))}, over_budget=len(conversation) > max_ids)
            ids.append(kept)
            learnt.append(cut)
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in ids], out=self.offsets[1:])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.learnt = np.concatenate(learnt) if learnt else np.zeros(0, bool)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict:
        """Loader workers (DALI spawns its own) need the arrays only; the report stays with the builder."""
        return {**self.__dict__, "report": None}

    def get(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        begin, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[begin:end], self.learnt[begin:end]

    def log_summary(self) -> None:
        report = self.report
        logger.info("SFT data %s: %d conversations, %d ids (%d learnt); %d conversation(s) cut to %d ids "
                    "(%d ids dropped); skipped: %s", self.path, report.documents, report.tokens, self.learnt_ids,
                    report.over_budget, report.settings["max_ids"], self.truncated_ids,
                    ", ".join(f"{k} {v['count']}" for k, v in sorted(report.skipped.items())) or "none")
        for reason, entry in sorted(report.skipped.items()):
            level = logging.INFO if reason in POLICY_REASONS else logging.WARNING  # malformed input: warn
            logger.log(level, "SFT data: skipped %d line(s) as %s, e.g. %s", entry["count"], reason,
                       "; ".join(entry["examples"]))


def make_sample(ids: np.ndarray, learnt: np.ndarray, seq_length: int, pad: int) -> Dict[str, torch.Tensor]:
    """GPTDataset-shaped item from a conversation of <= seq_length + 1 ids (padded with `pad`, never learnt)."""
    if len(ids) > seq_length + 1:
        raise ValueError(f"conversation of {len(ids)} ids does not fit seq_length {seq_length} + 1")
    row = np.full(seq_length + 1, pad, dtype=np.int64)
    row[:len(ids)] = ids
    target = np.zeros(seq_length + 1, dtype=np.float32)
    target[:len(ids)] = learnt
    return {
        "tokens": torch.from_numpy(row[:-1].copy()),
        "labels": torch.from_numpy(row[1:].copy()),
        "loss_mask": torch.from_numpy(target[1:].copy()),
        "position_ids": torch.arange(seq_length, dtype=torch.int64),
    }


class SFTDataset(torch.utils.data.Dataset):
    """`num_samples` samples drawn epoch by epoch from conversations [first, last) of a store (one split)."""

    def __init__(self, store: ConversationStore, first: int, last: int, num_samples: int, seq_length: int,
                 seed: int, split_index: int, pad: int) -> None:
        if last <= first:
            raise ValueError(f"empty conversation range [{first}, {last})")
        self.store, self.first, self.count = store, first, last - first
        self.num_samples, self.seq_length = num_samples, seq_length
        self.seed, self.split_index, self.pad = seed, split_index, pad
        self._permutation: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return self.num_samples

    def conversation(self, index: int) -> int:
        """Store index of the conversation behind sample `index`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range [0, {self.num_samples})")
        epoch, position = divmod(index, self.count)
        if self._permutation[0] != epoch:  # one epoch cached: the loader reads samples in order
            order = np.random.default_rng([self.seed, self.split_index, epoch]).permutation(self.count)
            self._permutation = (epoch, order)
        return self.first + int(self._permutation[1][position])

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        ids, learnt = self.store.get(self.conversation(index))
        return make_sample(ids, learnt, self.seq_length, self.pad)


def sft_source(cfg: DataConfig) -> Path:
    """The conversations file: data.sources must name exactly one source whose prefix is a JSONL file."""
    example = "data.sources='[{name: chat, prefix: /data/sft.jsonl, weight: 1.0}]'"
    if len(cfg.sources) != 1:
        raise DataValidationError(
            f"stage=sft reads one JSONL file of conversations; data.sources has {len(cfg.sources)} "
            f"({[s.name for s in cfg.sources]}). Concatenate the sets into one file and set {example}")
    path = Path(cfg.sources[0].prefix)
    if not path.name.lower().endswith(JSONL_SUFFIXES) or not path.is_file():
        problem = (f"does not end in {list(JSONL_SUFFIXES)}" if not path.name.lower().endswith(JSONL_SUFFIXES)
                   else "is not a file")
        raise DataValidationError(
            f"stage=sft: data.sources[0].prefix {str(path)!r} {problem}; for SFT the prefix is the path of the "
            f"JSONL conversations file, suffix included, e.g. {example}")
    return path


def build_sft_datasets(cfg: DataConfig, seq_length: int, train_samples: int, valid_samples: int, seed: int,
                       tokenizer: Optional[Tokenizer] = None):
    """(train_ds, valid_ds) of SFT samples; valid_ds is None when valid_samples == 0.

    Same contract as data.datasets.build_pretrain_datasets. seed: the run's seed (cfg.seed overrides it).
    Raises BadInputError with data.strict on malformed lines, DataValidationError when a split is empty.
    """
    if seq_length < 1 or train_samples < 1 or valid_samples < 0:
        raise ValueError(f"need seq_length >= 1, train_samples >= 1, valid_samples >= 0; got "
                         f"{seq_length}, {train_samples}, {valid_samples}")
    path = sft_source(cfg)
    template = ChatTemplate(tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer))
    store = ConversationStore(path, template, max_ids=seq_length + 1)
    if cfg.strict and store.report.bad_input():
        raise store.report.strict_error("data.strict=true", f"every line of {path} was read")
    store.log_summary()
    bounds = split_bounds(cfg.split, len(store))
    shares = split_percentages(cfg.split)
    datasets = []
    for index, wanted in enumerate((train_samples, valid_samples)):
        first, last = bounds[index] if bounds[index] is not None else (0, 0)
        if not wanted:
            datasets.append(None)
            continue
        if last <= first:
            name = SPLIT_NAMES[index]
            raise DataValidationError(
                f"{wanted} {name} samples requested but data.split {cfg.split!r} ({shares[index]:.0%} {name}) "
                f"leaves the {name} split of {path} ({len(store)} usable conversations) empty. Fix: add "
                "conversations or widen that share (e.g. data.split='90,10,0'); to train without validation set "
                "data.split='100,0,0' train.eval_interval=0")
        datasets.append(SFTDataset(store, first, last, wanted, seq_length, cfg.seed if cfg.seed is not None else seed,
                                   index, template.pad))
    return datasets[0], datasets[1]
