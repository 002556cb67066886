# Beam's Flink job server (FlinkJobServerDriver) as `make flink-job-server` assembles it from
# Maven Central: the launcher jar and its lib/ class path. Build context: build/flink-job-server.
#   podman run IMAGE --flink-master=JOBMANAGER:8081 --job-host=0.0.0.0 --artifacts-dir=URI
# Its ports: 8099 (jobs), 8098 (artifact staging), 8097 (expansion). The artifacts dir must be a
# location every TaskManager can read (see docs/runners.md): the default, a folder inside this
# container, is not.
ARG JAVA_IMAGE=localhost/beam-ml-flink/java:17
FROM ${JAVA_IMAGE}
WORKDIR /opt/beam
COPY lib lib
COPY beam-flink-job-server.jar beam-flink-job-server.jar
EXPOSE 8097 8098 8099
ENTRYPOINT ["java", "-jar", "/opt/beam/beam-flink-job-server.jar"]
CMD ["--job-host=0.0.0.0"]
