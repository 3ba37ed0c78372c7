# One image for the API, the migration step and the workers (CPU and GPU).
# TORCH_SPEC picks the torch build: the default PyPI wheel on Linux x86-64 ships CUDA
# libraries, so the same image runs on CPU nodes and on GPU nodes with the NVIDIA runtime.
FROM python:3.11-slim AS base
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TRAINLAB_DATA_DIR=/data
WORKDIR /app
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home trainlab && mkdir -p /data && chown trainlab /data
USER trainlab
EXPOSE 8000
CMD ["uvicorn", "service.api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
