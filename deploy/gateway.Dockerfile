# syntax=docker/dockerfile:1
# The gateway: services/ and the client package on the serving dependencies only. No torch, no model: a slim image
# (tests/deploy checks that the requirements cover what the gateway imports, and hold no torch).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first (a layer that changes only with pyproject.toml), derived from pyproject.toml.
# The client distribution first (grpcio, protobuf, typer; the project depends on it and it is on no index).
COPY clients/python/ clients/python/
RUN /opt/venv/bin/pip install ./clients/python
COPY pyproject.toml README.md LICENSE ./
COPY deploy/requirements.py deploy/requirements.py
RUN python deploy/requirements.py gateway > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
# The code, without its dependencies (torch among them): the gateway imports cm3leon's torch-free request types.
COPY cm3leon/ cm3leon/
COPY cm3leon_cli/ cm3leon_cli/
COPY cm3leon_stack/ cm3leon_stack/
COPY services/ services/
COPY worker/ worker/
RUN /opt/venv/bin/pip install --no-deps . \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin cm3leon
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /app/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CM3LEON_HOST=0.0.0.0 CM3LEON_PORT=50051
WORKDIR /app
USER 10001
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s CMD ["python", "/app/healthcheck.py", "gateway"]
ENTRYPOINT ["python", "-m", "services.gateway"]
