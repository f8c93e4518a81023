"""The serving side of cm3leon: the gRPC gateway, the Redis job store, the S3 object store, the Celery
configuration shared with the worker (`services.queue`), telemetry and the embedded stack's processes. Never imports
torch or `worker/` (the model runs in `worker/`, through `cm3leon.inference`); the wire types and the client come
from the `cm3leon-client` distribution (`cm3leon_client`), which the server depends on."""
