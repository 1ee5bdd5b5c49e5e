# synthface on a CUDA runtime. Build: docker build -t synthface .
# Run:   docker run --gpus all -v "$PWD/out:/out" synthface generate --recipe recipes/arc2face-quickstart.yaml --out /out/quick
# PyTorch wheels from PyPI bundle their own CUDA libraries; the host needs a recent NVIDIA driver.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY synthface ./synthface
COPY recipes ./recipes
RUN pip install --upgrade pip==25.3 \
    && pip install ".[dlib,onnx]"

VOLUME ["/cache", "/out"]
ENTRYPOINT ["synthface"]
CMD ["--help"]
