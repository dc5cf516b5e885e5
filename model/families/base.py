"""The vocabulary a family module's Hugging Face tensor table is written in (hf_interop.names implements it).

Each HF_LAYER_TENSORS row of a family (model/families/qwen2.py) is (HF names, megatron-core name, kind):
RENAME: one HF tensor, unchanged; QKV: HF (q, k, v) interleaved into megatron's fused linear_qkv, per KV group;
GATE_UP: HF (gate, up) concatenated into megatron's SwiGLU linear_fc1, in that order.
"""
RENAME, QKV, GATE_UP = "rename", "qkv", "gate_up"
