# beam-ml-flink. `make help` lists the targets. Everything is installed into .venv and data/;
# caches live in the user's home (pip, cargo).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
PYTHON ?= python3

# tch builds against, and links, the libtorch inside the venv's torch.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
export LIBTORCH_USE_PYTORCH := 1
export PYO3_PYTHON := $(PY)
# The embedded interpreter of `cargo test` (the binding tests) must see the venv's packages.
SITE_PACKAGES = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

# What the run targets classify; every run-* target takes the same variables.
DEMO_MODEL := data/models/efficientnet_lite0.pt
INPUT ?= data/images.txt
MODEL ?= $(DEMO_MODEL)
LABELS ?= data/models/imagenet_labels.txt
OUTPUT ?= build/output/$@/results
ARGS ?=
# The pretrained EfficientNet-Lite0 was trained with mean = std = 0.5; other models get ImageNet's.
DEMO_NORMALIZE := --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5
NORMALIZE = $(if $(filter $(DEMO_MODEL),$(MODEL)),$(DEMO_NORMALIZE))
CLEAN_OUTPUT = rm -f $(OUTPUT)-*-of-*.jsonl $(OUTPUT)_failures-*-of-*.jsonl
CLASSIFY = $(PY) -m beam_ml_flink --input $(if $(filter run-streaming,$@),$(INBOX),$(INPUT)) --output $(OUTPUT) --model_path $(MODEL) \
	$(if $(LABELS),--labels $(LABELS)) $(NORMALIZE) --show 20

# Prism, Beam's portable local runner, built from Beam's Go module at the installed Beam version.
BEAM_VERSION := $(shell sed -n 's/^apache-beam==//p' requirements.txt)
PRISM := build/bin/prism
export PRISM_LOCATION := $(abspath $(PRISM))

# Flink: the distribution from PyPI's apache-flink wheels (installed with --no-deps into a folder of
# its own) and Beam's Flink job server assembled from Maven Central (data/flink-job-server.pom.xml),
# both for Flink 1.19, the newest Flink whose Beam runner Maven Central serves here as a whole.
FLINK_VERSION := 1.19.3
FLINK_MINOR := $(basename $(FLINK_VERSION))
FLINK_DIST := build/flink-$(FLINK_VERSION)
FLINK_LOCATION ?= $(FLINK_DIST)/pyflink
JOB_SERVER_JAR := build/flink-job-server/beam-flink-job-server.jar
export FLINK_LOCATION := $(abspath $(FLINK_LOCATION))
export FLINK_JOB_SERVER_JAR := $(abspath $(JOB_SERVER_JAR))
SERVICES = $(PY) -m beam_ml_flink.services --work-dir build/flink/$@
# The local cluster's TaskManagers (each with its own SDK worker pool in the worker-pool mode).
TASKMANAGERS ?= 1
LOCAL_CLUSTER = --flink-conf data/flink-conf-local.yaml --cluster --taskmanagers $(TASKMANAGERS)
FLINK_RUNNER := --runner FlinkRunner --flink_version $(FLINK_MINOR) --flink_job_server_jar $(FLINK_JOB_SERVER_JAR)
PORTABLE_RUNNER := --runner PortableRunner --job_endpoint localhost:8099

# Kafka: an Apache Kafka broker assembled from Maven Central (data/kafka.pom.xml), for the Kafka
# run targets and tests; KafkaIO itself is on the job server's class path.
KAFKA_JAR := build/kafka/kafka-broker.jar
export KAFKA_BROKER_JAR := $(abspath $(KAFKA_JAR))

# An S3-compatible object store (S3Proxy, filesystem backend) assembled from Maven Central
# (data/s3proxy.pom.xml), for the object store tests and runs on s3:// paths.
S3PROXY_JAR := build/s3proxy/s3proxy.jar
export OBJECT_STORE_JAR := $(abspath $(S3PROXY_JAR))

# A Google Cloud Storage emulator (fake-gcs-server, BSD-2-Clause) built with go install, for the
# tests and runs on gs:// paths.
FAKE_GCS_VERSION := 1.56.1
FAKE_GCS_SERVER := build/bin/fake-gcs-server
export GCS_STORE_BINARY := $(abspath $(FAKE_GCS_SERVER))

