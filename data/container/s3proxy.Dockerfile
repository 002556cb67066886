# An S3-compatible object store in a container: S3Proxy as `make s3proxy` assembles it from Maven
# Central (the launcher jar and its lib/ class path), its filesystem backend under /data. Build
# context: build/s3proxy. The identity it accepts comes from the environment:
#   podman run -e S3PROXY_IDENTITY=KEY -e S3PROXY_CREDENTIAL=SECRET -p 9000:9000 IMAGE
ARG JAVA_IMAGE=localhost/beam-ml-flink/java:17
FROM ${JAVA_IMAGE}
WORKDIR /opt/s3proxy
COPY lib lib
COPY s3proxy.jar s3proxy.jar
# The properties file is written at start, so that no key is kept in the image; unknown headers
# are ignored (Beam's Java S3 filesystem sends a bucket-key header on every upload); the log is
# S3Proxy's requests and errors (logback logs everything at DEBUG without a configuration).
RUN mkdir -p /data \
    && printf '%s\n' \
        '#!/bin/sh' \
        'set -eu' \
        ': "${S3PROXY_IDENTITY:?set S3PROXY_IDENTITY, the access key the store accepts}"' \
        ': "${S3PROXY_CREDENTIAL:?set S3PROXY_CREDENTIAL, the secret key the store accepts}"' \
        'umask 077' \
        'cat > /tmp/s3proxy.properties <<END' \
        's3proxy.endpoint=http://0.0.0.0:9000' \
        's3proxy.authorization=aws-v2-or-v4' \
        's3proxy.identity=${S3PROXY_IDENTITY}' \
        's3proxy.credential=${S3PROXY_CREDENTIAL}' \
        's3proxy.ignore-unknown-headers=true' \
        'jclouds.provider=filesystem-nio2' \
        'jclouds.filesystem.basedir=/data' \
        'jclouds.identity=local' \
        'jclouds.credential=local' \
        'END' \
        'exec java -Xmx256m -Dlogback.configurationFile=/opt/s3proxy/logback.xml -jar /opt/s3proxy/s3proxy.jar --properties /tmp/s3proxy.properties' \
        > /opt/s3proxy/run.sh \
    && chmod 755 /opt/s3proxy/run.sh \
    && printf '%s\n' \
        '<configuration>' \
        '  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">' \
        '    <encoder><pattern>[%d] %level %logger{20}: %msg%n</pattern></encoder>' \
        '  </appender>' \
        '  <logger name="org.gaul.s3proxy" level="INFO"/>' \
        '  <root level="WARN"><appender-ref ref="STDOUT"/></root>' \
        '</configuration>' \
        > /opt/s3proxy/logback.xml
EXPOSE 9000
ENTRYPOINT ["/opt/s3proxy/run.sh"]
