# syntax=docker/dockerfile:1
# The OpenTelemetry Collector (contrib distribution) with Shinchoku's pipeline, on a base that has `wget`
# so that its health check can run (the upstream image is distroless: no shell, no HTTP client).
# Build from the repository root:  docker build -f deploy/docker/otel-collector.Dockerfile -t shinchoku/otel-collector .
ARG OTELCOL_VERSION=0.139.0

FROM otel/opentelemetry-collector-contrib:${OTELCOL_VERSION} AS otelcol

FROM alpine:3.22
COPY --from=otelcol /otelcol-contrib /usr/local/bin/otelcol-contrib
COPY deploy/otel/collector.yaml /etc/otelcol/config.yaml
USER 10001
EXPOSE 4317 4318 13133
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:13133/"]
ENTRYPOINT ["/usr/local/bin/otelcol-contrib"]
CMD ["--config=/etc/otelcol/config.yaml"]
