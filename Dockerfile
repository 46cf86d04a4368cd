# GPU image: CUDA runtime + cuDNN, onnxruntime-gpu, non-root user, models mounted at /models.
#   docker build -t model-runtime .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/models:/models model-runtime
# onnxruntime-gpu 1.2x/1.3x wheels on PyPI are built against CUDA 12 and cuDNN 9.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS runtime

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/model-runtime \
    PATH=/opt/model-runtime/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY csrc ./csrc
COPY runtime ./runtime
# Builds the Cython extensions and the gRPC modules; onnxruntime-gpu comes from the dependencies.
RUN pip install --upgrade pip && pip install . && python -c "import runtime.codec as c; print('codec', c.IMPLEMENTATION)" \
    && apt-get purge -y gcc python3-dev && apt-get autoremove -y

RUN useradd --create-home --uid 1000 serve && mkdir /models && chown serve /models
USER serve
WORKDIR /home/serve

EXPOSE 8000 8001 8002
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1

ENV MODEL_RUNTIME_MODEL_REPOSITORY=/models
ENTRYPOINT ["model-runtime", "serve"]
