# r2vpo-ascend runtime: CANN + torch + torch-npu + vLLM/vllm-ascend + DeepSpeed + this package.
#
# Ascend (default; Atlas 800 A2 / 910B):
#   docker build -t r2vpo-ascend:ascend .
# NVIDIA GPUs:
#   docker build -t r2vpo-ascend:cuda --build-arg VARIANT=cuda \
#       --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3 .
# Run commands (device mounts, multi-node): docs/deployment.md.
#
# Version pairing for the Ascend variant, from the vllm-ascend v0.13.0 installation guide:
# CANN 8.5.0 + torch 2.8.0 + torch-npu 2.8.0 + vLLM 0.13.0 + vllm-ascend 0.13.0 (Python 3.10/3.11).
# Change them together. The base is Ascend's published CANN image (quay.io/ascend/cann, which
# also has -a3- tags for Atlas A3 and openEuler variants).
ARG BASE_IMAGE=quay.io/ascend/cann:8.5.0-910b-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}

# ascend | cuda
ARG VARIANT=ascend
ARG TORCH_VERSION=2.8.0
ARG TORCH_NPU_VERSION=2.8.0
ARG VLLM_VERSION=0.13.0
ARG VLLM_ASCEND_VERSION=0.13.0
ARG DEEPSPEED_VERSION=0.19.8
ARG PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG ASCEND_PIP_INDEX=https://mirrors.huaweicloud.com/ascend/repos/pypi
ARG APP_USER=r2vpo
ARG APP_UID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    R2VPO_VARIANT=${VARIANT}

# git: vLLM is installed from its release tag on Ascend (as vllm-ascend's own Dockerfile does).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# torch (+ torch-npu on Ascend). torch-npu X.Y.Z pairs with torch X.Y.Z; the Ascend build of
# torch is the plain CPU wheel. The CUDA variant keeps the base image's CUDA torch.
RUN if [ "${VARIANT}" = "ascend" ]; then \
        python3 -m pip install "torch==${TORCH_VERSION}" --index-url "${PYTORCH_CPU_INDEX}" \
        && python3 -m pip install "torch-npu==${TORCH_NPU_VERSION}"; \
    elif [ "${VARIANT}" = "cuda" ]; then \
        python3 -c "import torch; print('base image torch', torch.__version__, torch.version.cuda)"; \
    else \
        echo "VARIANT must be ascend or cuda, got ${VARIANT}" >&2; exit 1; \
    fi

# vLLM. Ascend: vLLM built with VLLM_TARGET_DEVICE=empty (no CUDA kernels; triton removed, it
# does not work on Ascend), then the vllm-ascend plugin from PyPI with CANN's env sourced.
RUN if [ "${VARIANT}" = "ascend" ]; then \
        git clone --depth 1 --branch "v${VLLM_VERSION}" https://github.com/vllm-project/vllm.git /tmp/vllm \
        && VLLM_TARGET_DEVICE=empty python3 -m pip install /tmp/vllm --extra-index-url "${PYTORCH_CPU_INDEX}" \
        && rm -rf /tmp/vllm \
        && (python3 -m pip uninstall -y triton || true) \
        && . /usr/local/Ascend/ascend-toolkit/set_env.sh \
        && { [ ! -f /usr/local/Ascend/nnal/atb/set_env.sh ] || . /usr/local/Ascend/nnal/atb/set_env.sh; } \
        && python3 -m pip install "vllm-ascend==${VLLM_ASCEND_VERSION}" \
            "torch==${TORCH_VERSION}" "torch-npu==${TORCH_NPU_VERSION}" \
            --extra-index-url "${PYTORCH_CPU_INDEX}" --extra-index-url "${ASCEND_PIP_INDEX}"; \
    else \
        python3 -m pip install "vllm==${VLLM_VERSION}"; \
    fi

# >= 0.19.8: the engine needs unmanaged gradient accumulation (r2vpo_ascend/engines/deepspeed.py).
RUN python3 -m pip install "deepspeed==${DEEPSPEED_VERSION}"

# This package (not editable), with the launch scripts and configs next to it.
WORKDIR /opt/r2vpo-ascend
COPY setup.py README.md ./
COPY device ./device
COPY r2vpo_ascend ./r2vpo_ascend
# The local package: its dependencies are ranged in setup.py (torch, vLLM are pinned above).
# hadolint ignore=DL3013
RUN python3 -m pip install ".[data,tracking,deepspeed]"
COPY configs ./configs
COPY scripts ./scripts
COPY docs ./docs

# Non-root user. On Ascend the devices belong to the driver's HwHiAiUser group: add its host GID at
# run time (`docker run --group-add "$(getent group HwHiAiUser | cut -d: -f3)"`, docs/deployment.md).
RUN useradd --create-home --uid "${APP_UID}" --shell /bin/bash "${APP_USER}" \
    && mkdir -p /opt/r2vpo-ascend/runs \
    && chown -R "${APP_USER}:${APP_USER}" /opt/r2vpo-ascend/runs
USER ${APP_USER}

# CANN's set_env.sh is sourced by the entrypoint (a no-op without CANN).
ENTRYPOINT ["/opt/r2vpo-ascend/scripts/docker-entrypoint.sh"]
HEALTHCHECK --interval=5m --timeout=60s --start-period=30s CMD ["python3", "-c", "import device, r2vpo_ascend"]
CMD ["r2vpo", "info"]
