# attnbench for reproducible hardware runs.
#   CPU  (default): docker build -t attnbench .
#   CUDA:           docker build -t attnbench:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   run:            docker run --rm [--gpus all] -v "$PWD/out:/out" attnbench compare --all -o /out/report.md
# The install steps are the README's: torch==2.13.0 first, then the project.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Where torch comes from: the CPU wheel index by default, a CUDA index for the GPU image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

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

RUN python3 -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && python3 -m pip install .

# Reports go to /out, usually a bind mount of a host directory. The container runs as root so that it can
# write there whoever owns it; pass `--user "$(id -u):$(id -g)"` to write files as yourself instead.
RUN mkdir -p /out && chmod 1777 /out
WORKDIR /out

ENTRYPOINT ["attnbench"]
CMD ["--help"]
