"""The gRPC gateway: JobService and CorpusService, health checking and reflection, on grpc.aio.

    python -m services.gateway            # settings from CM3LEON_* (see the README's Serving section)

Start: settings validated, bucket created, Redis pinged, then SERVING and the reaper thread (`services.reaper`).
Shutdown (SIGTERM/SIGINT): health goes NOT_SERVING at once (load balancers stop sending) and stays so for a moment
while RPCs are still served, then new RPCs are refused and in-flight ones get `drain_s` before the server stops.
Prints `GATEWAY_PORT=<port>` once listening (the embedded stack and the tests read it).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cm3leon_client.api import corpus_pb2, corpus_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from services.auth import KeyAuthInterceptor, KeyRing
from services.interceptors import ErrorInterceptor, TracingInterceptor
from services.jobstore import AsyncJobStore, JobStore
from services.keys import Keys
from services.objectstore import ObjectStore
from services.queue import RUN_JOB, make_celery
from services.reaper import celery_publisher, start_reaper
from services.redis_clients import async_redis_client, redis_client
from services.servicers import CorpusServicer, Gateway, JobServicer
from services.settings import GatewaySettings
from services.telemetry import setup_telemetry, shutdown_telemetry
from services.tls import add_port
from services.watch_hub import WatchHub

log = logging.getLogger(__name__)
# On shutdown, health reports NOT_SERVING for this long while RPCs are still accepted (load balancers notice).
UNREADY_HOLD_S = 1.0
SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    corpus_pb2.DESCRIPTOR.services_by_name["CorpusService"].full_name,
)


class GatewayServer:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis = async_redis_client(settings)
        self.objects = ObjectStore.from_settings(settings)
        self.celery = make_celery(settings)
        # Bounded Redis connections: the pooled client's `redis_max_connections`, plus one per watch reader.
        hub = WatchHub(self.redis, Keys(settings.namespace), settings.watch_readers, settings.watch_block_ms)
        self.store = AsyncJobStore(self.redis, settings.namespace, settings.job_ttl_s, hub)
        gateway = Gateway(settings, self.store, self.objects, self.celery)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.drain_s * 1000) + 1000),
        ]
        auth = KeyAuthInterceptor(KeyRing.from_settings(settings))
        self.server = aio.server(
            interceptors=[TracingInterceptor(), auth, ErrorInterceptor()],
            options=options,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(gateway), self.server)
        self.corpus = CorpusServicer(gateway)
        corpus_pb2_grpc.add_CorpusServiceServicer_to_server(self.corpus, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = 0

    async def start(self) -> int:
        await self.redis.ping()
        await asyncio.to_thread(self.objects.ensure_bucket)
        self.port = add_port(self.server, f"{self.settings.host}:{self.settings.port}", self.settings)  # TLS if set
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reaper_store = JobStore(redis_client(self.settings), self.settings.namespace, self.settings.job_ttl_s)
        self.stop_reaper = start_reaper(reaper_store, self.settings, celery_publisher(self.celery, RUN_JOB))
        return self.port

    async def stop(self) -> None:
        """NOT_SERVING first, held long enough for health probes to see it, then stop taking new RPCs and give
        the ones in flight `drain_s` to finish."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.stop_reaper.set()
        await asyncio.sleep(min(UNREADY_HOLD_S, self.settings.drain_s))
        await self.server.stop(grace=self.settings.drain_s)
        await self.corpus.calls.close()
        await self.store.aclose()
        await self.redis.aclose()


async def serve(settings: GatewaySettings) -> None:
    setup_telemetry(settings.otel_exporter, f"{settings.service_name}-gateway")
    server = GatewayServer(settings)
    port = await server.start()
    print(f"GATEWAY_PORT={port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop()
    shutdown_telemetry()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(GatewaySettings()))


if __name__ == "__main__":
    main()
