# Training image: NVIDIA's PyTorch container (Python 3.12, CUDA torch, Transformer Engine, apex and NCCL built
# together; what megatron-core 0.16.1 is built and tested on) plus this repository at its WORKDIR.
#   docker build -t REGISTRY/qwen-coder:TAG . && docker push REGISTRY/qwen-coder:TAG
# torch and Transformer Engine stay the container's own: deploy/container_install.sh pins them (never installs
# torch); the requirements are installed before the code is copied, so a code change rebuilds one layer.
FROM nvcr.io/nvidia/pytorch:25.11-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    OMP_NUM_THREADS=1

WORKDIR /workspace/qwen-coder
# Compilers and runtimes for evaluating MultiPL-E languages (C++, Java, PHP, TypeScript, C#, Bash, JS, Rust)
COPY deploy/install_languages.sh deploy/
RUN bash deploy/install_languages.sh
COPY requirements-common.txt requirements-gpu.txt ./
COPY deploy/container_install.sh deploy/
RUN bash deploy/container_install.sh

COPY . .
RUN pip install --no-deps -e .

# The training user (uid 1000): pods write only the mounted run volume (/runs) and /dev/shm; a PersistentVolume
# needs fsGroup 1000 in the pod (launch/k8s.py sets it) to be writable by this user.
RUN useradd --create-home --uid 1000 --shell /bin/bash trainer \
    && chown -R trainer:trainer /workspace/qwen-coder
USER 1000:1000

CMD ["python", "launch/plan.py", "+recipe=7b"]
