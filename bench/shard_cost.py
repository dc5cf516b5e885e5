"""Sharded preparation (data.shards), measured: CPU seconds per GB of input for each step, against one prepare.

    python bench/shard_cost.py                          # this Python's standard library, 2 shards
    python bench/shard_cost.py --input DIR --num-shards 4

Input: the UTF-8 source files under --input as one JSONL file (bench/tokenize_throughput.py's corpus), so a GB
here is a GB of code text, the unit of the cleaning costs that bench prints. Every step runs in this process, one after another, with --workers 1 (one core), timed with process_time after
megatron's writer is imported once: what each step costs per GB of input, without interpreter starts, which a
cluster pays once per pod. sign and write are summed over the shards (they run in parallel on a cluster); plan
is one process. Checks that the shards in order are the one-machine run's documents, token for token, then
prints what 1 TB costs at these rates.
"""
from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.tokenize_throughput import build_corpus
from data.pipeline import read_back
from data.prepare import main as prepare_main
from data.shards import main as shards_main, shard_prefix


def cpu_seconds(run) -> float:
    start = time.process_time()
    if run() != 0:
        raise SystemExit("error: a step failed (see above)")
    return time.process_time() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="directory of source files (default: this Python's standard library)")
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--node-cores", type=int, default=16, help="cores per node for the 1 TB estimate")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the outputs here")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="shardbench-"))
    corpus = work / "corpus.jsonl"
    build_corpus(args.input, corpus)
    gigabytes = sum(len(json.loads(line)["text"].encode("utf-8")) for line in corpus.open(encoding="utf-8")) / 1e9
    common = ["--input", str(corpus), "--no-progress", "--workers", "1"]
    from megatron.core.datasets import indexed_dataset  # noqa: F401  imported once, outside the timings

    single = cpu_seconds(lambda: prepare_main(["--output-prefix", str(work / "single"), *common]))
    prefix, count = work / "sharded" / "code", args.num_shards
    flags = ["--num-shards", str(count), "--output-prefix", str(prefix), *common]
    costs = {}
    for step in ("sign", "plan", "write"):
        indices = [None] if step == "plan" else range(count)
        costs[step] = sum(cpu_seconds(lambda: shards_main([step, *flags, *([] if i is None else
                                                                           ["--shard-index", str(i)])]))
                          for i in indices) / gigabytes
    sharded = [d for i in range(count) for d in read_back(shard_prefix(prefix, i, count))]
    expected = read_back(work / "single")
    if len(sharded) != len(expected) or not all(np.array_equal(a, b) for a, b in zip(sharded, expected)):
        raise AssertionError("the shards' documents differ from the one-machine run's")
    total = sum(costs.values())
    per_tb_hours = total * 1000 / 3600
    print(f"input: {gigabytes * 1e3:.1f} MB of text from {args.input}, {len(expected)} documents kept, {count} shards "
          f"(identical to one prepare, token for token)")
    print(f"one-machine prepare: {single / gigabytes:7.0f} CPU s/GB")
    for step, seconds in costs.items():
        print(f"  {step:5s} (data.shards): {seconds:7.0f} CPU s/GB{'  (one process)' if step == 'plan' else ''}")
    print(f"sharded, all steps: {total:7.0f} CPU s/GB ({total / (single / gigabytes):.2f}x one prepare)")
    print(f"1 TB: {per_tb_hours:.0f} core-hours = {per_tb_hours / args.node_cores:.1f} node-hours on "
          f"{args.node_cores}-core nodes; plan alone {costs['plan'] * 1000 / 3600:.1f} hours on one core")
    return {"single": single / gigabytes, **costs}


if __name__ == "__main__":
    main()
