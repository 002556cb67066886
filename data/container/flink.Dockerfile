# Apache Flink 1.19 for a standalone session cluster: the JobManager and every TaskManager run this
# image, configured by their arguments alone (no configuration folder mounted). Build context: the
# Flink distribution that `make flink` installs from PyPI's apache-flink wheels (build/flink-<ver>/pyflink).
#   podman run IMAGE bin/jobmanager.sh start-foreground -D rest.address=HOST ...
#   podman run IMAGE bin/taskmanager.sh start-foreground -D jobmanager.rpc.address=HOST ...
# -D KEY=VALUE are Flink's dynamic properties: they override conf/config.yaml.
ARG JAVA_IMAGE=localhost/beam-ml-flink/java:17
FROM ${JAVA_IMAGE}
ENV FLINK_HOME=/opt/flink
WORKDIR /opt/flink
COPY bin bin
COPY conf conf
COPY lib lib
COPY plugins plugins
# The distribution binds to localhost; in a container its peers and the published ports reach it
# from other network namespaces.
RUN sed -i 's/^\(\s*bind-host:\) localhost$/\1 0.0.0.0/; s/^\(\s*bind-address:\) localhost$/\1 0.0.0.0/' \
        conf/config.yaml \
    && mkdir -p log
EXPOSE 6123 6124 8081
CMD ["bin/jobmanager.sh", "start-foreground"]
