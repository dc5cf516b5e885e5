"""Training datasets: named, weighted sources blended by megatron-core, with FIM on top.

build_pretrain_datasets() is what the training loop calls. It
1. validates every source before megatron builds anything: the .bin/.idx exist, the token dtype fits the
   tokenizer, and each split that is asked for samples holds at least one token. megatron's
   `_get_num_epochs` (gpt_dataset.py:634) loops forever on an empty split with samples requested, so on
   a 40-document source `split="99,1,0"` would hang the job instead of failing; here it is an error that
   names the source, the split and the fix;
2. builds GPTDataset (or FIMGPTDataset when any source has a FIM rate > 0) per source through
   BlendedMegatronDatasetBuilder with the normalised weights (default code 0.7 / text 0.2 / math 0.1).
   megatron's blending index is deterministic and greedy: after n samples every source is within one sample
   of weight x n. FIM is per source (source_fim_rate): code gets data.fim_rate, sources prepared as text
   (data/prepare.py --mode text, recorded in PREFIX.report.json) get none, as in the Qwen2.5-Coder paper;
3. checks each source's integrity first (summarize_source): the .idx's total bytes equal the .bin's size, the
   report (PREFIX.report.json) belongs to this pair (sizes and .idx sha256) and names the recipe's tokenizer
   (fingerprint); a source without a report gets a memory-mapped max-id scan against the vocabulary
   (numpy's max over the .bin: 1.15 GB/s wall from page cache on a busy 2-core machine). Foreign data would
   train on wrong tokens or fail at step 1 with an IndexError deep in the embedding;
4. keys megatron's index cache by content: megatron's own key is the prefix path, split, seed and length, so
   re-preparing a prefix would reuse indices of the old documents (rows past the new documents' ends, or an
   IndexError). The tokenizer's unique_identifiers, part of that key, carry each source's content
   fingerprint (the report's content_sha256; without a report the .idx sha256, .bin size and mtime).

Items are dicts of torch tensors of length seq_length: tokens, labels, loss_mask, position_ids (plus
megatron's dataset_id for blends). megatron needs torch.distributed initialised when it blends with a
cache directory (BlendedDataset asks for the rank); a 1-process gloo group is enough on CPU.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from data.config import DataConfig, DataSource, split_percentages
from data.report import file_sha256, read_report, report_path
from data.tokenizer import Tokenizer, load_tokenizer, tokenizer_identity

logger = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "valid", "test")


class DataValidationError(ValueError):
    """A source cannot serve the requested samples; the message says which and how to fix it."""


@dataclass
class SourceSummary:
    name: str
    prefix: str
    documents: int
    tokens: int
    split_documents: List[int]
    split_tokens: List[int]
    fingerprint: str  # names the content (megatron's index cache key)


def split_bounds(split: str, documents: int) -> List[Optional[Tuple[int, int]]]:
    """Document ranges per split exactly as megatron computes them (round(bookend * N))."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [None if m is None else (int(round(m[0] * documents)), int(round(m[1] * documents))) for m in matrix]


def summarize_source(name: str, prefix: str, split: str, vocab_size: int, tokenizer) -> SourceSummary:
    """Check a source's files (see the module docstring, 3.) and count documents and tokens per split from its
    .idx (memory-mapped). `tokenizer`: the recipe's spec ('qwen2.5' or a directory) or a loaded Tokenizer."""
    missing = [f"{prefix}{s}" for s in (".bin", ".idx") if not Path(f"{prefix}{s}").is_file()]
    if not prefix or missing:
        raise DataValidationError(
            f"data source {name!r}: {missing or 'prefix is empty'}; set data.sources[].prefix to the "
            "output prefix of data/prepare.py (PREFIX.bin and PREFIX.idx must exist)"
        )
    index = _read_index(name, prefix)
    if np.iinfo(index.dtype).max < vocab_size - 1:
        raise DataValidationError(
            f"data source {name!r}: tokens stored as {np.dtype(index.dtype).name} cannot hold ids up to "
            f"{vocab_size - 1}; re-run data/prepare.py with this tokenizer"
        )
    lengths = np.asarray(index.sequence_lengths, dtype=np.int64)
    bin_path = Path(f"{prefix}.bin")
    bin_bytes = bin_path.stat().st_size
    if int(lengths.sum()) * index.dtype_size != bin_bytes:
        raise DataValidationError(
            f"data source {name!r}: {prefix}.idx describes {int(lengths.sum()) * index.dtype_size} bytes of tokens "
            f"but {bin_path} holds {bin_bytes}: the pair is from different or interrupted runs; re-run data/prepare.py"
        )
    fingerprint = _checked_fingerprint(name, prefix, index, bin_bytes, tokenizer)
    split_docs, split_tokens = [], []
    for bounds in split_bounds(split, len(lengths)):
        begin, end = bounds if bounds is not None else (0, 0)
        split_docs.append(end - begin)
        split_tokens.append(int(lengths[begin:end].sum()))
    return SourceSummary(name, prefix, len(lengths), int(lengths.sum()), split_docs, split_tokens, fingerprint)