RUST_SOURCES := Cargo.toml Cargo.lock build.rs pyproject.toml $(shell find src -name '*.rs' -o -name '*.cpp' -o -name '*.h')
PY_SOURCES := $(shell find python -type f -not -path '*/__pycache__/*' -not -name '*.so')

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-32s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# libjpeg-turbo is built from source by the turbojpeg crate: cmake, and nasm for its SIMD code.
.PHONY: build-tools
build-tools:
	@command -v cmake >/dev/null && command -v nasm >/dev/null || { \
		echo "installing cmake and nasm (needed to build libjpeg-turbo)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake nasm >/dev/null; }

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The extension the venv runs: built here, against this machine's libraries.
HOST_WHEEL := build/wheel/.built

$(HOST_WHEEL): $(VENV)/.deps $(RUST_SOURCES) $(PY_SOURCES) README.md .cargo/config.toml | build-tools
	rm -rf build/wheel
	maturin build --release --out build/wheel
	touch $@

$(VENV)/.installed: $(HOST_WHEEL)
	$(PY) -m pip install --quiet --no-deps --force-reinstall build/wheel/beam_ml_flink-*.whl
	touch $@

# The wheel and the sdist of the current sources, for users; dist/.built goes with them, so a
# removed dist/ is rebuilt. The wheel is built in Debian bullseye (glibc 2.31, GCC 10: the
# builder image, made by debootstrap) with this machine's Rust toolchain and cargo cache mounted,
# and repaired by auditwheel into a manylinux_2_31 wheel, libtorch left out (it comes from the
# `torch` dependency, whose wheels need glibc 2.28). Debian buster (2.28) is no longer on the
# Debian mirror. The build runs from / so that .cargo/config.toml (libtorch through a Python
# that imports torch, which bullseye's 3.9 cannot) is not read: LIBTORCH names torch's folder.
WHEEL_BUILT := dist/.built
MANYLINUX := manylinux_2_31_x86_64
TORCH_LIB_DIR = $(SITE_PACKAGES)/torch/lib
WHEEL_BUILDER_IMAGE := localhost/beam-ml-flink/wheel-builder:bullseye
RUSTUP_HOME ?= $(HOME)/.rustup
CARGO_HOME ?= $(HOME)/.cargo

$(WHEEL_BUILT): $(VENV)/.deps $(RUST_SOURCES) $(PY_SOURCES) README.md .cargo/config.toml | build-tools container-wheel-builder
	rm -rf dist build/wheel-bullseye
	$(PLAIN_ENGINE) podman run --rm --network host --volume $(CURDIR):$(CURDIR) \
		--volume $(RUSTUP_HOME):$(RUSTUP_HOME):ro --volume $(CARGO_HOME):$(CARGO_HOME) \
		--env RUSTUP_HOME=$(RUSTUP_HOME) --env CARGO_HOME=$(CARGO_HOME) \
		--env PATH=$(CARGO_HOME)/bin:/usr/bin:/bin --env CARGO_TARGET_DIR=$(CURDIR)/target/bullseye \
		--env LIBTORCH=$(SITE_PACKAGES)/torch --workdir / $(WHEEL_BUILDER_IMAGE) \
		$(BIN)/maturin build --release --manifest-path $(CURDIR)/Cargo.toml --out $(CURDIR)/build/wheel-bullseye
	AUDITWHEEL_LD_LIBRARY_PATH=$(TORCH_LIB_DIR) auditwheel repair --plat $(MANYLINUX) \
		--exclude libtorch_cpu.so --exclude libc10.so -w dist build/wheel-bullseye/beam_ml_flink-*.whl
	maturin sdist --out dist
	touch $@

data/.made: $(VENV)/.deps data/make_demo.py
	$(PY) data/make_demo.py
	touch $@

$(PRISM): requirements.txt
	GOBIN=$(abspath $(dir $(PRISM))) go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)
	touch $@

$(FLINK_DIST)/.installed:
	rm -rf $(FLINK_DIST)
	$(PY) -m pip install --quiet --no-deps --target $(FLINK_DIST) \
		apache-flink==$(FLINK_VERSION) apache-flink-libraries==$(FLINK_VERSION)
	mkdir -p $(FLINK_DIST)/pyflink/log
	touch $@

$(JOB_SERVER_JAR): data/flink-job-server.pom.xml
	mvn --batch-mode --quiet -f data/flink-job-server.pom.xml package
	touch $@

$(KAFKA_JAR): data/kafka.pom.xml
	mvn --batch-mode --quiet -f data/kafka.pom.xml package
	touch $@

$(S3PROXY_JAR): data/s3proxy.pom.xml
	mvn --batch-mode --quiet -f data/s3proxy.pom.xml package
	touch $@

$(FAKE_GCS_SERVER):
	GOBIN=$(abspath $(dir $(FAKE_GCS_SERVER))) go install github.com/fsouza/fake-gcs-server@v$(FAKE_GCS_VERSION)
	touch $@

# The Flink Kubernetes Operator's CustomResourceDefinition of FlinkDeployment, from its API jar on
# Maven Central: deploy/kubernetes/ is validated against its schema (nothing here runs Kubernetes).
OPERATOR_VERSION := 1.10.0
OPERATOR_CRD := build/kubernetes/flinkdeployments.flink.apache.org-v1.yml
$(OPERATOR_CRD):
	mvn --batch-mode --quiet dependency:copy -DoutputDirectory=build/kubernetes \
		-Dartifact=org.apache.flink:flink-kubernetes-operator-api:$(OPERATOR_VERSION)
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
		build/kubernetes/flink-kubernetes-operator-api-$(OPERATOR_VERSION).jar \
		META-INF/fabric8/$(notdir $(OPERATOR_CRD)) $@

.PHONY: kafka
kafka: $(KAFKA_JAR) ## Assemble an Apache Kafka broker (KRaft) from Maven Central into build/kafka

.PHONY: s3proxy
s3proxy: $(S3PROXY_JAR) ## Assemble an S3-compatible object store (S3Proxy) from Maven Central into build/s3proxy

.PHONY: fake-gcs-server
fake-gcs-server: $(FAKE_GCS_SERVER) ## Build a Google Cloud Storage emulator (fake-gcs-server) with go install into build/bin

# The demo model as AOTInductor packages, fp32 and int8 (calibrated on the sample photos), compiled
# for this machine kind by `python -m beam_ml_flink.compile` into a cache in the home folder (named
# by a hash of the model, options, torch and CPU), then copied beside the TorchScript file.
PACKAGE_CACHE := $(HOME)/.cache/beam_ml_flink/packages
DEMO_PACKAGE := data/models/efficientnet_lite0.pt2
DEMO_PACKAGE_INT8 := data/models/efficientnet_lite0_int8.pt2
COMPILE_DEMO = PYTHONPATH=data $(PY) -m beam_ml_flink.compile --factory make_demo:efficientnet_lite0 \
	--name efficientnet_lite0 --output $(PACKAGE_CACHE)

$(DEMO_PACKAGE): $(VENV)/.installed data/.made
	cp "$$($(COMPILE_DEMO))" $@

$(DEMO_PACKAGE_INT8): $(VENV)/.installed data/.made
	cp "$$($(COMPILE_DEMO) --int8 --calibration data/images $(DEMO_NORMALIZE))" $@

