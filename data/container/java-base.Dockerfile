# A Java 17 runtime on the Debian bookworm root that `make container-debian` makes by debootstrap
# (Docker Hub is not needed): the base of the Flink and job server images. Only the headless JRE:
# Flink and Beam's job server need no AWT, and every megabyte is pulled by every TaskManager.
ARG DEBIAN_IMAGE=localhost/beam-ml-flink/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openjdk-17-jre-headless procps >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
