"""MCORE_DIR/hf/: what an import keeps beside the megatron weights, so an export can give the source back.

The source's config.json, generation_config.json and tokenizer files are copied verbatim, and convert.json
records the exact ModelShape, YaRN scaling and dtypes. With it an export of an import reproduces config.json
byte for byte, including facts no recipe field states (the instruct models' rms_norm_eps 1e-6).
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hf_interop.files import CONFIG, read_json, write_json
from model.shapes import ModelShape, YarnScaling

SIDECAR_DIR, CONVERT_INFO, GENERATION_CONFIG = "hf", "convert.json", "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")


@dataclass(frozen=True)
class Sidecar:
    """One import's sidecar: `directory` is MCORE_DIR/hf; dtypes are names ("bfloat16")."""

    directory: Path
    shape: ModelShape
    yarn: Optional[YarnScaling]
    dtype: str
    source_dtype: str
    source: str

    @property
    def info_path(self) -> Path:
        return self.directory / CONVERT_INFO

    @classmethod
    def read(cls, checkpoint_dir: Path) -> Optional["Sidecar"]:
        """The sidecar of a checkpoint directory, or None when it has none (a training checkpoint)."""
        path = Path(checkpoint_dir) / SIDECAR_DIR / CONVERT_INFO
        if not path.is_file():
            return None
        info = read_json(path)
        yarn = YarnScaling(**info["yarn"]) if info["yarn"] else None
        return cls(path.parent, ModelShape(**info["shape"]), yarn, info["dtype"], info["source_dtype"],
                   info["source"])

    def write(self, hf_dir: Path) -> None:
        """Create `directory` with the small files of the HF directory `hf_dir` and convert.json."""
        self.directory.mkdir()
        for name in (CONFIG, GENERATION_CONFIG, *TOKENIZER_FILES):
            if (hf_dir / name).is_file():
                shutil.copyfile(hf_dir / name, self.directory / name)
        write_json(self.info_path, {
            "shape": dataclasses.asdict(self.shape),
            "yarn": dataclasses.asdict(self.yarn) if self.yarn is not None else None,
            "dtype": self.dtype,
            "source_dtype": self.source_dtype,
            "source": self.source,
        })
