"""The Qwen2.5-Coder model on megatron-core: shapes, config, layer specs, build, parameter/FLOP accounting; what
makes Qwen2 Qwen2 (sizes, TransformerConfig fields, HF tensors and config.json keys) is model/families/qwen2.py
(the Hugging Face conversion mechanics are hf_interop.names).

Importing megatron-core without Transformer Engine and apex emits 6 "... not installed. Falling back to ..."
UserWarnings per process (12 lines per rank, from megatron.core.optimizer, models.backends, gpt_layer_specs,
megatron_fsdp); every one names a fallback this project never uses or already chose. They are filtered here,
the lowest layer that imports megatron, before any megatron import (recipes.schema imports model.shapes, so
every entry point passes here first: the one filter), and model.build says once which spec runs.
"""
import warnings

warnings.filterwarnings("ignore", message=r"(Transformer Engine and Apex are|Apex is) not installed",
                        category=UserWarning)