def _read_index(name: str, prefix: str):
    from megatron.core.datasets.indexed_dataset import _IndexReader

    try:
        return _IndexReader(f"{prefix}.idx", multimodal=False)
    except Exception as error:  # megatron asserts on the header; numpy fails on a truncated file
        raise DataValidationError(f"data source {name!r}: {prefix}.idx is not a readable megatron index "
                                  f"({type(error).__name__}: {error}); re-run data/prepare.py") from None


def _checked_fingerprint(name: str, prefix: str, index, bin_bytes: int, tokenizer) -> str:
    """The source's content fingerprint once its report is shown to belong to it and to name the recipe's
    tokenizer; without a report (or one from before reports recorded their output), a max-id scan instead."""
    wanted = tokenizer.identity() if isinstance(tokenizer, Tokenizer) else tokenizer_identity(tokenizer)
    path = report_path(prefix)
    try:
        report = read_report(prefix)
    except ValueError as error:
        raise DataValidationError(f"data source {name!r}: {path} is not JSON ({error}); re-run data/prepare.py "
                                  "or remove the file") from None
    output = (report or {}).get("output")
    idx_sha256 = file_sha256(Path(f"{prefix}.idx"))
    if output is None:
        _scan_ids(name, prefix, index, wanted)
        return f"unreported:{idx_sha256}:{bin_bytes}:{Path(f'{prefix}.bin').stat().st_mtime_ns}"
    found = {"bin_bytes": bin_bytes, "idx_bytes": Path(f"{prefix}.idx").stat().st_size, "idx_sha256": idx_sha256}
    differs = [f"{key} {output.get(key)} != {value}" for key, value in found.items() if output.get(key) != value]
    if differs:
        raise DataValidationError(
            f"data source {name!r}: {path} does not belong to {prefix}.bin/.idx ({'; '.join(differs)}): "
            "they come from different or interrupted runs; re-run data/prepare.py"
        )
    used = report.get("tokenizer") or {}
    if used.get("fingerprint") != wanted["fingerprint"]:
        raise DataValidationError(
            f"data source {name!r}: {prefix} was prepared with tokenizer {used.get('name')!r} (vocab "
            f"{used.get('vocab_size')}, fingerprint {str(used.get('fingerprint'))[:12]}) but data.tokenizer is "
            f"{wanted['name']!r} (vocab {wanted['vocab_size']}, fingerprint {wanted['fingerprint'][:12]}); re-run "
            "data/prepare.py --tokenizer with the recipe's tokenizer, or set data.tokenizer to the data's"
        )
    return output["content_sha256"]


def _scan_ids(name: str, prefix: str, index, wanted: dict, chunk_tokens: int = 1 << 26) -> None:
    """Refuse a source holding an id the tokenizer does not have (written by another tokenizer)."""
    tokens = np.memmap(f"{prefix}.bin", dtype=index.dtype, mode="r") if index.sequence_count else np.zeros(0)
    largest = max((int(tokens[i:i + chunk_tokens].max()) for i in range(0, len(tokens), chunk_tokens)), default=-1)
    if largest >= wanted["vocab_size"]:
        raise DataValidationError(
            f"data source {name!r} ({prefix}, no report): largest token id {largest} >= vocabulary size "
            f"{wanted['vocab_size']} of tokenizer {wanted['name']!r}: written with another tokenizer; re-run "
            "data/prepare.py with data.tokenizer's tokenizer"
        )


def prepared_mode(prefix: str) -> Optional[str]:
    """The --mode data/prepare.py recorded in PREFIX.report.json (file|repo|text); None without a report."""
    path = Path(f"{prefix}.report.json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["settings"]["mode"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataValidationError(f"{path}: not a data/prepare.py report ({type(error).__name__}: {error}); "
                                  "re-run data/prepare.py or remove the file") from None


