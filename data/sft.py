"""Supervised fine-tuning data: ChatML conversations from JSONL, loss on the assistant's turns only.

Input (data.sources[0].prefix, the path of a .jsonl/.json/.ndjson file): one conversation per line,
  {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
Other keys of a line or a message are ignored.

Template: Qwen2.5's chat format (what its tokenizer's chat template, apply_chat_template and serving stacks
render), each message `<|im_start|>{role}\n{content}<|im_end|>\n`, after a default system turn
`<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n` when the
first message is not a system message (data.system_prompt: another text, or '' for none). CHAT_TEMPLATE is the
same format as a Jinja chat template; data.hf_export writes it into exported tokenizers. As ids:
  context turn (system, user): [<|im_start|>] + encode(role) + encode("\n" + content) + [<|im_end|>] + encode("\n")
  assistant turn: [<|im_start|>] + encode("assistant") + encode("\n") + encode(content) + [<|im_end|>] + encode("\n")
- Special ids are inserted structurally and text is encoded as ordinary text, so a literal "<|im_end|>" in code
  stays text (a chat template rendered to a string and then tokenized turns it into a control token; the one
  place where this renderer and apply_chat_template differ by design). Qwen2.5-Coder's own SFT binarizer cuts a
  turn into similar pieces.
- Context turns encode "\n" + content as one piece, exactly as the whole rendered string tokenizes (the
  pre-tokenizer merges "\n" with a leading line break of the content: "\n\nx" -> "\n\n", "x"). Assistant
  content is encoded alone, because that is what the model generates after the prompt "<|im_start|>assistant\n"
  ends in a lone "\n" token; the two agree unless the answer itself starts with whitespace and a line break.
  tests/test_sft_data.py checks equality with transformers' apply_chat_template on the exported tokenizer.
- Loss (what the model learns): every assistant turn's content tokens and its <|im_end|>, nothing else: not
  <|im_start|>, the role or the "\n" after it (inference supplies "<|im_start|>assistant\n" itself), not system
  or user turns, not padding, and not the "\n" after <|im_end|>: generation stops at <|im_end|> (the chat
  stages' generation_config.json, written by hf_interop.convert), so that newline is template, never generated.
  Qwen's binarizer differs: it also trains <|im_start|>/<|im_end|>/"\n" of every turn and, by default, only the
  last assistant turn; here every assistant turn is learnt, as each answers its context.
- Reuse: ChatTemplate.render(messages, add_generation_prompt) is the one renderer (the preference stage renders
  prompts with it and answers with ChatTemplate.reply).

Samples, shaped like megatron's GPTDataset (train.trainer and data.loader take them unchanged): each conversation
is cut to seq_length + 1 ids (counted: conversations and ids cut); a row of seq_length + 1 ids holds one or more
whole conversations and is padded with <|endoftext|>; tokens = ids[:-1], labels = ids[1:], loss_mask[i] = 1 iff
labels[i] is learnt (the label crossing into the next conversation is its <|im_start|>, never learnt).
- Packed (data.packing=true, the default): consecutive conversations of the epoch's order share a row while
  they fit (next_fit), and position_ids restart at 0 at every conversation and at the padding. train.trainer
  turns those restarts into megatron's packed-sequence (thd) boundaries, so attention and RoPE restart per
  conversation and every token's loss is what it is with the conversation alone (tests/test_sft_packing.py).
  Cost of the packing itself: one pass over the conversation lengths per epoch.
- Unpacked: one conversation per row, position_ids 0..seq_length-1; padding follows the conversation under
  the causal mask, so it changes no real position's logits.
The trainer's loss is the per-token mean over the global batch's masked tokens either way.

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
the seed (shuffle a file sorted by topic beforehand). Each split serves any number of samples (rows): epoch e
visits its N conversations in the order perm_e, a permutation seeded by (seed, split, e), cut into R_e rows
(R_e = N unpacked); sample i is row i - (R_0 + ... + R_{e-1}) of the epoch e it falls in. So epochs repeat in
a fresh order and sample i is the same on every rank and after a resume (data.loader addresses samples by
index).
"""
from __future__ import annotations

import hashlib
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


DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5's chat format as a Hugging Face chat template (Jinja), written into exported tokenizers
# (data.hf_export): the default system turn unless the first message is a system message, every message as
# <|im_start|>{role}\n{content}<|im_end|>\n, and "<|im_start|>assistant\n" for add_generation_prompt. Tool
# calling is not rendered: a `tools` argument is refused rather than silently dropped.
CHAT_TEMPLATE = (
    "{%- if tools %}{{ raise_exception('this chat template does not render tools') }}{% endif %}"
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class ChatTemplate:
    """ChatML ids for one tokenizer, Qwen2.5's chat format; the structural pieces are encoded once.

    system_prompt: inserted as the first turn when a conversation does not start with a system message
    (None: Qwen2.5's DEFAULT_SYSTEM_PROMPT, as its chat template does; "": never).
    """

    def __init__(self, tokenizer: Tokenizer, system_prompt: Optional[str] = None) -> None:
        missing = [name for name in (IM_START, IM_END, EOD) if name not in tokenizer.special]
        if missing:
            raise ValueError(f"tokenizer {tokenizer.name} lacks {missing}: ChatML needs <|im_start|>, <|im_end|> "
                             "and <|endoftext|> (use data.tokenizer=qwen2.5)")
        self.tokenizer = tokenizer
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.im_start = tokenizer.special[IM_START]
        self.im_end = tokenizer.special[IM_END]
        self.pad = tokenizer.special[EOD]
        self.newline = tokenizer.encode_array("\n")
        self.roles = {role: tokenizer.encode_array(role) for role in ROLES}
        self.generation_prompt = self._head("assistant")

    def _head(self, role: str) -> np.ndarray:
        return np.concatenate([[self.im_start], self.roles[role], self.newline]).astype(np.int32)

    def reply(self, content_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(ids, learnt) of an assistant turn after its generation prompt: content, <|im_end|> (learnt), "\n"."""
        ids = np.concatenate([content_ids, [self.im_end], self.newline]).astype(np.int32)
        learnt = np.ones(len(ids), bool)
        learnt[-len(self.newline):] = False
        return ids, learnt

    def render(self, messages: Sequence[Dict[str, str]],
               add_generation_prompt: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """(ids int32, learnt bool) of a conversation; learnt marks assistant content and its <|im_end|>.

        add_generation_prompt appends "<|im_start|>assistant\n" (never learnt), what inference feeds the model.
        """
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        # Context turns: "\n" + content as one piece, which is how the whole rendered string tokenizes.
        # Assistant turns: content alone, which is what the model generates after "<|im_start|>assistant\n".
        texts = [m["content"] if m["role"] == "assistant" else "\n" + m["content"] for m in messages]
        ids: List[np.ndarray] = []
        learnt: List[np.ndarray] = []
        for message, content in zip(messages, self.tokenizer.encode_batch(texts)):
            if message["role"] == "assistant":
                head = self._head("assistant")
                body, body_learnt = self.reply(content)
            else:
                head = np.concatenate([[self.im_start], self.roles[message["role"]]])
                body = np.concatenate([content, [self.im_end], self.newline])
                body_learnt = np.zeros(len(body), bool)
            ids += [head, body]
            learnt += [np.zeros(len(head), bool), body_learnt]
        if add_generation_prompt:
            ids.append(self.generation_prompt)
            learnt.append(np.zeros(len(self.generation_prompt), bool))
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, bool)
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


class RaggedRows:
    """Rows of ids of different lengths, each with its mask of learnt labels, as three flat arrays (row offsets,
    ids, learnt): no Python object per row, so workers copy a few arrays. ConversationStore keeps one row per
    conversation, data.preference.PairStore two per pair."""

    path: Path
    report: Optional[Report]

    def _keep_rows(self, ids: List[np.ndarray], learnt: List[np.ndarray]) -> None:
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in ids], out=self.offsets[1:])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.learnt = np.concatenate(learnt) if learnt else np.zeros(0, bool)

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids, learnt) of row `index`."""
        begin, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[begin:end], self.learnt[begin:end]

    def digest(self) -> str:
        """sha256 of the rendered, cut rows: changes with the file, tokenizer, system prompt or seq_length."""
        digest = hashlib.sha256()
        for array in (self.offsets, self.ids, self.learnt):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def __getstate__(self) -> dict:
        """Loader workers (DALI spawns its own) need the arrays only; the report stays with the builder."""
        return {**self.__dict__, "report": None}


class ConversationStore(RaggedRows):
    """Every kept conversation, cut to `max_ids` ids, one row each."""

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
            conversation, targets = template.render(messages)
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
        self._keep_rows(ids, learnt)

    def __len__(self) -> int:
        return self.num_rows

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


def make_sample(conversations: Sequence[Tuple[np.ndarray, np.ndarray]], seq_length: int, pad: int,
                packed: bool) -> Dict[str, torch.Tensor]:
    """GPTDataset-shaped item from conversations of <= seq_length + 1 ids together, padded with `pad`.

    packed: position ids restart at 0 where each conversation (and the padding) begins; they are what
    train.objectives.lm.pack_micro_batch reads the boundaries from. Otherwise 0..seq_length-1 (one conversation).
    """
    lengths = [len(ids) for ids, _ in conversations]
    if sum(lengths) > seq_length + 1 or (len(lengths) > 1 and not packed):
        raise ValueError(f"conversations of {lengths} ids do not fit one row of seq_length {seq_length} + 1"
                         + ("" if packed else " (unpacked: one conversation per row)"))
    padding = seq_length + 1 - sum(lengths)
    row = np.concatenate([ids for ids, _ in conversations] + [np.full(padding, pad)]).astype(np.int64)
    target = np.concatenate([learnt for _, learnt in conversations] + [np.zeros(padding, bool)])
    if packed:
        positions = np.concatenate([np.arange(n) for n in [*lengths, padding]])
    else:
        positions = np.arange(seq_length + 1)
    return {
        "tokens": torch.from_numpy(row[:-1].copy()),
        "labels": torch.from_numpy(row[1:].copy()),
        "loss_mask": torch.from_numpy(target[1:].astype(np.float32)),
        "position_ids": torch.from_numpy(positions[:-1].astype(np.int64)),
    }


def next_fit(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Row boundaries packing `lengths` in order: row r holds items [bounds[r], bounds[r+1]).

    Next-fit (a row is closed when the next item does not fit) keeps the shuffled order, so a conversation's
    row depends only on the epoch's permutation; every item must be <= capacity.
    """
    bounds, used = [0], 0
    for index, length in enumerate(lengths.tolist()):
        if used + length > capacity and used:
            bounds.append(index)
            used = 0
        used += length
    bounds.append(len(lengths))
    return np.asarray(bounds, dtype=np.int64)


class SFTDataset(torch.utils.data.Dataset):
    """`num_samples` rows drawn epoch by epoch from conversations [first, last) of a store (one split).

    Epoch e visits every conversation once in the order perm_e (seeded by seed, split, e); packed, consecutive
    conversations of that order share a row (next_fit), so an epoch has fewer rows than conversations.
    """

    def __init__(self, store: ConversationStore, first: int, last: int, num_samples: int, seq_length: int,
                 seed: int, split_index: int, pad: int, packed: bool = True) -> None:
        if last <= first:
            raise ValueError(f"empty conversation range [{first}, {last})")
        self.store, self.first, self.count = store, first, last - first
        self.num_samples, self.seq_length = num_samples, seq_length
        self.seed, self.split_index, self.pad, self.packed = seed, split_index, pad, packed
        self._rows_per_epoch: List[int] = []
        self._epoch: Tuple[int, Optional[np.ndarray], Optional[np.ndarray]] = (-1, None, None)

    def __len__(self) -> int:
        return self.num_samples

    def _layout(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(store indices in epoch order, row bounds into them); the last epoch is cached (reads are in order)."""
        if self._epoch[0] != epoch:
            order = self.first + np.random.default_rng([self.seed, self.split_index, epoch]).permutation(self.count)
            if self.packed:
                bounds = next_fit(np.diff(self.store.offsets)[order], self.seq_length + 1)
            else:
                bounds = np.arange(self.count + 1)
            self._epoch = (epoch, order, bounds)
        return self._epoch[1], self._epoch[2]

    def conversations(self, index: int) -> np.ndarray:
        """Store indices of the conversations in sample (row) `index`, in row order."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range [0, {self.num_samples})")
        epoch = 0
        while True:
            if epoch == len(self._rows_per_epoch):
                self._rows_per_epoch.append(len(self._layout(epoch)[1]) - 1)
            if index < self._rows_per_epoch[epoch]:
                break
            index -= self._rows_per_epoch[epoch]
            epoch += 1
        order, bounds = self._layout(epoch)
        return order[bounds[index]:bounds[index + 1]]

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        pieces = [self.store.row(int(c)) for c in self.conversations(index)]
        return make_sample(pieces, self.seq_length, self.pad, self.packed)


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
    template = ChatTemplate(tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer), cfg.system_prompt)
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
                                   index, template.pad, cfg.packing))
    return datasets[0], datasets[1]