.PHONY: models
models: $(DEMO_PACKAGE) $(DEMO_PACKAGE_INT8) ## Compile the demo model into AOTInductor packages, fp32 and int8, for this machine

.PHONY: flink
flink: $(VENV)/.deps $(FLINK_DIST)/.installed ## Install the Flink distribution into build/ (FLINK_LOCATION)

.PHONY: flink-job-server
flink-job-server: $(JOB_SERVER_JAR) ## Assemble Beam's Flink job server from Maven Central into build/

.PHONY: init
init: $(VENV)/.installed data/.made ## Create .venv, install deps, build and install the extension, make demo data

.PHONY: wheel
wheel: $(WHEEL_BUILT) ## Build the manylinux wheel and the sdist of the current sources into dist/

.PHONY: run
run: run-direct ## Set up, then classify the sample photos on the DirectRunner and print a table

.PHONY: run-direct
run-direct: init ## Classify INPUT with MODEL on the DirectRunner (also OUTPUT, LABELS, ARGS)
	$(CLEAN_OUTPUT)
	$(CLASSIFY) --runner DirectRunner $(ARGS)

.PHONY: run-prism
run-prism: init $(PRISM) ## Classify INPUT with MODEL on the PrismRunner (Prism built with go install)
	$(CLEAN_OUTPUT)
	$(CLASSIFY) --runner PrismRunner --prism_location $(PRISM_LOCATION) $(ARGS)

