# The CPU SDK worker image for Flink with --environment_type=DOCKER (and Dataproc): Beam's Python SDK
# harness image with beam-ml-flink and a CPU-only torch installed. `make docker-cpu` builds it.
# The base images are build arguments: by default the public ones (Docker Hub); `make docker-cpu`
# on a machine without Docker Hub passes ones it makes (data/container/*.Dockerfile).
ARG BEAM_VERSION=2.77.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
ARG SDK_IMAGE=apache/beam_python3.11_sdk:${BEAM_VERSION}

# The wheel is built here, against the same torch the runtime gets.
FROM ${BUILDER_IMAGE} AS builder
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev cmake nasm g++ make \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
 && pip install --no-cache-dir "maturin==1.16.0"
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs pyproject.toml README.md ./
COPY src src
COPY benches benches
# Cargo's test and bench targets, which build.rs gives link arguments, must exist to build at all.
COPY tests/*.rs tests/
COPY python python
RUN maturin build --release --out /dist

# Beam's SDK harness image: its entrypoint (/opt/apache/beam/boot) is what the runner starts.
FROM ${SDK_IMAGE} AS cpu
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# torch in a layer of its own, before the wheel: a change to the sources rebuilds the wheel's
# layer alone, not torch's gigabytes.
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
COPY --from=builder /dist /tmp/dist
# The extras: Beam's shard readers, and its S3 filesystem (boto3) for s3:// paths.
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
      "$(ls /tmp/dist/*.whl)[beam,aws]" \
 && rm -rf /tmp/dist \
 && python -c "import beam_ml_flink"
