"""Acceptance 5 and the split guard: blended proportions within 1 % of the weights over 10k samples (each
sample's source identified from its token ids, not from megatron's bookkeeping); empty splits refused before
megatron builds (it would loop forever); DataConfig is a valid OmegaConf structured config."""

import numpy as np
import pytest

from data.config import DataConfig, DataSource
from data.datasets import DataValidationError, build_pretrain_datasets
from data.tokenizer import load_tokenizer

# Each source writes ids from its own range, so a sample's tokens say where it came from.
RANGES = {"code": (0, 1000), "text": (1000, 2000), "math": (2000, 3000)}
EOD = 151643



@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


def write_source(prefix, low, high, documents, seed):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for _ in range(documents):
        doc = np.append(rng.integers(low, high, rng.integers(10, 200)), EOD)
        builder.add_document(doc, [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_blend_proportions_within_one_percent(tmp_path, gloo, tok):
    sources = [DataSource(name, write_source(tmp_path / name, *RANGES[name], 400, i), w)
               for i, (name, w) in enumerate([("code", 0.7), ("text", 0.2), ("math", 0.1)])]
    cfg = DataConfig(sources=sources, split="95,5,0", fim_rate=0.0, cache_dir=str(tmp_path / "cache"))
    assert [s.weight for s in DataConfig().sources] == [0.7, 0.2, 0.1]  # the paper's default mixture
    train, valid = build_pretrain_datasets(cfg, seq_length=32, train_samples=10_000, valid_samples=100,
                                           seed=1234, tokenizer=tok)
    assert len(train) >= 10_000 and len(valid) >= 100
    counts = dict.fromkeys(RANGES, 0)
    for i in range(10_000):
        item = train[i]
        assert all(item[k].shape == (32,) for k in ("tokens", "labels", "loss_mask", "position_ids"))
        text = item["tokens"][item["tokens"] != EOD]
        source = [n for n, (lo, hi) in RANGES.items() if bool(((text >= lo) & (text < hi)).all())]
        assert len(source) == 1, "a sample mixes sources"
        counts[source[0]] += 1
    for source in sources:
        assert abs(counts[source.name] / 10_000 - source.weight) < 0.01, counts
    first = train[0]
    assert np.array_equal(first["tokens"][1:], first["labels"][:-1])  # labels are the next tokens


def test_empty_split_is_refused_before_building(tmp_path, tok):
    prefix = write_source(tmp_path / "small", 0, 1000, 40, 0)
    cfg = DataConfig(sources=[DataSource("math", prefix, 1.0)], split="99,1,0", fim_rate=0.0)
    with pytest.raises(DataValidationError, match=r"'math'.*40 documents.*valid split 0 documents") as error:
        build_pretrain_datasets(cfg, 32, 100, 10, seed=1, tokenizer=tok)
    assert "data.split" in str(error.value)
    # A valid share > 0 is built by megatron even when no validation samples are requested: refused too.
    with pytest.raises(DataValidationError):
        build_pretrain_datasets(cfg, 32, 100, 0, seed=1, tokenizer=tok)
    missing = DataConfig(sources=[DataSource("code", str(tmp_path / "nope"), 1.0)])
    with pytest.raises(DataValidationError, match="prepare.py"):
        build_pretrain_datasets(missing, 32, 100, 10, seed=1, tokenizer=tok)


def test_data_config_is_an_omegaconf_structured_config():
    from omegaconf import OmegaConf

    base = OmegaConf.structured(DataConfig)
    override = OmegaConf.create({"sources": [{"name": "code", "prefix": "/d/code", "weight": 3},
                                             {"name": "text", "prefix": "/d/text", "weight": 1}],
                                 "fim_rate": 0.25, "loader": "dali"})
    cfg = OmegaConf.to_object(OmegaConf.merge(base, override))
    assert isinstance(cfg, DataConfig) and isinstance(cfg.sources[0], DataSource)
    assert cfg.weights() == [0.75, 0.25] and cfg.fim_rate == 0.25
    with pytest.raises(Exception, match="loader"):
        OmegaConf.to_object(OmegaConf.merge(base, {"loader": "tf.data"}))
    with pytest.raises(ValueError, match="weight"):
        DataConfig(sources=[DataSource("code", "p", 0.0)])
    with pytest.raises(ValueError, match="split"):
        DataConfig(split="train=98")
