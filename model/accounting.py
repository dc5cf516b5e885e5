"""Parameter and FLOP accounting for a ModelShape: the numbers the planner and the MFU log use.

The parameter counts are the shape's family's (model.families; Qwen2's below); the FLOP formula is any
decoder's. Parameters (exact; the tests check them against megatron and transformers built on the meta device):
    embedding V*h, counted once when tied (0.5B/1.5B/3B) and twice (embedding + output layer) when untied;
    per layer: QKV h*(n+2g)*d + bias (n+2g)*d, output projection n*d*h, SwiGLU 3*h*f, two RMSNorms 2*h;
    final RMSNorm h.  (h hidden, f ffn, n heads, g KV groups, d head_dim, V vocab rows, L layers)
    -> 494,032,768 / 1,543,714,304 / 3,085,938,688 / 7,615,616,512 / 14,770,033,664 / 32,763,876,352.

Training FLOPs per token (forward + backward = 3 x forward; a matmul of m x k by k x n costs 2*m*k*n):
    6 * N_matmul + 12 * L * s * n * d
- N_matmul = weights that take part in a matmul for every token: all linear layers plus the output layer
  (V*h even when tied: the tied matrix is still multiplied). The embedding lookup, biases, norms, RoPE,
  SwiGLU's product and softmax are not matmuls and are left out, as megatron leaves them out (the largest,
  softmax, is ~5 FLOPs per score against 4*d in the two attention matmuls: ~1 % of attention at d = 128).
- Attention term: QK^T and attention x V are 2 * s * d FLOPs per head each in the forward, per token;
  x3 for training gives 12 * s * n * d per layer. The FULL s x s square is counted: NO causal halving,
  although a causal kernel skips about half of it. That is megatron-LM's own convention
  (num_floating_point_operations in megatron/training/training.py) and the one NeMo and Megatron-Bridge
  report MFU with, so our MFU compares with theirs; `causal=True` halves the term for hardware-efficiency
  questions. The convention matters at long context: at s = 4,096 attention is 10 % of the 7B's
  47.35 GFLOP/token, at s = 32,768 it is 48 % of 81.88 GFLOP/token.
- Per token at s = 4,096 (full square): 0.5B 4.02, 1.5B 11.38, 3B 22.14, 7B 47.35, 14B 96.02,
  32B 208.01 GFLOP. So 7B at 10,000 tokens/s per GPU is 473.5 TFLOP/s, 48 % MFU of an H100 SXM's
  989 dense bf16 TFLOP/s.
- Activation recomputation adds work but not model FLOPs; like megatron, it is not counted here.
"""
from __future__ import annotations

from model.families import family_of
from model.shapes import ModelShape


def parameter_breakdown(shape: ModelShape) -> dict[str, int]:
    """Parameters by part (the family's count); 'output_layer' is 0 for tied shapes (embedding counted once)."""
    return family_of(shape).parameter_breakdown(shape)


def parameter_count(shape: ModelShape) -> int:
    """Exact number of parameters (tied embedding counted once), e.g. 7,615,616,512 for the 7B."""
    return sum(parameter_breakdown(shape).values())


def matmul_parameter_count(shape: ModelShape) -> int:
    """Weights multiplied for every token: the linear layers plus the (possibly tied) output layer (the family's)."""
    return family_of(shape).matmul_parameter_count(shape)


def training_flops_per_token(shape: ModelShape, seq_length: int, causal: bool = False) -> float:
    """Forward+backward FLOPs per token at `seq_length` (module docstring: 6*N_matmul + 12*L*s*n*d).

    causal=False (default) counts the full attention square, megatron-LM's MFU convention.
    """
    attention = 12 * shape.num_layers * seq_length * shape.num_attention_heads * shape.head_dim
    if causal:
        attention /= 2
    return 6 * matmul_parameter_count(shape) + attention


def achieved_tflops(tokens_per_second: float, shape: ModelShape, seq_length: int, causal: bool = False) -> float:
    """Model TFLOP/s for a measured throughput (per GPU if `tokens_per_second` is per GPU)."""
    return tokens_per_second * training_flops_per_token(shape, seq_length, causal) / 1e12


def model_flops_utilization(
    tokens_per_second_per_gpu: float, shape: ModelShape, seq_length: int, peak_tflops_per_gpu: float
) -> float:
    """MFU in [0, 1] with megatron's convention, e.g. peak 989 for H100 SXM dense bf16."""
    return achieved_tflops(tokens_per_second_per_gpu, shape, seq_length) / peak_tflops_per_gpu
