"""Loader-side cost of FIM: samples/s of the training dataset with and without FIM, same data, same run.

    python bench/fim_throughput.py                    # stdlib code, 8,192-token samples, data.fim_rate 0.5
    python bench/fim_throughput.py --seq-length 32768 --samples 50

Builds one code source with data/prepare.py's pipeline (stdlib modules), then reads the first N training samples
through build_pretrain_datasets twice in one process: data.fim_rate=0 (megatron's GPTDataset, the baseline) and
data.fim_rate=0.5 (FIMGPTDataset). Both read the same windows (FIM does not change megatron's indices); the
ratio is the share of the loader's throughput FIM keeps. One process = one loader worker: a rank reads with
data.num_workers of them.
"""
import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

from data.config import DataConfig, DataSource
from data.datasets import build_pretrain_datasets
from data.filters import FilterConfig
from data.pipeline import PrepareOptions, prepare
from data.tokenizer import load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
WARMUP = 5  # samples read before timing
PACKAGES = ("asyncio", "email", "json", "unittest", "xml", "concurrent", "importlib", "logging")


def samples_per_second(prefix: Path, fim_rate: float, seq_length: int, samples: int, tokenizer) -> float:
    cfg = DataConfig(sources=[DataSource("code", str(prefix), 1.0)], split="100,0,0", fim_rate=fim_rate)
    train, _ = build_pretrain_datasets(cfg, seq_length, samples, 0, seed=1234, tokenizer=tokenizer)
    for index in range(WARMUP):  # lazy memory maps, megatron's mask cache, the tokenizer's decoder (~1 s)
        train[index]
    start = time.perf_counter()
    for index in range(WARMUP, samples):
        train[index]
    return (samples - WARMUP) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--fim-rate", type=float, default=0.5)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fimbench-"))
    prefix = work / "code"
    if not Path(f"{prefix}.idx").is_file():
        prepare(PrepareOptions(inputs=[STDLIB / p for p in PACKAGES], output_prefix=prefix, workers=1,
                               filters=FilterConfig(dedupe=False), progress=False))
    tokenizer = load_tokenizer("qwen2.5")  # what training loads (backend auto)
    base = samples_per_second(prefix, 0.0, args.seq_length, args.samples, tokenizer)
    fim = samples_per_second(prefix, args.fim_rate, args.seq_length, args.samples, tokenizer)
    print(f"samples: {args.samples} x {args.seq_length} tokens, tokenizer backend {tokenizer.backend}, one process")
    print(f"no FIM (GPTDataset):            {base:8.1f} samples/s  {base * args.seq_length / 1e6:6.2f} Mtok/s")
    print(f"FIM rate {args.fim_rate} (FIMGPTDataset):  {fim:8.1f} samples/s  {fim * args.seq_length / 1e6:6.2f} Mtok/s")
    print(f"ratio: {fim / base:.2f}")


if __name__ == "__main__":
    main()
