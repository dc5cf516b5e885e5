"""prepare(): raw inputs -> Megatron PREFIX.bin/.idx (IndexedDatasetBuilder) + PREFIX.report.json.

Determinism: the main process lists inputs in a fixed order and writes results in that same order
(`Pool.imap` is ordered); workers only read, filter and tokenize. Exact-duplicate decisions are made in the
main process, first copy wins. So the same input gives byte-identical outputs for any worker count (tested
for 1 and 2). `seed` is recorded in the report but nothing here is random: the output is a function of the
input alone; randomness (FIM, shuffling, blending) happens at training time, seeded per sample.

Throughput (2 cores, stdlib corpus, see bench/tokenize_throughput.py): the tokenizer dominates; batches of
~1 MiB keep inter-process overhead to a few percent. workers=1 runs in-process (no pool).

Atomic output: PREFIX.bin, .idx and .report.json are written as PREFIX.*.partial and renamed into place only
when all three are complete (.bin, then .idx, then the report, which names the other two's sizes and .idx
sha256). A run that fails or is killed at any instant leaves the previous output intact (or nothing): at
worst, killed between two renames, a new .bin beside the old .idx and report, which training refuses
(data.datasets checks the sizes) instead of reading. Stale .partial files are overwritten by the next run.

Start-up: the writer is megatron's IndexedDatasetBuilder, and importing megatron.core (torch with it) takes
~3.4 s on 2 cores, longer than tokenizing a 30 MB corpus. It is imported on a background thread started after
the worker pool forks (forking during an import could deadlock a child), while the workers read and tokenize;
the main thread needs it only when the first batch of documents is ready. Nothing here imports megatron at
module level.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from data import filters
from data.documents import Document, content_key, file_document, repo_documents
from data.languages import language_of
from data.near_dedup import Deduplicator, signature
from data.report import REPORT_SUFFIX, BadInputError, Report, output_record
from data.sources import (
    CONTENT_FIELDS, DEFAULT_EXCLUDE, LANGUAGE_FIELDS, PATH_FIELDS, FileUnit, RepoUnit, batched, first_str,
    iter_units, list_inputs, parse_json_line, select_shard, total_input_bytes, unit_weight,
)
from data.tokenizer import QWEN_SPECS, VOCAB_SIZE, Tokenizer, load_tokenizer, tokenizer_identity

PREPARE_MODES = ("file", "repo", "text")


@dataclass
class PrepareOptions:
    """Everything prepare() needs; the CLI (data/prepare.py) fills it from flags."""

    inputs: List[Path]
    output_prefix: Path
    mode: str = "file"  # file: one document per source file | repo: repo-level documents | text: plain text/math
    workers: int = 1  # tokenizer processes; 1 runs in-process
    seed: int = 1234  # recorded in the report; prepare makes no random decisions
    strict: bool = False  # malformed input becomes one error instead of counted skips
    seq_length: int = 32768  # repo mode: token budget per repo document (0: never split)
    tokenizer: str = "qwen2.5"  # tokenizer spec, see data/tokenizer.py:load_tokenizer
    tokenizer_backend: str = "auto"  # auto | tiktoken | gigatoken (qwen2.5 spec only; ids are identical)
    filters: filters.FilterConfig = field(default_factory=filters.FilterConfig)
    exclude: Tuple[str, ...] = DEFAULT_EXCLUDE  # glob patterns of directory/file names that are not inputs
    progress: bool = True  # tqdm bar on stderr
    shard: Tuple[int, int] = (0, 1)  # (index, count): prepare only this contiguous share of the inputs (data/shards.py)
    deduplicator: Optional[object] = None  # duplicate decisions made elsewhere (data/shards.py); None: here


@dataclass
class UnitResult:
    """What a worker returns for one unit: documents, skips, and the unit's duplicate key."""

    documents: List[Document] = field(default_factory=list)
    skips: List[Tuple[str, str, str]] = field(default_factory=list)  # (reason, origin, detail)
    key: Optional[bytes] = None
    signature: Optional[np.ndarray] = None  # MinHash signature for near-duplicate removal
    records: int = 0  # records inside `documents`


# ---------------------------------------------------------------------------------------------- workers
_WORKER: dict = {}


def _init_worker(options: PrepareOptions) -> None:
    _WORKER["options"] = options
    _WORKER["tokenizer"] = load_tokenizer(options.tokenizer, backend=options.tokenizer_backend)


