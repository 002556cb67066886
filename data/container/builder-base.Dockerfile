# The wheel builder's base, made without Docker Hub: a Debian bookworm root made by debootstrap, with
# what building the extension needs (C++ for the libtorch shim, cmake and nasm for libjpeg-turbo,
# Python's headers). Rust is not in it: `make docker-cpu` mounts this machine's toolchain
# (~/.rustup) and cargo home (~/.cargo) into the build, at the paths set here.
ARG DEBIAN_IMAGE=localhost/beam-ml-flink/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3-dev python3-venv cmake nasm g++ make \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
    PATH=/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/bin:$PATH
