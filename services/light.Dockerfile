# The light services, gateway and metering: grpc, FastAPI and the generated stubs, with the shared
# packages and the one service's own folder (no torch, vLLM or transformers; no engine code).
# Build from the repo root: docker build -f services/light.Dockerfile --build-arg SERVICE=gateway .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_FIND_LINKS=
ARG SERVICE
ENV PIP_FIND_LINKS=${PIP_FIND_LINKS} PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    LLMSERVE_SERVICE=${SERVICE}
RUN test -n "$SERVICE" || (echo "build with --build-arg SERVICE=gateway|metering" && exit 1)
WORKDIR /app
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app:/app/gen
COPY requirements/service.txt requirements/
RUN pip install -r requirements/service.txt
COPY protos/ protos/
COPY tools/__init__.py tools/gen_protos.py tools/
RUN python tools/gen_protos.py --out gen
COPY services/__init__.py services/
COPY services/contracts/ services/contracts/
COPY services/grpc_errors/ services/grpc_errors/
COPY services/grpc_lifecycle/ services/grpc_lifecycle/
COPY services/service_auth/ services/service_auth/
COPY services/tracing/ services/tracing/
COPY services/usage_outbox/ services/usage_outbox/
COPY services/${SERVICE}/ services/${SERVICE}/
ENV GATEWAY_DATA_DIR=/data METERING_DATA_DIR=/data
EXPOSE 8000 50052 9102
CMD ["sh", "-c", "exec python -m services.${LLMSERVE_SERVICE}"]
