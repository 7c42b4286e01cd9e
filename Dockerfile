# attnbench for reproducible hardware runs.
#   CPU  (default): docker build -t attnbench .
#   CUDA:           docker build -t attnbench:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg ONNXRUNTIME=onnxruntime-gpu .
#   run:            docker run --rm [--gpus all] -v "$PWD/out:/out" attnbench compare --all -o /out/report.md
#   behind a proxy or a mirror: add `--secret id=pip.conf,src=PIP_CONF --secret id=pip-ca,src=CA_BUNDLE`
#                   (and `--build-arg TORCH_INDEX=` if the mirror holds the CPU wheel); see README.md, Docker.
# The install steps are the README's: torch==2.13.0 first, then the project.
# benchmarks/docker_check.sh builds and runs this file with podman and checks the counts against the host's.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Where torch comes from: the CPU wheel index by default, a CUDA index for the GPU image; empty means pip's
# own configured index (a mirror holding the CPU wheel, for instance).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# The ONNX Runtime build: the project's CPU one, or onnxruntime-gpu (CUDA 12, cuDNN 9: the CUDA base image's) for the
# CUDA image, so that its ort-cuda backend has a CUDA provider. One import package: the CPU build goes first.
ARG ONNXRUNTIME=onnxruntime

# The version is pyproject.toml's (tests/test_packaging.py keeps them equal).
LABEL org.opencontainers.image.title="attnbench" \
      org.opencontainers.image.description="Count, time and compare vision attention modules (CPU, CUDA, ONNX Runtime)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The CUDA base images ship no Python: install it there; the python image already has it. The distro's
# python3 version differs between base images, so it is not pinned.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /opt/attnbench
COPY pyproject.toml README.md ./
COPY attnbench ./attnbench

# pip's configuration (index, proxy, certificates) and a CA bundle may come in as build secrets: mounted for
# this step only, never stored in a layer. Without them pip uses its defaults. ONNXRUNTIME is not pinned, as the
# project's own onnxruntime>=1.18 is not.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && if [ -n "${TORCH_INDEX}" ]; then python3 -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"; \
       else python3 -m pip install "torch==${TORCH_VERSION}"; fi \
    && python3 -m pip install . \
    && if [ "${ONNXRUNTIME}" != onnxruntime ]; then \
         python3 -m pip uninstall -y onnxruntime && python3 -m pip install "${ONNXRUNTIME}"; fi

# Reports go to /out, usually a bind mount of a host directory. The container runs as root so that it can
# write there whoever owns it; pass `--user "$(id -u):$(id -g)"` to write files as yourself instead.
RUN mkdir -p /out && chmod 1777 /out
WORKDIR /out

# A batch tool, not a service: there is nothing to probe between runs.
HEALTHCHECK NONE
ENTRYPOINT ["attnbench"]
CMD ["--help"]
