"""Fill-in-the-middle as a dataset layer over megatron-core's GPTDataset (megatron-core has no FIM).

Per document, with probability `rate`, the text is cut at two random CHARACTER positions into prefix,
middle and suffix, each piece is tokenized on its own, and the document becomes
    PSM (default, Qwen2.5-Coder's format):  <|fim_prefix|> pre <|fim_suffix|> suf <|fim_middle|> mid
    SPM (share `spm_rate`, StarCoder's variant): <|fim_prefix|> <|fim_suffix|> suf <|fim_middle|> pre mid
Qwen's README, examples and FIM benchmarks prompt PSM only, so spm_rate defaults to 0. SPM is "variant 2" of
Bavarian et al. 2022 as StarCoder trains it: the sentinels keep the PSM order and pre+mid stay contiguous, so in
both modes each sentinel appears once, in the order prefix < suffix < middle.

Decisions:
- Character cuts, pieces tokenized separately (Megatron-LM's GPTFIMDataset and the StarCoder recipe do the
  same): at inference a user's prefix ends wherever the cursor is, often inside what would be one token of the
  whole file, and is tokenized on its own; token-boundary cuts would never show the model such a prefix. Cost:
  one decode and three encodes of each FIM document's tokens in the loader workers. bench/fim_throughput.py
  (8K samples, rate 0.5, idle 2-core machine): FIM keeps 0.10-0.18 of plain GPTDataset's samples/s (token cuts
  kept 0.44-0.56), i.e. ~1,300 samples/s (~10 Mtok/s) per loader worker instead of ~5,000.
- Exact length by construction: every eod-separated segment of the packed window (GPTDataset packs
  seq_length+1 tokens across documents) is replaced by a rearranged segment of exactly its own length. The
  three sentinels and any growth from re-tokenizing (about 2 tokens: each cut can split a token) are paid by
  cutting the END of the suffix (StarCoder's truncate-or-pad), and when the suffix is too short, the START of
  the prefix: a suffix cut at its end and a prefix starting mid-file are what inference shows too (Qwen's FIM
  benchmark keeps the last 1,472 prefix tokens and the first 512 suffix tokens). Paying from the suffix alone
  would leave ~7 % of 150-token documents without FIM (suffix shorter than the price) and bias the rate. A
  segment shorter than the price stays as it is. A segment that re-tokenizes shorter is padded with
  <|fim_pad|> at its end, and every <|fim_pad|> input or label is loss-masked. Segment boundaries, and with
  them every <|file_sep|> and eod, stay where GPTDataset put them.
- Only segments that decode to valid UTF-8 and hold no special id are rearranged: a window that starts or ends
  inside a multi-byte character, or a segment carrying structure (<|file_sep|> in a file-level source),
  cannot round-trip through text. For code (mostly ASCII) that is well under 1 % of documents.
- Seeded per sample: Generator(SeedSequence([seed, split, index, hash of the source's file name])), so sample i
  is the same after a restart and for any data-parallel size (the index is global, not per rank). Each segment
  always consumes the same 4 draws, so one segment's choice never shifts another's.
- Repo-level samples (`repo_level=True`): FIM only inside the content of the last file of a segment, i.e. the
  tokens after the last <|file_sep|> and its path line (up to the first token containing a newline). A segment
  without <|file_sep|> (a window that starts mid-repository) gets no FIM.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from data.tokenizer import EOD, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, Tokenizer, newline_token_mask

DRAWS_PER_SEGMENT = 4  # fim?, spm?, cut 1, cut 2
SENTINELS_PER_DOCUMENT = 3


@dataclass(frozen=True)
class FIMSpec:
    """FIM settings plus the ids it needs (defaults: Qwen2.5's table)."""

    rate: float = 0.5  # probability that a document is rearranged
    spm_rate: float = 0.0  # share of FIM documents in SPM order (StarCoder's variant); Qwen uses PSM only
    repo_level: bool = False  # FIM only in the last file of a repo-level document
    prefix_id: int = SPECIAL_TOKENS[FIM_PREFIX]
    middle_id: int = SPECIAL_TOKENS[FIM_MIDDLE]
    suffix_id: int = SPECIAL_TOKENS[FIM_SUFFIX]
    pad_id: int = SPECIAL_TOKENS[FIM_PAD]
    eod_id: int = SPECIAL_TOKENS[EOD]
    file_sep_id: int = SPECIAL_TOKENS[FILE_SEP]
    special_ids: Tuple[int, ...] = tuple(SPECIAL_TOKENS.values())  # a segment holding any of these is kept as is

    def __post_init__(self) -> None:
        for name in ("rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FIM {name} must be in [0, 1], got {value}")


def sample_rng(seed: int, split: int, index: int, salt: int = 0) -> np.random.Generator:
    """The FIM draws of one sample: a function of (seed, split, global sample index, dataset salt) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, split, index, salt]))


def fim_region_start(segment: np.ndarray, spec: FIMSpec, newline_mask: Optional[np.ndarray]) -> int:
    """Where FIM may start in a segment; -1: no FIM for this segment."""
    if not spec.repo_level:
        return 0
    seps = np.flatnonzero(segment == spec.file_sep_id)
    if len(seps) == 0:
        return -1
    after = segment[seps[-1] + 1 :]
    newlines = np.flatnonzero(newline_mask[after])
    if len(newlines) == 0:
        return -1  # the path line of the last file is cut off
    return int(seps[-1] + 1 + newlines[0] + 1)


def rearrange(region: np.ndarray, spm: bool, cut1: float, cut2: float, spec: FIMSpec,
              tokenizer: Tokenizer) -> Optional[np.ndarray]:
    """The FIM form of `region`, exactly len(region) tokens, or None when it cannot be rearranged.

    cut1, cut2 in [0, 1): the two character positions as fractions of the region's text length.
    """
    if region.max() >= min(spec.special_ids) and np.isin(region, spec.special_ids).any():
        return None
    try:
        text = tokenizer.decode_bytes(region).decode("utf-8")
    except UnicodeDecodeError:
        return None
    n = len(text)
    i, j = sorted((int(cut1 * (n + 1)), int(cut2 * (n + 1))))
    pre, mid, suf = tokenizer.encode_batch([text[:i], text[i:j], text[j:]])
    extra = SENTINELS_PER_DOCUMENT + len(pre) + len(mid) + len(suf) - len(region)
    if extra > len(pre) + len(suf):
        return None  # too short to pay for the sentinels
    from_suffix = min(max(extra, 0), len(suf))
    suf = suf[: len(suf) - from_suffix]
    pre = pre[max(extra, 0) - from_suffix :]
    pad = np.full(max(0, -extra), spec.pad_id)
    p, m, s = [spec.prefix_id], [spec.middle_id], [spec.suffix_id]
    parts = [p, s, suf, m, pre, mid, pad] if spm else [p, pre, s, suf, m, mid, pad]
    return np.concatenate([np.asarray(x, dtype=region.dtype) for x in parts])


def apply_fim(window: np.ndarray, spec: FIMSpec, rng: np.random.Generator, tokenizer: Tokenizer,
              newline_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
    """FIM over one packed window; returns (new window of the same length, number of FIM documents).

    Every eod-separated segment keeps its length and place. Negative ids (GPTDataset's padding of a short
    last sample) are left untouched at the end.
    """
    if spec.repo_level and newline_mask is None:
        raise ValueError("repo-level FIM needs newline_mask (data.tokenizer.newline_token_mask)")
    negative = np.flatnonzero(window < 0)
    valid = int(negative[0]) if len(negative) else len(window)
    eods = np.flatnonzero(window[:valid] == spec.eod_id)
    starts = np.concatenate([[0], eods + 1])
    ends = np.concatenate([eods, [valid]])
    draws = rng.random((len(starts), DRAWS_PER_SEGMENT))
    out = window.copy()
    done = 0
    for (a, b), (fim, spm, cut1, cut2) in zip(zip(starts.tolist(), ends.tolist()), draws):
        if b <= a or fim >= spec.rate:
            continue
        start = fim_region_start(window[a:b], spec, newline_mask)
        if not 0 <= start < b - a:
            continue
        region = rearrange(window[a + start : b], spm < spec.spm_rate, cut1, cut2, spec, tokenizer)
        if region is not None:
            out[a + start : b] = region
            done += 1
    return out, done


@functools.lru_cache(maxsize=4)
def _newline_mask_for(tokenizer) -> np.ndarray:
    return newline_token_mask(tokenizer)


@dataclass
class FIMGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus FIM settings (the index cache does not depend on them: FIM runs per sample).

    fim_rates: the FIM rate of each source, keyed by its prefix as given in `blend` (sources differ:
    code gets FIM, text and math by default do not).
    """

    fim_rates: Dict[str, float] = field(default_factory=dict)
    fim_spm_rate: float = 0.0
    fim_repo_level: bool = False


class FIMGPTDataset(GPTDataset):
    """GPTDataset whose windows get FIM; items have the usual tokens/labels/loss_mask/position_ids.

    <|fim_pad|> positions (inputs and labels) are loss-masked. Works as the `cls` of
    BlendedMegatronDatasetBuilder.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        if self.dataset_path not in cfg.fim_rates:
            raise KeyError(f"no FIM rate for source {self.dataset_path!r} (fim_rates has {sorted(cfg.fim_rates)})")
        self.fim = FIMSpec(
            rate=cfg.fim_rates[self.dataset_path], spm_rate=cfg.fim_spm_rate, repo_level=cfg.fim_repo_level,
            **_spec_ids(cfg.tokenizer),
        )
        self._newline_mask = _newline_mask_for(cfg.tokenizer) if cfg.fim_repo_level and self.fim.rate else None
        # Sources draw differently for the same sample index; the salt comes from the prefix's file name
        # only, so moving the data directory does not change any sample.
        name = os.path.basename(self.dataset_path or "")
        self._salt = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")

    def _query_document_sample_shuffle_indices(self, idx: int) -> Tuple[np.ndarray, np.ndarray]:
        text, document_ids = super()._query_document_sample_shuffle_indices(idx)
        if self.fim.rate > 0:
            rng = sample_rng(self.config.random_seed, self.index_split.value, int(idx), self._salt)
            text, _ = apply_fim(text, self.fim, rng, self.config.tokenizer, self._newline_mask)
        return text, document_ids

    def __getitem__(self, idx: Optional[int]) -> Dict[str, torch.Tensor]:
        item = super().__getitem__(idx)
        # A new tensor: GPTDataset returns its cached loss mask itself for the first sample of a process,
        # and masking that in place would leak this sample's pads into every later sample.
        pads = (item["labels"] == self.fim.pad_id) | (item["tokens"] == self.fim.pad_id)
        item["loss_mask"] = item["loss_mask"].masked_fill(pads, 0.0)
        return item


def _spec_ids(tokenizer) -> Dict[str, object]:
    special = getattr(tokenizer, "special", None) or SPECIAL_TOKENS
    names = {"prefix_id": FIM_PREFIX, "middle_id": FIM_MIDDLE, "suffix_id": FIM_SUFFIX, "pad_id": FIM_PAD,
             "file_sep_id": FILE_SEP}
    missing = [name for name in names.values() if name not in special]
    if missing:
        raise ValueError(f"the tokenizer has no {missing}: FIM needs them (use fim_rate=0 or a Qwen2.5 tokenizer)")
    ids: Dict[str, object] = {key: special[name] for key, name in names.items()}
    ids["eod_id"] = tokenizer.eod
    ids["special_ids"] = tuple(sorted(set(special.values()) | {tokenizer.eod}))
    return ids
