"""Fill-in-the-middle as a dataset layer over megatron-core's GPTDataset (megatron-core has no FIM).

Per document, with probability `rate`, a document is rearranged around two random cut points:
    PSM:  <|fim_prefix|> pre <|fim_suffix|> suf <|fim_middle|> mid
    SPM:  <|fim_prefix|> <|fim_suffix|> suf <|fim_middle|> pre mid     (share `spm_rate` of FIM documents)
SPM is the "variant 2" of Bavarian et al. 2022 used by StarCoder and Megatron-LM: the three sentinels keep
the PSM order and pre+mid stay contiguous, so in both modes the sentinels appear once, in the order
prefix < suffix < middle, and the original is (text after <|fim_middle|>) ordered back as pre, mid, suf.

Decisions:
- Cut on token boundaries, never re-tokenize. The .bin holds tokens; a character-level cut would need a
  decode + two encodes per document in every loader worker (~0.3 ms per 1K tokens with tiktoken) and
  would change the sample length unpredictably. Token cuts are free and exact; the cost is that a middle
  never starts inside a token (at inference the cursor usually sits at a token boundary anyway).
- A GPTDataset sample is a window of seq_length+1 tokens packed across documents. Documents are the
  eod-separated segments of the window (the first and last are usually partial) and each is treated
  independently. FIM adds 3 sentinels per FIM document; the window keeps its exact length by trimming
  its tail (the last, usually partial, segment) *before* rearranging, so all sentinels survive. If the
  trim removes a whole FIM segment its 3 tokens are returned as <|fim_pad|> at the end, loss-masked.
  Cost: 3 tokens per FIM document, e.g. 0.5 x 3 docs x 3 / 8,193 = 0.05 % of an 8K window.
- Seeded per sample: Generator(SeedSequence([seed, split, index, hash of the source's file name])), so
  sample i is the same after a restart and for any data-parallel size (the index is global, not per rank).
- Repo-level samples (`repo_level=True`): FIM only inside the content of the last file of a segment: the
  region after the last <|file_sep|> and its path line (up to the first token containing a newline).
  A segment without <|file_sep|> (a window that starts mid-repository) gets no FIM.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from data.tokenizer import EOD, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, newline_token_mask

DRAWS_PER_SEGMENT = 4  # fim?, spm?, cut 1, cut 2: always drawn, so one segment's choice never shifts another's


@dataclass(frozen=True)
class FIMSpec:
    """FIM settings plus the ids it needs (defaults: Qwen2.5's table)."""

    rate: float = 0.5  # probability that a document is rearranged
    spm_rate: float = 0.5  # share of FIM documents in SPM order (the rest PSM)
    repo_level: bool = False  # FIM only in the last file of a repo-level document
    prefix_id: int = SPECIAL_TOKENS[FIM_PREFIX]
    middle_id: int = SPECIAL_TOKENS[FIM_MIDDLE]
    suffix_id: int = SPECIAL_TOKENS[FIM_SUFFIX]
    pad_id: int = SPECIAL_TOKENS[FIM_PAD]
    eod_id: int = SPECIAL_TOKENS[EOD]
    file_sep_id: int = SPECIAL_TOKENS[FILE_SEP]

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


def rearrange(segment: np.ndarray, start: int, spm: bool, cut1: float, cut2: float, spec: FIMSpec) -> np.ndarray:
    """One FIM document: segment[:start] stays in front, segment[start:] is split at two token cuts."""
    head, region = segment[:start], segment[start:]
    n = len(region)
    i, j = sorted((int(cut1 * (n + 1)), int(cut2 * (n + 1))))
    pre, mid, suf = region[:i], region[i:j], region[j:]
    p, m, s = ([spec.prefix_id], [spec.middle_id], [spec.suffix_id])
    if spm:
        parts = [head, p, s, suf, m, pre, mid]
    else:
        parts = [head, p, pre, s, suf, m, mid]
    return np.concatenate([np.asarray(x, dtype=segment.dtype) for x in parts])


def _split_segments(body: np.ndarray, eod: int) -> List[np.ndarray]:
    """Eod-separated segments (eods excluded): k eods give k+1 segments, some possibly empty."""
    parts = np.split(body, np.flatnonzero(body == eod))
    return [part if k == 0 else part[1:] for k, part in enumerate(parts)]


def apply_fim(window: np.ndarray, spec: FIMSpec, rng: np.random.Generator,
              newline_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
    """FIM over one packed window; returns (new window of the same length, number of FIM documents).

    Negative ids (GPTDataset's padding of a short last sample) are left untouched at the end.
    """
    if spec.repo_level and newline_mask is None:
        raise ValueError("repo-level FIM needs newline_mask (data.tokenizer.newline_token_mask)")
    negative = np.flatnonzero(window < 0)
    valid = int(negative[0]) if len(negative) else len(window)
    body = window[:valid]
    segments = _split_segments(body, spec.eod_id)
    draws = rng.random((len(segments), DRAWS_PER_SEGMENT))

    def region(k: int, segment: np.ndarray) -> int:
        """Start of the FIM region of segment k, or -1 when it is not rearranged."""
        if len(segment) == 0 or draws[k, 0] >= spec.rate:
            return -1
        start = fim_region_start(segment, spec, newline_mask)
        return start if 0 <= start < len(segment) else -1

    # Pay 3 tokens per FIM document by trimming the window's tail first. Trimming can only cancel FIM
    # documents (never add one), so the result is at most `valid` long; the rest is <|fim_pad|>.
    budget = 3 * sum(region(k, segment) >= 0 for k, segment in enumerate(segments))
    if budget:
        segments = _split_segments(body[: max(0, valid - budget)], spec.eod_id)
    out: List[np.ndarray] = []
    done = 0
    for k, segment in enumerate(segments):
        if k:
            out.append(np.array([spec.eod_id], dtype=window.dtype))
        start = region(k, segment)
        if start >= 0:
            segment = rearrange(segment, start, draws[k, 1] < spec.spm_rate, draws[k, 2], draws[k, 3], spec)
            done += 1
        out.append(segment)
    result = np.concatenate(out)
    pad = np.full(valid - len(result), spec.pad_id, dtype=window.dtype)
    return np.concatenate([result, pad, window[valid:]]), done


@functools.lru_cache(maxsize=4)
def _newline_mask_for(tokenizer) -> np.ndarray:
    return newline_token_mask(tokenizer)


@dataclass
class FIMGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus FIM settings (the index cache does not depend on them: FIM runs per sample)."""

    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    fim_repo_level: bool = False


class FIMGPTDataset(GPTDataset):
    """GPTDataset whose windows get FIM; items have the usual tokens/labels/loss_mask/position_ids.

    <|fim_pad|> labels are loss-masked. Works as the `cls` of BlendedMegatronDatasetBuilder.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.fim = FIMSpec(
            rate=cfg.fim_rate, spm_rate=cfg.fim_spm_rate, repo_level=cfg.fim_repo_level,
            **_spec_ids(cfg.tokenizer),
        )
        self._newline_mask = _newline_mask_for(cfg.tokenizer) if cfg.fim_repo_level else None
        # Sources draw differently for the same sample index; the salt comes from the prefix's file name
        # only, so moving the data directory does not change any sample.
        name = os.path.basename(self.dataset_path or "")
        self._salt = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")

    def _query_document_sample_shuffle_indices(self, idx: int) -> Tuple[np.ndarray, np.ndarray]:
        text, document_ids = super()._query_document_sample_shuffle_indices(idx)
        rng = sample_rng(self.config.random_seed, self.index_split.value, int(idx), self._salt)
        text, _ = apply_fim(text, self.fim, rng, self._newline_mask)
        return text, document_ids

    def __getitem__(self, idx: Optional[int]) -> Dict[str, torch.Tensor]:
        item = super().__getitem__(idx)
        item["loss_mask"][item["labels"] == self.fim.pad_id] = 0.0
        return item


def _spec_ids(tokenizer) -> Dict[str, int]:
    special = getattr(tokenizer, "special", None) or SPECIAL_TOKENS
    names = {"prefix_id": FIM_PREFIX, "middle_id": FIM_MIDDLE, "suffix_id": FIM_SUFFIX, "pad_id": FIM_PAD,
             "file_sep_id": FILE_SEP}
    missing = [name for name in names.values() if name not in special]
    if missing:
        raise ValueError(f"the tokenizer has no {missing}: FIM needs them (use fim_rate=0 or a Qwen2.5 tokenizer)")
    ids = {key: special[name] for key, name in names.items()}
    ids["eod_id"] = tokenizer.eod
    return ids
