# Beam's Python SDK harness image, made without Docker Hub: a Debian bookworm root made by
# debootstrap (Python 3.11), apache-beam from PyPI, and Beam's boot binary (go install of
# github.com/apache/beam/sdks/v2/python/container) as the entrypoint, where Beam's own images keep
# it. `make docker-cpu` builds it where the public apache/beam_python3.11_sdk image is out of reach.
ARG DEBIAN_IMAGE=localhost/beam-ml-flink/debian:bookworm
FROM ${DEBIAN_IMAGE}
ARG BEAM_VERSION=2.77.0
RUN python3 -m venv /opt/python
# `python` and `pip` are the venv's, as /usr/local's are in Beam's images; the boot binary runs the
# SDK in this environment rather than making one of its own.
ENV PATH=/opt/python/bin:$PATH RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
RUN pip install --no-cache-dir --quiet "apache-beam==${BEAM_VERSION}"
COPY boot /opt/apache/beam/boot
ENTRYPOINT ["/opt/apache/beam/boot"]
