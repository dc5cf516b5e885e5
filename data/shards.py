"""Preparation past one machine: each shard prepared where it runs, duplicates decided across all shards.

    python -m data.shards sign  --num-shards N --shard-index I PREPARE_FLAGS   # N tasks, in parallel
    python -m data.shards plan  --num-shards N PREPARE_FLAGS                   # one task
    python -m data.shards write --num-shards N --shard-index I PREPARE_FLAGS   # N tasks, in parallel
    python -m data.shards merge --num-shards N --output-prefix PREFIX          # optional: one PREFIX.bin/.idx

PREPARE_FLAGS are data/prepare.py's (--input, --output-prefix, --mode, --workers, filters ...), the same for
every step. --shard-index defaults to $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's pod index) or
$SLURM_ARRAY_TASK_ID, so the engine that runs the N tasks - an Indexed Job with completions N and parallelism
N, a Slurm job array, or `xargs -P` on one machine - needs no scheduler of ours. Every task must see the inputs
and the output directory (a shared filesystem or bucket mount).

Shard I is a contiguous share of the input order, split by input bytes (data.sources.select_shard). Steps:
1. sign: prepare() of shard I with every filter but duplicate removal, recording each candidate document's
   origin, exact-copy key and MinHash signature in order -> PREFIX-I-of-N.sign.npz.
2. plan: all shards' records in shard order through the same Deduplicator a one-machine run uses (first copy
   kept, LSH over all shards) -> PREFIX.plan.json, one decision per candidate.
3. write: prepare() of shard I again, taking duplicate decisions from the plan -> PREFIX-I-of-N.bin/.idx/
   .report.json. Contamination and the other filters are per-document decisions on the same data on every
   node, so they are global already.
The shards' documents in index order are then the one-machine run's, token for token (tests/
test_data_cleaning.py); training reads the shards as sources, or `merge` concatenates them with megatron's
IndexedDatasetBuilder.add_index. Cost: every shard is read, filtered and tokenized twice (sign and write), about
twice the CPU of a one-machine run, spread over N nodes; plan holds 1 KiB per document in memory (1 GB per
million documents) and runs LSH at ~5 s per GB of text on one core.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from data.near_dedup import Deduplicator

STEPS = ("sign", "plan", "write", "merge")


def shard_prefix(prefix: Path, index: int, count: int) -> Path:
    return Path(f"{prefix}-{index:05d}-of-{count:05d}")


class RecordingDeduplicator:
    """Keeps every document and records what the plan needs, in the order prepare() meets them."""

    def __init__(self) -> None:
        self.origins: List[str] = []
        self.keys: List[bytes] = []
        self.signatures: List[np.ndarray] = []

    def check(self, key: Optional[bytes], values: Optional[np.ndarray], origin: str) -> None:
        self.origins.append(origin)
        self.keys.append(key or b"")
        self.signatures.append(values if values is not None else np.zeros(0, dtype=np.uint32))
        return None

    def save(self, path: Path) -> None:
        width = max((len(s) for s in self.signatures), default=0)
        np.savez(path, origins=np.array(self.origins, dtype=object), keys=np.array(self.keys, dtype=object),
                 signatures=np.array([s if len(s) else np.zeros(width, np.uint32) for s in self.signatures],
                                     dtype=np.uint32).reshape(len(self.signatures), width),
                 has_signature=np.array([len(s) > 0 for s in self.signatures], dtype=bool))


class PlannedDeduplicator:
    """Replays the plan's decisions for one shard; a candidate out of step with the plan is an error."""

    def __init__(self, decisions: List[Optional[Tuple[str, str, str]]]) -> None:
        self.decisions = decisions
        self.position = 0

    def check(self, key, values, origin: str) -> Optional[Tuple[str, str]]:
        if self.position >= len(self.decisions) or self.decisions[self.position][0] != origin:
            raise RuntimeError(f"{origin} is not candidate {self.position} of the plan: the inputs or filters "
                               "changed since `sign`; run sign and plan again")
        _, reason, detail = self.decisions[self.position]
        self.position += 1
        return (reason, detail) if reason else None


def plan(prefix: Path, count: int, options) -> Path:
    """Decide duplicates over all shards' records, in shard order; writes and returns PREFIX.plan.json."""
    config = options.filters.near_dedup
    deduplicator = Deduplicator(config)
    shards = []
    for index in range(count):
        with np.load(f"{shard_prefix(prefix, index, count)}.sign.npz", allow_pickle=True) as records:
            decisions = []
            for origin, key, values, signed in zip(records["origins"], records["keys"], records["signatures"],
                                                   records["has_signature"]):
                decision = deduplicator.check(key if options.filters.dedupe else None,
                                              values if signed else None, str(origin))
                decisions.append((str(origin), *(decision or ("", ""))))
            shards.append(decisions)
    path = Path(f"{prefix}.plan.json")
    path.write_text(json.dumps({"num_shards": count, "shards": shards}) + "\n")
    return path


def merge(prefix: Path, count: int) -> None:
    """PREFIX.bin/.idx holding every shard's documents in shard order."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    first = IndexedDataset(str(shard_prefix(prefix, 0, count)))
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=first.index.dtype)
    for index in range(count):
        builder.add_index(str(shard_prefix(prefix, index, count)))
    builder.finalize(f"{prefix}.idx")


def _shard_index(value: Optional[int]) -> int:
    for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        if value is None and os.environ.get(name, "").isdigit():
            value = int(os.environ[name])
    if value is None:
        raise SystemExit("error: --shard-index is needed (or $JOB_COMPLETION_INDEX / $SLURM_ARRAY_TASK_ID)")
    return value


def main(argv=None) -> int:
    from dataclasses import replace

    from data.pipeline import prepare
    from data.prepare import parse_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--shard-index", type=int, default=None)
    args, rest = parser.parse_known_args(argv)
    if args.num_shards < 1:
        raise SystemExit(f"error: --num-shards must be >= 1, got {args.num_shards}")
    if args.step == "merge":
        merge_parser = argparse.ArgumentParser(prog="python -m data.shards merge")
        merge_parser.add_argument("--output-prefix", type=Path, required=True)
        merge(merge_parser.parse_args(rest).output_prefix, args.num_shards)
        return 0
    options = parse_args(rest)
    prefix, count = options.output_prefix, args.num_shards
    if args.step == "plan":
        print(f"wrote {plan(prefix, count, options)}", file=sys.stderr)
        return 0
    index = _shard_index(args.shard_index)
    if not 0 <= index < count:
        raise SystemExit(f"error: --shard-index must be in [0, {count}), got {index}")
    if args.step == "sign":
        recorder = RecordingDeduplicator()
        signing = shard_prefix(prefix, index, count).with_name(shard_prefix(prefix, index, count).name + ".sign")
        prepare(replace(options, output_prefix=signing, shard=(index, count), deduplicator=recorder))
        recorder.save(Path(f"{signing}.npz"))
        for suffix in (".bin", ".idx", ".report.json"):  # the sign pass's documents are written again by `write`
            Path(f"{signing}{suffix}").unlink(missing_ok=True)
        return 0
    decisions = json.loads(Path(f"{prefix}.plan.json").read_text())["shards"][index]
    report = prepare(replace(options, output_prefix=shard_prefix(prefix, index, count), shard=(index, count),
                             deduplicator=PlannedDeduplicator(decisions)))
    print(report.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