def _read_record(unit, options: PrepareOptions):
    """(path, text, language, origin) or a skip triple for one file or JSONL record."""
    config, mode = options.filters, options.mode
    default_language = "text" if mode == "text" else "other"
    if isinstance(unit, FileUnit):
        origin, path = unit.name, unit.name
        if filters.check_size(unit.size, config):
            return ("too_large", origin, f"{unit.size} bytes > {config.max_bytes}")
        try:
            with open(unit.path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            return ("unreadable", origin, f"{type(error).__name__}: {error.strerror or error}")
        text, reason, detail = filters.decode_bytes(data)
        if reason:
            return (reason, origin, detail)
        language = language_of(path, default_language)
    else:
        origin = unit.origin
        record, error = parse_json_line(unit.raw)
        if error is not None:
            return ("empty" if not unit.raw.strip() else "malformed_json", origin, error)
        if not isinstance(record, dict):
            return ("malformed_json", origin, f"a JSON {type(record).__name__}, expected an object")
        text = first_str(record, CONTENT_FIELDS)
        if text is None:
            return ("missing_content", origin, f"no string field among {list(CONTENT_FIELDS)}")
        reason, detail = filters.check_text(text)
        if reason:
            return (reason, origin, detail)
        path = first_str(record, PATH_FIELDS) or ""
        language = (first_str(record, LANGUAGE_FIELDS) or "").lower() or language_of(path, default_language)
    reason, detail = filters.check_content(text, language, config, code=mode != "text")
    if reason:
        return (reason, origin, detail)
    return (path, text, language, origin)


def process_unit(unit, options: PrepareOptions, tok: Tokenizer) -> UnitResult:
    result = UnitResult()
    if isinstance(unit, RepoUnit):
        result.skips.extend(unit.skips)
        kept = []
        for member in unit.files:
            record = _read_record(member, options)
            if len(record) == 3:
                result.skips.append(record)
            else:
                kept.append(record)
        if kept:
            name = unit.name
            result.documents = repo_documents(tok, name, kept, options.seq_length)
            result.records = len(kept)
            if options.filters.dedupe:
                result.key = content_key(name, *[part for path, text, _, _ in kept for part in (path, text)])
            if options.filters.near_dedup.enabled:
                result.signature = signature("\n".join(text for _, text, _, _ in kept), options.filters.near_dedup)
        return result
    record = _read_record(unit, options)
    if len(record) == 3:
        result.skips.append(record)
        return result
    path, text, language, origin = record
    result.documents = [file_document(tok, text, language, origin)]
    result.records = 1
    if options.filters.dedupe:
        result.key = content_key(text)
    if options.filters.near_dedup.enabled:
        result.signature = signature(text, options.filters.near_dedup)
    return result


def _process_batch(batch) -> Tuple[int, List[UnitResult]]:
    options, tok = _WORKER["options"], _WORKER["tokenizer"]
    return sum(unit_weight(unit) for unit in batch), [process_unit(unit, options, tok) for unit in batch]


# ---------------------------------------------------------------------------------------------- main
def _vocab_size(spec: str) -> int:
    """For the .bin dtype (int32 above 65,536 ids); the main process never loads the Qwen ranks."""
    if spec in QWEN_SPECS:
        return VOCAB_SIZE
    if "tokenizer" in _WORKER:  # workers=1: the tokenizer already loaded in this process
        return _WORKER["tokenizer"].vocab_size
    return load_tokenizer(spec).vocab_size


class _BackgroundImport(threading.Thread):
    """Imports megatron's .bin/.idx writer while the caller goes on; writer() waits for it."""

    def __init__(self) -> None:
        super().__init__(name="import-megatron-writer", daemon=True)
        self._result = self._error = None
        self.start()

    def run(self) -> None:
        try:
            import model  # noqa: F401  its import filters megatron's "TE and Apex are not installed" notices
            from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

            self._result = (DType, IndexedDatasetBuilder)
        except BaseException as error:  # re-raised on the caller's thread by writer()
            self._error = error

    def writer(self):
        self.join()
        if self._error is not None:
            raise self._error
        return self._result


PARTIAL = ".partial"


def _output_paths(prefix: Path):
    return Path(f"{prefix}.bin"), Path(f"{prefix}.idx"), Path(f"{prefix}{REPORT_SUFFIX}")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


def _check_arguments(options: PrepareOptions) -> None:
    """Everything that can be wrong before reading a byte: one BadInputError naming the fix."""
    if options.mode not in PREPARE_MODES:
        raise BadInputError(f"--mode must be one of {PREPARE_MODES}, got {options.mode!r}")
    if options.workers < 1:
        raise BadInputError(f"--workers must be >= 1 (1 tokenizes in-process), got {options.workers}")
    list_inputs(options.inputs)
    report = _partial(_output_paths(options.output_prefix)[2])
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.touch()
        report.unlink()
    except OSError as error:
        raise BadInputError(f"cannot write the output {options.output_prefix}.*: {error.strerror or error} "
                            f"({error.filename or report.parent}); choose a writable --output-prefix") from None


def _publish(finals, partials) -> None:
    """Rename the complete outputs into place, the report last (see the module docstring)."""
    for final, partial in zip(finals, partials):
        os.replace(partial, final)


class _ContentHash:
    """sha256 of every document's length and token ids (as int64) in order: the same for any dtype and worker
    count. Measured 158 Mtok/s of CPU time (2,000-token documents), ~6 % of tokenizing at ~10 Mtok/s."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64)
        self._digest.update(np.int64(len(tokens)).tobytes())
        self._digest.update(tokens.tobytes())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def prepare(options: PrepareOptions) -> Report:
    """Run the pipeline; returns the report (also written to PREFIX.report.json).

    With options.strict, the first batch (~1 MiB) holding malformed input stops the run: nothing is published
    and BadInputError lists every malformed record seen so far, by reason with examples. Input that yields no
    document (an empty directory, every record skipped) is a BadInputError too, and nothing is published.
    """
    _check_arguments(options)
    finals = _output_paths(options.output_prefix)
    bin_path, idx_path, report_path = partials = tuple(_partial(path) for path in finals)
    settings = {
        "inputs": [str(p) for p in options.inputs],
        "mode": options.mode,
        "seed": options.seed,
        "seq_length": options.seq_length if options.mode == "repo" else None,
        "tokenizer": options.tokenizer,
        "filters": asdict(options.filters),
        "exclude": list(options.exclude),
        "shard": list(options.shard),
    }
    report = Report(**settings)
    content = _ContentHash()
    units = iter_units(options.inputs, options.mode, options.exclude)
    if options.shard != (0, 1):
        units = select_shard(units, *options.shard, total_input_bytes(options.inputs, options.exclude))
    batches = batched(units)
    deduplicator = options.deduplicator or Deduplicator(options.filters.near_dedup)
    pool = progress = builder = None
    stopped = False
    try:
        if options.workers == 1:
            _init_worker(options)
            results = map(_process_batch, batches)
        else:  # fork before the progress bar starts its monitor thread
            pool = multiprocessing.get_context("fork").Pool(options.workers, _init_worker, (options,))
            results = pool.imap(_process_batch, batches, chunksize=1)
        writer = _BackgroundImport()  # after the fork
        progress = _progress_bar(options)

        def open_builder():
            dtype, builder_class = writer.writer()
            return builder_class(str(bin_path), dtype=dtype.optimal_dtype(_vocab_size(options.tokenizer)))

        for weight, batch_results in results:
            builder = builder or open_builder()
            for result in batch_results:
                _consume(result, builder, report, deduplicator, content)
            if progress is not None:
                progress.update(weight)
            if options.strict and report.bad_input():
                stopped = True  # fail fast: no point tokenizing hours of input that will be refused
                break
        if report.documents == 0 and not stopped:
            raise BadInputError(f"no documents in {[str(p) for p in options.inputs]} ({report.summary()}); "
                                "nothing was written. Check --input (and --mode, --languages, --exclude)")
        if not stopped:
            builder.finalize(str(idx_path))
    except BaseException:
        if builder is not None:
            builder.data_file.close()
        _remove(*partials)
        raise
    finally:
        _WORKER.clear()
        if pool is not None:
            pool.terminate()
            pool.join()
        if progress is not None:
            progress.close()
    if stopped:
        builder.data_file.close()
        _remove(*partials)
        raise report.strict_error()
    report.tokenizer = tokenizer_identity(options.tokenizer)
    report.output = output_record(bin_path, idx_path, content.hexdigest())
    try:
        report.write(report_path)
        _publish(finals, partials)
    except BaseException:
        _remove(*partials)
        raise
    return report


def _consume(result: UnitResult, builder, report: Report, deduplicator: Deduplicator,
             content: _ContentHash) -> None:
    for reason, origin, detail in result.skips:
        report.add_skip(reason, origin, detail)
    if not result.documents:
        return
    duplicate = deduplicator.check(result.key, result.signature, result.documents[0].origin)
    if duplicate is not None:
        reason, detail = duplicate
        report.add_skip(reason, result.documents[0].origin, detail, result.records)
        return
    for document in result.documents:
        builder.add_document(document.tokens, [len(document.tokens)])
        content.add(document.tokens)
        report.add_document(len(document.tokens), document.languages, document.over_budget)


def _progress_bar(options: PrepareOptions):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total_input_bytes(options.inputs, options.exclude), unit="B", unit_scale=True, file=sys.stderr,
                desc=f"prepare ({options.mode}, {options.workers} worker{'s' * (options.workers > 1)})")


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            os.remove(path)


def read_back(prefix: Path) -> List[np.ndarray]:
    """All documents of PREFIX.bin/.idx through megatron's IndexedDataset (tests, debugging)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    # Copies: the items are views of a memory map that closes with `dataset`.
    return [np.array(dataset[i], dtype=np.int64) for i in range(len(dataset))]
