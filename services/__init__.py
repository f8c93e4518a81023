"""The serving side of cm3leon: the gRPC gateway, the Redis job store, the S3 object store, telemetry, the
client and the embedded stack. Never imports torch (the model runs in `worker/`, through `cm3leon.inference`)."""
