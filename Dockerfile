# The GPU image: a slim Python base, onnxruntime-gpu, and CUDA and cuDNN from the nvidia-* wheels that
# onnxruntime-gpu itself names as its extras `cuda` and `cudnn`, so its version alone decides theirs
# (pyproject.toml's `gpu` extra pins it; 1.31.1 takes CUDA 13 and cuDNN 9). No CUDA base image: its
# CUDA could only disagree with the wheels'. The host needs an NVIDIA driver for that CUDA (13: driver
# 580 or newer) and the NVIDIA container toolkit; without a GPU the same image serves on the CPU.
#   docker build -t model-runtime:0.1.0 .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/models:/models model-runtime:0.1.0
# tests/test_dockerfile.py checks this file against pyproject.toml and the settings (base, extras,
# ports, health check, user).

# ---- build: the wheel, with its Cython extensions and generated gRPC modules ------------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY csrc ./csrc
COPY runtime ./runtime
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime ---------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/model-runtime \
    PATH=/opt/model-runtime/bin:$PATH

# libgomp1: ONNX Runtime's OpenMP runtime on the CPU path.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv $VIRTUAL_ENV
COPY --from=build /wheels /wheels
# gpu: onnxruntime-gpu[cuda,cudnn] (the nvidia-* wheels); tracing: the OpenTelemetry SDK and exporters.
RUN pip install "$(ls /wheels/model_runtime-*.whl)[gpu,tracing]" \
    && rm -rf /wheels \
    && python -c "import runtime.codec as c; print('codec', c.IMPLEMENTATION)"

RUN groupadd --gid 1000 serve && useradd --create-home --uid 1000 --gid 1000 serve \
    && mkdir /models && chown serve:serve /models
USER 1000:1000
WORKDIR /home/serve

EXPOSE 8000 8001 8002
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]

ENV MODEL_RUNTIME_MODEL_REPOSITORY=/models
ENTRYPOINT ["model-runtime", "serve"]
