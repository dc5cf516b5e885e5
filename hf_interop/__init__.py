"""Hugging Face interop in one package: `names` (the HF <-> megatron tensor table and config.json <-> shape),
`files` (safetensors and JSON reading/writing), `sidecar` (what an import keeps for a faithful export) and
`convert` (import and export, one process at TP1/PP1). Layering: launch -> hf_interop -> train -> model/data.
"""
