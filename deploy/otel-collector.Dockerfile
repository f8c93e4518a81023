# syntax=docker/dockerfile:1
# The OpenTelemetry collector (contrib) with deploy/otel-collector.yaml. The upstream image is FROM scratch: no
# shell, nothing to run a healthcheck with. Its static binary is moved onto busybox, whose wget asks the
# health_check extension; non-root as upstream.
ARG OTELCOL_IMAGE=otel/opentelemetry-collector-contrib:0.139.0
ARG BUSYBOX_IMAGE=busybox:1.37-musl

FROM ${OTELCOL_IMAGE} AS upstream

FROM ${BUSYBOX_IMAGE} AS runtime
COPY --from=upstream /otelcol-contrib /otelcol-contrib
COPY --from=upstream /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY deploy/otel-collector.yaml /etc/otelcol/config.yaml
USER 10001
EXPOSE 4317 4318 13133
HEALTHCHECK --interval=10s --timeout=5s CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:13133/"]
ENTRYPOINT ["/otelcol-contrib"]
CMD ["--config=/etc/otelcol/config.yaml"]
