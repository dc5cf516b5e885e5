#!/usr/bin/env bash
# Install this project into an image that already has CUDA torch (NVIDIA's PyTorch container, see Dockerfile)
# without ever replacing torch or what is compiled against it (Transformer Engine, apex, flash-attn, triton).
# Extra arguments go to pip (tests/test_container.py passes --dry-run --report FILE).
#
# Why not the container's own /etc/pip/constraint.txt (PIP_CONSTRAINT): it pins every package the container
# ships, and requirements-common.txt pins some of the same packages to other versions (numpy, ...), which makes
# the install unsatisfiable. Pinning exactly the installed torch and the packages built against it keeps what
# must not move, lets the rest resolve, and makes pip fail (not silently reinstall) if a requirement ever asks
# for another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
pins="$(mktemp)"
python -m pip list --format=freeze \
    | grep -iE '^(torch|transformer[-_]engine[-_a-z0-9]*|apex|flash[-_]attn|triton)==' > "$pins" || true
if ! grep -qi '^torch==' "$pins"; then
    echo "error: $(python -c 'import sys; print(sys.executable)') has no torch: this script is for images that" \
         "ship CUDA torch (NVIDIA's PyTorch container); elsewhere pip install -r requirements.txt" >&2
    exit 1
fi
echo "keeping the image's $(tr '\n' ' ' < "$pins")" >&2
PIP_CONSTRAINT="$pins" python -m pip install "$@" -r requirements-common.txt -r requirements-gpu.txt