def source_fim_rate(source: DataSource, cfg: DataConfig) -> float:
    """A source's FIM rate: its own fim_rate if set; else data.fim_rate unless it was prepared as text."""
    if source.fim_rate is not None:
        return source.fim_rate
    return 0.0 if prepared_mode(source.prefix) == "text" else cfg.fim_rate


def validate_sources(cfg: DataConfig, samples: List[int], tokenizer: Tokenizer) -> List[SourceSummary]:
    """Fail before building when any source is broken or foreign, or any requested split of one is empty."""
    summaries = [summarize_source(s.name, s.prefix, cfg.split, tokenizer.vocab_size, tokenizer) for s in cfg.sources]
    shares = split_percentages(cfg.split)
    problems = []
    for summary in summaries:
        for index, wanted in enumerate(samples):
            name = SPLIT_NAMES[index]
            if wanted and shares[index] == 0:
                problems.append(f"{wanted} {name} samples requested but data.split {cfg.split!r} gives {name} 0 %")
            elif (wanted or shares[index] > 0) and summary.split_tokens[index] == 0:
                # megatron builds every split with a share > 0, even with 0 samples requested, and loops
                # forever on an empty one.
                problems.append(
                    f"source {summary.name!r} ({summary.prefix}): {summary.documents} documents; split "
                    f"{cfg.split!r} leaves its {name} split {summary.split_documents[index]} documents / 0 tokens "
                    f"({wanted} samples requested)"
                )
    if problems:
        raise DataValidationError(
            "empty dataset split(s) (megatron would loop forever building them):\n  " + "\n  ".join(problems)
            + "\nFix: add documents to the source or widen that share of data.split (e.g. '90,10,0'); "
            "to train without validation set data.split to '100,0,0' and request 0 validation samples."
        )
    return summaries


def build_pretrain_datasets(
    cfg: DataConfig,
    seq_length: int,
    train_samples: int,
    valid_samples: int,
    seed: int,
    tokenizer: Optional[Tokenizer] = None,
):
    """(train_ds, valid_ds) for the blend in cfg; valid_ds is None when valid_samples == 0.

    seed: the run's seed; cfg.seed overrides it when set. It drives megatron's shuffles and the FIM draws.
    """
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from data.fim import FIMGPTDataset, FIMGPTDatasetConfig

    if seq_length < 1 or train_samples < 1 or valid_samples < 0:
        raise ValueError(f"need seq_length >= 1, train_samples >= 1, valid_samples >= 0; got "
                         f"{seq_length}, {train_samples}, {valid_samples}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    sizes = [train_samples, valid_samples, 0]
    summaries = validate_sources(cfg, sizes, tokenizer)
    tokenizer.data_fingerprints = {summary.prefix: summary.fingerprint for summary in summaries}  # cache key
    if cfg.cache_dir and not torch.distributed.is_initialized():
        raise RuntimeError(
            "data.cache_dir needs torch.distributed initialised (megatron's BlendedDataset asks "
            "for the rank): call torch.distributed.init_process_group first (a 1-process gloo group will do)"
        )
    common = dict(
        random_seed=cfg.seed if cfg.seed is not None else seed,
        sequence_length=seq_length,
        blend=([s.prefix for s in cfg.sources], cfg.weights()),
        split=cfg.split,
        tokenizer=tokenizer,
        reset_position_ids=cfg.reset_position_ids,
        reset_attention_mask=False,
        eod_mask_loss=cfg.eod_mask_loss,
        create_attention_mask=False,
        path_to_cache=cfg.cache_dir,
        mid_level_dataset_surplus=cfg.mid_level_dataset_surplus,
    )
    fim_rates = {s.prefix: source_fim_rate(s, cfg) for s in cfg.sources}
    if any(fim_rates.values()):
        config = FIMGPTDatasetConfig(fim_rates=fim_rates, fim_spm_rate=cfg.fim_spm_rate,
                                     fim_repo_level=cfg.mode == "repo", **common)
        cls = FIMGPTDataset
    else:
        config = GPTDatasetConfig(**common)
        cls = GPTDataset
    for summary in summaries:
        logger.info("data source %s: %d documents, %d tokens, FIM rate %g (%s)", summary.name, summary.documents,
                    summary.tokens, fim_rates[summary.prefix], summary.prefix)
    train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return train_ds, (valid_ds if valid_samples else None)