# Streaming: the job watches INBOX; with the default INBOX the sample photos are moved into it one
# by one while the job runs. STOP_AFTER seconds, or until Ctrl-C when empty. STREAMING_RUNNER:
# the runner flags (Prism by default).
INBOX ?= build/streaming/inbox
STOP_AFTER ?= 40
STREAMING_RUNNER ?= --runner PrismRunner --prism_location $(PRISM_LOCATION)
FEED_SAMPLES = $(if $(filter build/streaming/inbox,$(INBOX)),( sleep 5; for f in data/images/*; do \
	cp $$f build/streaming/.incoming && mv build/streaming/.incoming $(INBOX)/$$(basename $$f); \
	sleep 2; done ) &)

.PHONY: run-streaming
run-streaming: init $(PRISM) ## Watch INBOX and classify images as they arrive, in 10 s windows, on Prism (STOP_AFTER)
	rm -rf $(dir $(OUTPUT)) $(if $(filter build/streaming/inbox,$(INBOX)),$(INBOX)) && mkdir -p $(INBOX)
	$(FEED_SAMPLES) \
	$(CLASSIFY) --streaming $(STREAMING_RUNNER) --poll_interval 1 --window_size 10 \
		$(if $(STOP_AFTER),--stop_after $(STOP_AFTER)) $(ARGS)

# Kafka: a broker, the local Flink cluster, the job server and the Java expansion service; the
# images listed in INPUT are produced to the input topic one by one while the job runs; the
# answers are read back from the output topics into OUTPUT-*.jsonl and OUTPUT_failures-*.jsonl.
# It ends when every image is answered, or after STOP_AFTER seconds.
KAFKA_TOPICS := --input_topic images --output_topic predictions --failures_topic failures
MESSAGE_FORMAT ?= uri
run-kafka: STOP_AFTER = 300

.PHONY: run-kafka
run-kafka: init flink $(JOB_SERVER_JAR) $(KAFKA_JAR) ## Classify INPUT as Kafka messages on the local Flink cluster, checkpointed (STOP_AFTER, MESSAGE_FORMAT)
	$(CLEAN_OUTPUT)
	$(SERVICES) --flink-conf data/flink-conf-local.yaml --cluster --job-server $(JOB_SERVER_JAR) \
		--expansion-service $(JOB_SERVER_JAR) --kafka $(KAFKA_JAR) --topics images,predictions,failures -- \
	$(PY) -m beam_ml_flink.messages --input $(INPUT) --output $(OUTPUT) --timeout $(STOP_AFTER) --show 20 -- \
	$(PY) -m beam_ml_flink $(KAFKA_TOPICS) --bootstrap_servers 127.0.0.1:9092 --message_format $(MESSAGE_FORMAT) \
		--model_path $(MODEL) $(if $(LABELS),--labels $(LABELS)) $(NORMALIZE) \
		--state_backend filesystem --state_backend_storage_path file://$(abspath build/flink/$@/checkpoints) \
		$(PORTABLE_RUNNER) --environment_type LOOPBACK $(ARGS)

.PHONY: run-flink
run-flink: init $(JOB_SERVER_JAR) ## Classify INPUT on the FlinkRunner: the job server's embedded Flink, LOOPBACK workers
	$(CLEAN_OUTPUT)
	$(SERVICES) --flink-conf data/flink-conf.yaml -- \
	$(CLASSIFY) $(FLINK_RUNNER) --environment_type LOOPBACK $(ARGS)

.PHONY: run-portable-flink
run-portable-flink: init $(JOB_SERVER_JAR) ## Classify INPUT on the PortableRunner: a job server (8099) and its embedded Flink, or FLINK_MASTER
	$(CLEAN_OUTPUT)
	$(SERVICES) --flink-conf data/flink-conf.yaml --job-server $(JOB_SERVER_JAR) \
		$(if $(FLINK_MASTER),--flink-master $(FLINK_MASTER)) -- \
	$(CLASSIFY) $(PORTABLE_RUNNER) --environment_type LOOPBACK $(ARGS)

.PHONY: run-portable-flink-local
run-portable-flink-local: init flink $(JOB_SERVER_JAR) ## Classify INPUT on a local Flink cluster of TASKMANAGERS TaskManagers (UI on 8081) through the job server
	$(CLEAN_OUTPUT)
	$(SERVICES) $(LOCAL_CLUSTER) --job-server $(JOB_SERVER_JAR) -- \
	$(CLASSIFY) $(PORTABLE_RUNNER) --environment_type LOOPBACK $(ARGS)

.PHONY: run-portable-flink-worker-local
run-portable-flink-worker-local: init flink $(JOB_SERVER_JAR) ## Classify INPUT on the local Flink cluster (TASKMANAGERS) with an SDK worker pool beside each TaskManager (EXTERNAL)
	$(CLEAN_OUTPUT)
	$(SERVICES) $(LOCAL_CLUSTER) --job-server $(JOB_SERVER_JAR) --worker-pool -- \
	$(CLASSIFY) $(PORTABLE_RUNNER) --environment_type EXTERNAL --environment_config sdk-worker-pool:5000 $(ARGS)

# DOCKER workers: the TaskManager starts SDK harness containers of the image `make docker-cpu`
# built; they see this folder at its own path (the container engine mounts it), so INPUT, MODEL,
# LABELS and OUTPUT are given as absolute paths under it.
.PHONY: run-portable-flink-docker-local
run-portable-flink-docker-local: init flink $(JOB_SERVER_JAR) container-engine ## Classify INPUT on the local Flink cluster with DOCKER workers (the image of make docker-cpu)
	$(WITH_ENGINE) docker image inspect $(LOCAL_IMAGE) >/dev/null 2>&1 || \
		{ echo "no worker image $(LOCAL_IMAGE): run make docker-cpu first" >&2; exit 2; }
	$(CLEAN_OUTPUT)
	$(WITH_ENGINE) $(SERVICES) $(LOCAL_CLUSTER) --job-server $(JOB_SERVER_JAR) -- \
	$(PY) -m beam_ml_flink --input $(abspath $(INPUT)) --output $(abspath $(OUTPUT)) \
		--model_path $(abspath $(MODEL)) $(if $(LABELS),--labels $(abspath $(LABELS))) $(NORMALIZE) --show 20 \
		$(PORTABLE_RUNNER) --environment_type DOCKER --environment_config $(LOCAL_IMAGE) $(ARGS)

# A cluster whose machines share nothing, in containers on one podman network: the object store,
# a JobManager, TASKMANAGERS TaskManager pods (2 unless given; each with the worker image as its SDK
# worker pool sidecar, as deploy/kubernetes/ lays it out) and Beam's job server; no folder of this
# machine is mounted in any of them. INPUT, MODEL and LABELS are put into the store, the job runs
# on their URIs with its output in the store too (OUTPUT_FORMAT json or parquet), the output
# objects are got back into OUTPUT*, and everything is removed.
OUTPUT_FORMAT ?= json
STORE_BUCKET := beam-ml-flink
POD_TASKMANAGERS = $(if $(filter command line environment,$(origin TASKMANAGERS)),$(TASKMANAGERS),2)
# The job server in its container has no Flink configuration: the job's parallelism is given.
POD_SLOTS := $(shell sed -n 's/^ *taskmanager.numberOfTaskSlots: "\([0-9]*\)"/\1/p' deploy/kubernetes/flink-deployment.yaml)

.PHONY: run-cluster
run-cluster: init docker-flink docker-job-server docker-object-store docker-cpu ## Classify INPUT on a Flink cluster in containers sharing nothing, everything in an object store (TASKMANAGERS, OUTPUT_FORMAT)
	rm -f $(OUTPUT)-*-of-* $(OUTPUT)_failures-*-of-*
	$(PLAIN_ENGINE) $(SERVICES) --pod-cluster $(FLINK_IMAGE) --taskmanagers $(POD_TASKMANAGERS) \
		--flink-deployment deploy/kubernetes/flink-deployment.yaml --job-server-image $(JOB_SERVER_IMAGE) \
		--worker-image $(LOCAL_IMAGE) --object-store-image $(OBJECT_STORE_IMAGE) --buckets $(STORE_BUCKET) -- \
	$(PY) -m beam_ml_flink.objects --store s3://$(STORE_BUCKET)/$@ --input $(INPUT) --model $(MODEL) \
		$(if $(LABELS),--labels $(LABELS)) --output $(OUTPUT) -- \
	$(PY) -m beam_ml_flink $(NORMALIZE) --output_format $(OUTPUT_FORMAT) --show 20 \
		--runner PortableRunner --job_endpoint localhost:8099 --environment_type EXTERNAL \
		--environment_config localhost:50000 --parallelism $$(( $(POD_SLOTS) * $(POD_TASKMANAGERS) )) $(ARGS)

# Dataproc and Docker: the SDK worker image, a Dataproc cluster with Flink and Docker, and the job
# submitted by a local job server to the cluster's Flink through an SSH tunnel. Settings: .env.
# DRY_RUN=1 prints each gcloud and docker command instead of running it.
# .env holds KEY=value lines; the environment and the command line override them.
ENV_KEYS := $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' .env)
$(foreach key,$(ENV_KEYS),$(eval $(key) ?= $(shell sed -n 's/^$(key)=//p' .env)))
DO = $(if $(DRY_RUN),@echo,)
CPU_IMAGE_URI = $(IMAGE_REPOSITORY)/$(IMAGE_NAME):$(IMAGE_TAG)
GCLOUD_SSH = gcloud compute ssh $(CLUSTER_NAME)-m --project=$(PROJECT_ID) --zone=$(ZONE)
TUNNEL = -L $(TUNNEL_PATTERN)
TUNNEL_PATTERN = $(FLINK_TUNNEL_PORT):localhost:$(FLINK_REST_PORT)

# Containers: a Docker engine where one answers, unchanged; otherwise Debian's podman with runc
# (`make container-engine`), reached as `docker` through build/container-engine/bin and configured by
# data/container/containers.conf, with this folder mounted at its own path in every container
# (how DOCKER workers on the local cluster see the inputs, the model and the output folder).
DOCKER_ENGINE = $(shell timeout 10 docker info >/dev/null 2>&1 && echo yes)
ENGINE_DIR := build/container-engine
CONTAINERS_CONF := $(abspath $(ENGINE_DIR)/containers.conf)
# Root's podman keeps its images in /var/lib/containers, outside the home whose caches (pip, cargo,
# Maven, Go) a CI keeps between runs: this project's images are kept in the home with them, in a
# store of their own (CONTAINER_STORE; its run-time state under /run/beam-ml-flink).
CONTAINER_STORE := $(HOME)/.cache/beam_ml_flink/containers
STORAGE_CONF := $(abspath $(ENGINE_DIR)/storage.conf)
ENGINE_STORE = $(if $(filter 0,$(shell id -u)),CONTAINERS_STORAGE_CONF=$(STORAGE_CONF))
WITH_ENGINE = $(if $(DOCKER_ENGINE),,PATH=$(abspath $(ENGINE_DIR)/bin):$$PATH CONTAINERS_CONF=$(CONTAINERS_CONF) $(ENGINE_STORE))
# Images are built (and the cluster in containers run) with the engine's plain settings: the
# mount of this folder that WITH_ENGINE adds would leave its mount point, an empty folder named
# like this one, in every image layer that a RUN made, and in every image built on it.
PLAIN_ENGINE = $(if $(DOCKER_ENGINE),,PATH=$(abspath $(ENGINE_DIR)/bin):$$PATH CONTAINERS_CONF=$(abspath data/container/containers.conf) $(ENGINE_STORE))
LOCAL_IMAGE := localhost/beam-ml-flink/cpu:$(IMAGE_BEAM_VERSION)
# Base images made here when Docker Hub is out of reach: Debian by debootstrap (trusting the
# certificate authorities this machine adds to Debian's, as pip here does), Beam's SDK harness
# layout on it (boot built by go install), and the wheel builder's tools.
DEBIAN_IMAGE := localhost/beam-ml-flink/debian:bookworm
SDK_BASE_IMAGE := localhost/beam-ml-flink/beam_python3.11_sdk:$(IMAGE_BEAM_VERSION)
BUILDER_BASE_IMAGE := localhost/beam-ml-flink/builder:bookworm

.PHONY: container-engine
container-engine: ## Use the Docker engine that answers, or install and configure podman + runc
	@if [ -n "$(DOCKER_ENGINE)" ]; then echo "a Docker engine answers: using it"; else \
		command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
			echo "installing podman, runc, podman-docker and debootstrap from Debian"; \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq; \
			DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq podman runc podman-docker debootstrap >/dev/null; }; \
		mkdir -p $(ENGINE_DIR)/bin; \
		cp data/container/docker $(ENGINE_DIR)/bin/docker; \
		sed 's|^\[containers\]$$|[containers]\nvolumes = ["$(CURDIR):$(CURDIR)"]|' data/container/containers.conf > $(CONTAINERS_CONF); \
		printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "/run/beam-ml-flink/storage"\n' \
			$(CONTAINER_STORE) > $(STORAGE_CONF); \
		echo "podman answers as docker (CONTAINERS_CONF=$(CONTAINERS_CONF))"; fi

.PHONY: container-debian
container-debian: container-engine ## Make the Debian base image by debootstrap, once
	@$(PLAIN_ENGINE) podman image exists $(DEBIAN_IMAGE) || { \
		rm -rf $(ENGINE_DIR)/rootfs; \
		debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
			$(ENGINE_DIR)/rootfs http://deb.debian.org/debian >$(ENGINE_DIR)/debootstrap.log; \
		cp /usr/local/share/ca-certificates/*.crt $(ENGINE_DIR)/rootfs/usr/local/share/ca-certificates/ 2>/dev/null || true; \
		chroot $(ENGINE_DIR)/rootfs update-ca-certificates >/dev/null; \
		printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > $(ENGINE_DIR)/rootfs/etc/pip.conf; \
		tar -C $(ENGINE_DIR)/rootfs -c . | $(PLAIN_ENGINE) podman import - $(DEBIAN_IMAGE); \
		rm -rf $(ENGINE_DIR)/rootfs; }

# The builder of the wheel users install: Debian bullseye (glibc 2.31) with its compilers, cmake
# and nasm, by debootstrap; the Rust toolchain comes from the host (make wheel mounts it).
.PHONY: container-wheel-builder
container-wheel-builder: container-engine ## Make the bullseye image that builds the manylinux_2_31 wheel (debootstrap), once
	@$(PLAIN_ENGINE) podman image exists $(WHEEL_BUILDER_IMAGE) || { \
		rm -rf $(ENGINE_DIR)/rootfs-bullseye; \
		debootstrap --variant=minbase --include=build-essential,cmake,nasm,ca-certificates bullseye \
			$(ENGINE_DIR)/rootfs-bullseye http://deb.debian.org/debian >$(ENGINE_DIR)/debootstrap-bullseye.log; \
		cp /usr/local/share/ca-certificates/*.crt $(ENGINE_DIR)/rootfs-bullseye/usr/local/share/ca-certificates/ 2>/dev/null || true; \
		chroot $(ENGINE_DIR)/rootfs-bullseye update-ca-certificates >/dev/null; \
		tar -C $(ENGINE_DIR)/rootfs-bullseye -c . | $(PLAIN_ENGINE) podman import --quiet - $(WHEEL_BUILDER_IMAGE) >/dev/null; \
		rm -rf $(ENGINE_DIR)/rootfs-bullseye; }

.PHONY: container-bases
container-bases: container-debian ## Make the base images without Docker Hub (debootstrap, go install), once
	@$(PLAIN_ENGINE) podman image exists $(SDK_BASE_IMAGE) || { \
		mkdir -p $(ENGINE_DIR)/sdk; \
		GOBIN=$(abspath $(ENGINE_DIR)/sdk) go install github.com/apache/beam/sdks/v2/python/container@v$(IMAGE_BEAM_VERSION); \
		mv $(ENGINE_DIR)/sdk/container $(ENGINE_DIR)/sdk/boot; \
		$(PLAIN_ENGINE) podman build --network host --build-arg DEBIAN_IMAGE=$(DEBIAN_IMAGE) \
			--build-arg BEAM_VERSION=$(IMAGE_BEAM_VERSION) -f data/container/sdk-base.Dockerfile \
			--tag $(SDK_BASE_IMAGE) $(ENGINE_DIR)/sdk; }
	@$(PLAIN_ENGINE) podman image exists $(BUILDER_BASE_IMAGE) || \
		$(PLAIN_ENGINE) podman build --network host --build-arg DEBIAN_IMAGE=$(DEBIAN_IMAGE) \
			-f data/container/builder-base.Dockerfile --tag $(BUILDER_BASE_IMAGE) data/container

# Flink and Beam's job server in containers, for a cluster whose machines share nothing (make
# test-cluster): both on a Java base made here from the Debian one, Flink from the distribution in
# build/ (make flink), the job server as make flink-job-server assembles it. Rebuilt when the
# Dockerfile or what it copies changes (podman's layer cache), the Java base once.
JAVA_IMAGE := localhost/beam-ml-flink/java:17
FLINK_IMAGE := localhost/beam-ml-flink/flink:$(FLINK_VERSION)
JOB_SERVER_IMAGE := localhost/beam-ml-flink/flink-job-server:flink-$(FLINK_MINOR)
OBJECT_STORE_IMAGE := localhost/beam-ml-flink/s3proxy:3.3.0

.PHONY: container-java
container-java: container-debian ## Make the Java 17 base image (Debian's headless JRE on the Debian base), once
	@$(PLAIN_ENGINE) podman image exists $(JAVA_IMAGE) || \
		$(PLAIN_ENGINE) podman build --network host --build-arg DEBIAN_IMAGE=$(DEBIAN_IMAGE) \
			-f data/container/java-base.Dockerfile --tag $(JAVA_IMAGE) data/container

.PHONY: docker-flink
docker-flink: container-java $(FLINK_DIST)/.installed ## Build the Flink image (JobManager and TaskManagers) from the distribution in build/
	$(PLAIN_ENGINE) podman build --quiet --build-arg JAVA_IMAGE=$(JAVA_IMAGE) \
		-f data/container/flink.Dockerfile --tag $(FLINK_IMAGE) $(FLINK_DIST)/pyflink

.PHONY: docker-job-server
docker-job-server: container-java $(JOB_SERVER_JAR) ## Build the image of Beam's Flink job server from build/flink-job-server
	$(PLAIN_ENGINE) podman build --quiet --build-arg JAVA_IMAGE=$(JAVA_IMAGE) \
		-f data/container/flink-job-server.Dockerfile --tag $(JOB_SERVER_IMAGE) $(dir $(JOB_SERVER_JAR))

.PHONY: docker-object-store
docker-object-store: container-java $(S3PROXY_JAR) ## Build the object store's image (S3Proxy) from build/s3proxy
	$(PLAIN_ENGINE) podman build --quiet --build-arg JAVA_IMAGE=$(JAVA_IMAGE) \
		-f data/container/s3proxy.Dockerfile --tag $(OBJECT_STORE_IMAGE) $(dir $(S3PROXY_JAR))

.PHONY: docker-cpu
docker-cpu: ## Build the CPU SDK worker image: from the public images with Docker, else from bases made here
ifneq ($(DRY_RUN),)
	$(DO) docker build --target cpu --build-arg BEAM_VERSION=$(IMAGE_BEAM_VERSION) --tag $(CPU_IMAGE_URI) .
else
	@if [ -n "$(DOCKER_ENGINE)" ]; then \
		docker build --target cpu --build-arg BEAM_VERSION=$(IMAGE_BEAM_VERSION) \
			--tag $(LOCAL_IMAGE) --tag $(CPU_IMAGE_URI) . ; \
	else $(MAKE) --no-print-directory container-bases && \
		$(PLAIN_ENGINE) podman build --network host --target cpu \
			--build-arg BEAM_VERSION=$(IMAGE_BEAM_VERSION) \
			--build-arg BUILDER_IMAGE=$(BUILDER_BASE_IMAGE) --build-arg SDK_IMAGE=$(SDK_BASE_IMAGE) \
			--build-arg TORCH_INDEX_URL=https://pypi.org/simple \
			-v $(HOME)/.rustup:/root/.rustup:ro -v $(HOME)/.cargo:/root/.cargo \
			--tag $(LOCAL_IMAGE) --tag $(CPU_IMAGE_URI) . ; fi
endif

.PHONY: push-docker-cpu
push-docker-cpu: docker-cpu ## Push the CPU SDK worker image to IMAGE_REPOSITORY
	$(DO) gcloud auth configure-docker $(firstword $(subst /, ,$(IMAGE_REPOSITORY))) --quiet
	$(DO) docker push $(CPU_IMAGE_URI)

# Each Beam job leaves its classes in the TaskManagers' metaspace (about 50 MB a job, measured in
# the cluster in containers; apache/beam#25510): what deploy/kubernetes/flink-deployment.yaml gives.
TASKMANAGER_METASPACE := 1g

.PHONY: create-flink-cluster
create-flink-cluster: ## Create the Dataproc cluster with the Flink and Docker components
	$(DO) gcloud dataproc clusters create $(CLUSTER_NAME) --project=$(PROJECT_ID) --region=$(REGION) \
		--zone=$(ZONE) --image-version=$(DATAPROC_IMAGE_VERSION) --optional-components=FLINK,DOCKER \
		--enable-component-gateway --master-machine-type=$(MASTER_MACHINE_TYPE) \
		--worker-machine-type=$(WORKER_MACHINE_TYPE) --num-workers=$(NUM_WORKERS) \
		--worker-boot-disk-size=$(WORKER_BOOT_DISK_SIZE) --scopes=cloud-platform \
		--properties=flink:taskmanager.memory.jvm-metaspace.size=$(TASKMANAGER_METASPACE)

.PHONY: run-portable-flink-cluster
run-portable-flink-cluster: $(if $(DRY_RUN),,init $(JOB_SERVER_JAR)) ## Classify CLUSTER_INPUT on the Dataproc cluster's Flink with the SDK image
	$(DO) $(GCLOUD_SSH) -- -f -N -o ExitOnForwardFailure=yes $(TUNNEL)
	$(DO) $(SERVICES) --flink-conf data/flink-conf.yaml --flink-master localhost:$(FLINK_TUNNEL_PORT) \
		--job-server $(JOB_SERVER_JAR) --artifacts-dir $(CLUSTER_ARTIFACTS) -- \
		$(PY) -m beam_ml_flink --input $(CLUSTER_INPUT) \
		--output $(CLUSTER_OUTPUT) --model_path $(CLUSTER_MODEL) $(PORTABLE_RUNNER) \
		--environment_type DOCKER --environment_config $(CPU_IMAGE_URI) $(ARGS) \
		|| { status=$$?; pkill -f $(TUNNEL_PATTERN); exit $$status; }
	$(DO) pkill -f $(TUNNEL_PATTERN)

.PHONY: remove-flink-cluster
remove-flink-cluster: ## Delete the Dataproc cluster
	$(DO) gcloud dataproc clusters delete $(CLUSTER_NAME) --project=$(PROJECT_ID) --region=$(REGION) --quiet

.PHONY: prism
prism: $(PRISM) ## Build the Prism runner binary into build/bin

.PHONY: test
# The fresh install runs first and its venv (torch and its CUDA libraries: about 6 GB) is removed
# before pytest fills the disk with its own temporary files.
test: test-install test-rust test-python ## Run every test: a fresh install of the wheel, cargo test, pytest

.PHONY: test-fast
test-fast: init models $(OPERATOR_CRD) ## The inner loop: cargo test and the pytest tests marked not slow (no Flink, Prism, Kafka or subprocess pipelines)
	PYTHONPATH=$(SITE_PACKAGES) cargo test --locked --quiet
	$(PY) -m pytest -m "not slow" -q

.PHONY: test-rust
test-rust: init build-tools ## cargo test (pure Rust core and the binding layer)
	PYTHONPATH=$(SITE_PACKAGES) cargo test --locked

.PHONY: test-python
test-python: init $(WHEEL_BUILT) models $(PRISM) flink $(JOB_SERVER_JAR) $(KAFKA_JAR) $(S3PROXY_JAR) $(FAKE_GCS_SERVER) $(OPERATOR_CRD) ## pytest (Flink, Kafka and object store tests start their own)
	$(PY) -m pytest

# TASKMANAGERS is 2 here unless given. The engine's settings are the plain ones, without the mount
# of this folder that DOCKER workers get: no container of this cluster sees the submitting machine.
.PHONY: test-cluster
test-cluster: init docker-flink docker-job-server docker-object-store docker-cpu ## A Flink cluster in containers sharing nothing (JobManager, TASKMANAGERS TaskManager pods with worker sidecars, job server, object store): photos, hostile inputs and shards from the store, a pod killed mid-job
	$(PLAIN_ENGINE) BMF_FLINK_IMAGE=$(FLINK_IMAGE) BMF_JOB_SERVER_IMAGE=$(JOB_SERVER_IMAGE) \
		BMF_WORKER_IMAGE=$(LOCAL_IMAGE) BMF_OBJECT_STORE_IMAGE=$(OBJECT_STORE_IMAGE) \
		BMF_TASKMANAGERS=$(POD_TASKMANAGERS) \
		$(PY) -m pytest tests/test_pod_cluster.py -v

.PHONY: test-docker
test-docker: init flink $(JOB_SERVER_JAR) docker-cpu ## Build the worker image, then run the photos and the hostile corpus through DOCKER workers on the local cluster
	rm -rf build/test-docker
	$(WITH_ENGINE) BMF_WORKER_IMAGE=$(LOCAL_IMAGE) $(PY) -m pytest tests/test_docker.py --basetemp=build/test-docker -v

.PHONY: test-install
test-install: wheel data/.made ## Install the wheel with its [beam] extra alone in a fresh venv and classify photos; then build and install the sdist there
	rm -rf build/install-venv
	$(PYTHON) -m venv build/install-venv
	build/install-venv/bin/pip install --quiet "$$(ls dist/beam_ml_flink-*.whl)[beam]"
	cd build && install-venv/bin/python ../tests/smoke_install.py ../data
	# The sdist builds against the torch installed beside it (no build isolation: torch is the
	# libtorch it links; pyproject.toml names it for isolated builds too).
	build/install-venv/bin/pip uninstall --quiet --yes beam-ml-flink
	build/install-venv/bin/pip install --quiet maturin==$$(sed -n 's/^maturin==//p' requirements.txt)
	env -u LIBTORCH_USE_PYTORCH PATH=$(abspath build/install-venv/bin):$$PATH CARGO_TARGET_DIR=$(abspath target) \
		build/install-venv/bin/pip install --quiet --no-build-isolation --no-cache-dir dist/beam_ml_flink-*.tar.gz
	cd build && install-venv/bin/python ../tests/smoke_install.py ../data
	rm -rf build/install-venv

.PHONY: docs
docs: init ## Build the documentation site into build/site (mkdocs --strict: a broken link or reference fails)
	$(BIN)/mkdocs build --strict

.PHONY: lint
lint: init ## cargo fmt --check, clippy -D warnings, ruff, mypy (the package, strict) and stubtest
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	$(BIN)/ruff check python tests data bench fuzz
	$(BIN)/ruff format --check python tests data bench fuzz
	$(PY) -m mypy.stubtest beam_ml_flink._core
	$(PY) -m mypy

# Fuzzing: cargo fuzz (libFuzzer, AddressSanitizer; RUSTC_BOOTSTRAP lets the stable toolchain take
# the sanitizer flags) over decode + preprocess, then hypothesis's fuzz profile over the Python
# API, FUZZ_SECONDS each. Findings land in fuzz/artifacts/ and hypothesis's database.
FUZZ_SECONDS ?= 600
CARGO_FUZZ := $(HOME)/.cargo/bin/cargo-fuzz
TORCH_LIB = $(shell $(PY) -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')

$(CARGO_FUZZ):
	cargo install --locked cargo-fuzz

.PHONY: fuzz
fuzz: init $(CARGO_FUZZ) ## Fuzz decode + preprocess (cargo fuzz) and the Python API (hypothesis), FUZZ_SECONDS each
	$(PY) fuzz/make_seeds.py fuzz/corpus/decode_preprocess
	RUSTC_BOOTSTRAP=1 LD_LIBRARY_PATH=$(TORCH_LIB) cargo fuzz run decode_preprocess -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=4096
	end=$$((SECONDS + $(FUZZ_SECONDS))); while [ $$SECONDS -lt $$end ]; do \
		HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_properties.py \
			--hypothesis-seed=$$RANDOM || exit 1; done

.PHONY: soak
soak: init ## Resident memory over 20,000 images through classify, and one batch of 64 camera JPEGs
	$(PY) tests/soak.py soak
	$(PY) tests/soak.py camera

.PHONY: bench-core
bench-core: init ## Preprocessing and classify speed against the PIL + torchvision recipe
	$(PY) bench/bench_core.py

.PHONY: bench-rust
bench-rust: init build-tools ## criterion benches of the Rust stages: decode, resize, normalize, batch
	PYTHONPATH=$(SITE_PACKAGES) cargo bench --locked --bench stages -- --warm-up-time 1 --measurement-time 4

# The peers' packages (Ray Data, Daft) apart from the venv: only the peers' processes see them.
PEERS_PACKAGES := build/peers-packages
$(PEERS_PACKAGES)/.installed: bench/requirements-peers.txt | init
	rm -rf $(PEERS_PACKAGES)
	$(PY) -m pip install --quiet --target $(PEERS_PACKAGES) -r bench/requirements-peers.txt
	touch $@

.PHONY: bench
bench: init flink $(JOB_SERVER_JAR) $(PEERS_PACKAGES)/.installed ## The pipeline against Beam's stock PyTorch path and the bare model (BENCH_ARGS), then bench-scale and bench-peers
	$(SERVICES) --flink-conf data/flink-conf.yaml -- $(PY) bench/bench_pipeline.py $(BENCH_ARGS)
	$(PY) bench/bench_scale.py $(SCALE_ARGS)
	$(PY) bench/bench_peers.py $(PEERS_ARGS)

.PHONY: bench-peers
bench-peers: init $(PEERS_PACKAGES)/.installed ## Ours against a PyTorch DataLoader script, Ray Data, Daft and the stock Beam path, whole processes (PEERS_ARGS)
	$(PY) bench/bench_peers.py $(PEERS_ARGS)

.PHONY: bench-scale
# With the images of make test-cluster, the cluster in containers (2 TaskManager pods) too.
POD_IMAGES = $(FLINK_IMAGE) $(JOB_SERVER_IMAGE) $(LOCAL_IMAGE) $(OBJECT_STORE_IMAGE)
bench-scale: init flink $(JOB_SERVER_JAR) ## The local cluster with 1 and 2 TaskManagers and the cluster in containers where its images exist, photos as files and as shards (SCALE_ARGS)
	$(PLAIN_ENGINE) BMF_FLINK_IMAGE=$(FLINK_IMAGE) BMF_JOB_SERVER_IMAGE=$(JOB_SERVER_IMAGE) \
		BMF_WORKER_IMAGE=$(LOCAL_IMAGE) BMF_OBJECT_STORE_IMAGE=$(OBJECT_STORE_IMAGE) \
		$(PY) bench/bench_scale.py $(SCALE_ARGS) $$(for image in $(POD_IMAGES); do \
			$(PLAIN_ENGINE) podman image exists $$image 2>/dev/null || exit; done; echo --pod_taskmanagers 2)

.PHONY: bench-overlap
bench-overlap: init ## After make bench: does decoding one part while another runs the model pay here?
	$(PY) bench/bench_overlap.py $(BENCH_ARGS)

.PHONY: bench-pass-size
bench-pass-size: init ## Forward passes of 2, 4, 8 and 16 images against the CPU default's choice, per model
	$(PY) bench/bench_pass_size.py $(BENCH_ARGS)

.PHONY: bench-streaming
bench-streaming: init flink $(JOB_SERVER_JAR) $(KAFKA_JAR) ## Kafka streams through the local Flink cluster: ours against the stock path, images/s and latency
	$(PY) bench/bench_streaming.py $(BENCH_ARGS)

.PHONY: clean
clean: ## Remove build outputs (keeps .venv)
	rm -rf target dist build data/.made data/models data/images data/images.txt $(VENV)/.installed
