"""Hugging Face checkpoint directories on disk: read them (sharded or not), write them (sharded + index).

Only the file formats live here. Tensor names and layouts are hf_interop.names's; megatron is hf_interop.convert's.

Decisions, with the numbers behind them:
- Reading is lazy and zero-copy. safetensors 0.8's `safe_open(...).get_tensor` returns a tensor backed by the
  file's mmap (measured: four gets of a 256 MB tensor grew the RSS by 0 MB and shared one data_ptr), so
  checking the names and shapes of a 32B checkpoint's 771 tensors reads nothing, and renamed tensors are
  copied once, straight into the model. Only hf_interop.names' packed QKV and gate/up tensors are materialised.
- Safe loading only: safetensors cannot run code. `pytorch_model*.bin` (pickle) is read with
  `torch.load(weights_only=True, mmap=True)`, which refuses anything but tensors and plain containers; the
  released Qwen2.5-Coder checkpoints are safetensors, .bin only appears in older fine-tunes.
- Writing: shards filled in model order up to `max_shard_size` (default 5 GB, transformers 4.x's default and
  the size hubs serve well; the released 7B has 4 shards of <= 4 GB), named model-0000k-of-0000n.safetensors,
  plus model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: file}}. One
  shard is written as model.safetensors without an index, as transformers does. Every file carries the
  header metadata {"format": "pt"}, which transformers' loader requires.
"""
from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping, Union

import torch

CONFIG = "config.json"
SAFE_INDEX, SAFE_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
DEFAULT_MAX_SHARD = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class HFDirectoryError(ValueError):
    """A directory that is not a usable Hugging Face checkpoint; the message names the file and the fix."""


def parse_size(size: Union[int, str]) -> int:
    """Bytes from 5000000000, "5GB" (decimal, as transformers reads it) or "4GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"max shard size {size!r}: expected bytes or e.g. '5GB', '500MB', '4GiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise HFDirectoryError(f"{path} is not valid JSON ({error}); re-download or fix the file") from error


def write_json(path: Path, data: Mapping) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_config(directory: Path) -> dict:
    """config.json of an HF checkpoint directory, with a message that says what else the directory looks like."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HFDirectoryError(f"{directory} does not exist or is not a directory")
    path = directory / CONFIG
    if not path.is_file():
        hint = ""
        if (directory / "metadata.json").is_file() or (directory / "latest").is_file():
            hint = " It looks like a megatron checkpoint: use `convert.py export` to turn it into HF files."
        raise HFDirectoryError(f"{directory} has no {CONFIG}, so it is not a Hugging Face checkpoint.{hint}")
    return read_json(path)


class HFWeights(Mapping):
    """The tensors of an HF checkpoint directory as a read-only Mapping, loaded on access (see module doc)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._where: dict[str, Path] = {}  # tensor name -> file
        self._handles: dict[Path, object] = {}  # safetensors handles (mmap) or a loaded .bin state dict
        self.format = self._discover()

    # ---- discovery -------------------------------------------------------------------------------
    def _discover(self) -> str:
        d = self.directory
        if (d / SAFE_INDEX).is_file():
            self._from_index(d / SAFE_INDEX)
            return "safetensors"
        if (d / SAFE_SINGLE).is_file():
            self._add_files([d / SAFE_SINGLE])
            return "safetensors"
        loose = sorted(d.glob("*.safetensors"))
        if loose:  # shards without their index: the union, as long as no name appears twice
            self._add_files(loose)
            return "safetensors"
        if (d / BIN_INDEX).is_file():
            self._from_index(d / BIN_INDEX)
            return "bin"
        if (d / BIN_SINGLE).is_file():
            self._add_files([d / BIN_SINGLE])
            return "bin"
        raise HFDirectoryError(
            f"{d} has a config.json but no weights: looked for {SAFE_INDEX}, {SAFE_SINGLE}, *.safetensors, "
            f"{BIN_INDEX} and {BIN_SINGLE}. Download the *.safetensors files too (git lfs pull, or "
            "huggingface-cli download without --include filters)."
        )

    def _from_index(self, index_path: Path) -> None:
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFDirectoryError(f"{index_path} has no weight_map; it is not a transformers index file")
        files = sorted({self.directory / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise HFDirectoryError(f"{index_path.name} lists shard file(s) that are not in {self.directory}: "
                                   f"{missing}; the download is incomplete")
        for name, file in weight_map.items():
            self._where[name] = self.directory / file
        for file in files:
            present = set(self._open(file).keys())
            listed = {n for n, f in self._where.items() if f == file}
            absent = sorted(listed - present)
            if absent:
                raise HFDirectoryError(f"{index_path.name} places {absent[:5]} in {file.name}, which lacks them; "
                                       "the index and the shards come from different checkpoints")

    def _add_files(self, files) -> None:
        for file in files:
            for name in self._open(file).keys():
                if name in self._where:
                    raise HFDirectoryError(f"tensor {name} is in both {self._where[name].name} and {file.name}; "
                                           f"add the {SAFE_INDEX} that says which shard to use")
                self._where[name] = file

    def _open(self, file: Path):
        if file not in self._handles:
            if file.suffix == ".safetensors":
                from safetensors import SafetensorError, safe_open

                try:
                    self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
                except SafetensorError as error:  # a truncated download or a file of another format
                    raise HFDirectoryError(f"{file} is not a readable safetensors file ({error}); "
                                           "re-download it") from error
            else:
                try:
                    self._handles[file] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except pickle.UnpicklingError as error:  # weights_only refused an object that is not a tensor
                    raise HFDirectoryError(
                        f"{file} holds pickled objects other than tensors, which are not loaded (they can run "
                        f"code): convert it to safetensors with a tool you trust. torch said: {error}") from error
        return self._handles[file]

    # ---- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        handle = self._open(self._where[name])
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def dtypes(self) -> Counter:
        """How many tensors of each dtype (free for mmap'd files: no data is read)."""
        return Counter(self[name].dtype for name in self)


def write_hf_weights(tensors: Mapping[str, torch.Tensor], directory: Path,
                     max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD) -> list[Path]:
    """Write `tensors` (in their order) as safetensors shards + index into an existing `directory`."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    count = len(shards)
    names = [SAFE_SINGLE] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    directory = Path(directory)
    for file, members in zip(names, shards):
        save_file({n: tensors[n].contiguous() for n in members}, str(directory / file), metadata={"format": "pt"})
    if count > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {n: file for file, members in zip(names, shards) for n in members}
        write_json(directory / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [directory / n for n in names]
