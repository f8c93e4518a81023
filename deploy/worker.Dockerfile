# syntax=docker/dockerfile:1
# The worker: torch, the model core and the Celery worker, with the shipped models/ baked in (mount a volume on
# /app/models, or set CM3LEON_MODEL_DIR, to serve another model).
#
#   GPU (default): torch from PyPI, whose Linux wheels carry the CUDA runtime (the host needs the NVIDIA driver and
#                  the NVIDIA container toolkit).
#   CPU:           --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (deploy/compose.cpu.yml does).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
# The client distribution first (grpcio, protobuf, typer; the project depends on it and it is on no index).
COPY clients/python/ clients/python/
RUN /opt/venv/bin/pip install ./clients/python
COPY pyproject.toml README.md LICENSE ./
COPY deploy/requirements.py deploy/requirements.py
RUN python deploy/requirements.py worker > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY cm3leon/ cm3leon/
COPY cm3leon_cli/ cm3leon_cli/
COPY cm3leon_stack/ cm3leon_stack/
COPY services/ services/
COPY worker/ worker/
RUN /opt/venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin cm3leon
COPY --from=build /opt/venv /opt/venv
COPY models/ /app/models/
COPY deploy/healthcheck.py /app/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    CM3LEON_MODEL_DIR=/app/models/shapes \
    CM3LEON_RETRIEVER_DIR=/app/models/shapes/retriever
WORKDIR /app
USER 10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s CMD ["python", "/app/healthcheck.py", "worker"]
# The pool (threads) and its size (CM3LEON_WORKER_JOBS) come from the settings (worker/app.py).
CMD ["celery", "-A", "worker.main", "worker", "-Q", "cm3.image,cm3.text,cm3.corpus", "-n", "worker@%h", \
     "--loglevel", "INFO"]
