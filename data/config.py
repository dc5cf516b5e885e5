"""DataConfig: the recipe's `data` node (Hydra/OmegaConf structured config compatible).

Field types are limited to what OmegaConf structured configs accept: str, int, float, bool, Optional[...],
List of a dataclass; no unions. Cross-field rules are DataConfig.problems(): a DataConfig built directly
raises ValueError in __post_init__, and a recipe (recipes.compose, under checks_deferred) reports them through
recipes.validate with rule names (data-sources, data-fim, data-split, data-loader, enum) and every other rule.
Checks that need the files (prefixes exist, every split non-empty) run in data.datasets.validate_sources before
any building.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

LOADERS = ("torch", "dali")
_checks_deferred: ContextVar[bool] = ContextVar("data_checks_deferred", default=False)
SAMPLE_MODES = ("file", "repo")  # how training reads prepared sources; data.pipeline.PREPARE_MODES adds "text"


@dataclass
class DataSource:
    """One named, weighted dataset (a PREFIX.bin/.idx written by data/prepare.py)."""

    name: str = "code"
    """Label used in logs and errors."""
    prefix: str = ""
    """Path prefix of the .bin/.idx pair, without the suffix; stage=sft: the conversations' .jsonl file path."""
    weight: float = 1.0
    """Blend weight; weights are normalised over all sources."""
    fim_rate: Optional[float] = None
    """Fill-in-the-middle rate of this source; None: data.fim_rate if the source was prepared as code
    (data/prepare.py --mode file|repo, read from PREFIX.report.json; no report counts as code), 0 if it was
    prepared with --mode text (the text and math of the mix are plain next-token prediction)."""


def default_sources() -> List[DataSource]:
    """The paper's mixture: code 70 %, text 20 %, math 10 % (prefixes must be set by the recipe)."""
    return [DataSource("code", "", 0.7), DataSource("text", "", 0.2), DataSource("math", "", 0.1)]


@dataclass
class DataConfig:
    """Training data: sources and blend, tokenizer, splits, FIM and the loader (SFT: data.sft's JSONL)."""

    sources: List[DataSource] = field(default_factory=default_sources)
    """Named sources with weights (default code 0.7 / text 0.2 / math 0.1); stage=sft: exactly one (data.sft)."""
    tokenizer: str = "qwen2.5"
    """'qwen2.5' (offline official ranks) or a Hugging Face tokenizer directory."""
    split: str = "98,2,0"
    """Train,valid,test percentages of each source's documents (megatron's split string)."""
    mode: str = "file"
    """How the sources were prepared: 'file' (file-level) or 'repo' (repo-level: FIM in the last file only)."""
    fim_rate: float = 0.5
    """Probability that a code document is rearranged fill-in-the-middle (0 disables FIM; per source:
    data.sources[].fim_rate)."""
    fim_spm_rate: float = 0.0
    """Share of FIM documents in SPM order (StarCoder's variant); the rest, by default all, are PSM, the only
    order Qwen2.5-Coder's prompts use."""
    seed: Optional[int] = None
    """Seed for shuffling, blending and FIM; None uses the run's seed passed to build_pretrain_datasets."""
    cache_dir: Optional[str] = None
    """Where megatron caches its sample indices; None: megatron's default, PREFIX/cache/ per source. Keyed by the
    sources' content (data.datasets), so a re-prepared prefix never reuses the old indices."""
    mid_level_dataset_surplus: float = 0.005
    """Extra samples built per source so the blend never oversamples one (megatron's default)."""
    eod_mask_loss: bool = False
    """megatron's switch: zero the loss where the INPUT token is <|endoftext|>, i.e. the prediction of the token
    after each document end (the next document's first token); predicting <|endoftext|> itself keeps its loss."""
    reset_position_ids: bool = False
    """Restart position ids at each document (megatron's RoPE ignores them; see docs/megatron-quirks.md)."""
    loader: str = "torch"
    """'torch' DataLoader, or 'dali' (NVIDIA DALI pipeline that prefetches batches to the GPU)."""
    num_workers: int = 2
    """Loader worker processes (torch DataLoader workers / DALI parallel external-source workers)."""
    prefetch: int = 2
    """Batches prefetched per worker (torch prefetch_factor) or queued by DALI."""
    strict: bool = False
    """stage=sft: malformed conversation lines are one error listing them all, instead of counted skips."""
    system_prompt: Optional[str] = None
    """Chat stages: system message for conversations that do not start with one; None = Qwen2.5's default
    ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", what its chat template inserts),
    '' = none (the conversation is rendered as given)."""
    packing: bool = True
    """stage=sft: pack several conversations per row, attention and positions restarting at each (thd format);
    false: one conversation per row, padded. Needs parallel.cp=1."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems and not _checks_deferred.get():
            raise ValueError("; ".join(message for _, message in problems))

    def problems(self) -> List[Tuple[str, str]]:
        """(rule, message) for every broken data rule; recipes.validate reports them with the recipe's other rules."""
        out = []
        if not self.sources:
            out.append(("data-sources", "data.sources is empty: give at least one {name, prefix, weight}"))
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            out.append(("data-sources", f"data.sources names must be unique, got {names}"))
        for i, source in enumerate(self.sources):
            if not source.weight > 0:
                out.append(("data-sources", f"data.sources[{i}] ({source.name}): weight must be > 0, got "
                                            f"{source.weight}"))
            if source.fim_rate is not None and not 0.0 <= source.fim_rate <= 1.0:
                out.append(("data-fim", f"data.sources[{i}] ({source.name}): fim_rate must be in [0, 1] or null, "
                                        f"got {source.fim_rate}"))
        for name in ("fim_rate", "fim_spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(("data-fim", f"data.{name} must be in [0, 1], got {value}"))
        if self.mode not in SAMPLE_MODES:
            out.append(("enum", f"data.mode must be one of {SAMPLE_MODES}, got {self.mode!r}"))
        if self.loader not in LOADERS:
            out.append(("enum", f"data.loader must be one of {LOADERS}, got {self.loader!r}"))
        if self.num_workers < 0 or self.prefetch < 1:
            out.append(("data-loader", f"data.num_workers must be >= 0 and data.prefetch >= 1, got "
                                       f"{self.num_workers}, {self.prefetch}"))
        try:
            split_percentages(self.split)
        except ValueError as error:
            out.append(("data-split", str(error)))
        return out

    def weights(self) -> List[float]:
        total = sum(s.weight for s in self.sources)
        return [s.weight / total for s in self.sources]


@contextmanager
def checks_deferred() -> Iterator[None]:
    """DataConfig objects built inside raise nothing; their problems() go to recipes.validate, which reports them
    in one error with every other broken rule of the recipe (recipes.compose builds recipes this way)."""
    token = _checks_deferred.set(True)
    try:
        yield
    finally:
        _checks_deferred.reset(token)


def split_percentages(split: str) -> List[float]:
    """'98,2,0' -> [0.98, 0.02, 0.0]; an error names the expected form."""
    try:
        parts = [float(x) for x in split.split(",")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"data.split must be 'train,valid,test' non-negative numbers like '98,2,0', got {split!r}")
    parts += [0.0] * (3 - len(parts))
    return [p / sum(parts) for p in parts]
