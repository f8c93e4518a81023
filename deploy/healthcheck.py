"""Container healthchecks of the gateway and the worker images (docker-compose.yml runs them; exit 0 = healthy).

    python deploy/healthcheck.py gateway [--target HOST:PORT]   # grpc.health.v1 Check: SERVING
    python deploy/healthcheck.py worker                         # this host's worker publishes its heartbeat

The gateway's check speaks the gRPC health protocol (what a load balancer or grpc_health_probe would ask), so a
draining gateway (NOT_SERVING) turns unhealthy at once. The worker's check reads the presence entry a pool process
writes only once its model has loaded and keeps refreshing while it runs (field `{hostname}-{pid}` of the
`{ns}:workers` hash, `services.presence`): a container whose Celery pool died or hangs before the model is ready
is unhealthy. One hash read: no scan of a keyspace that grows with the job history. Settings come from the
same CM3LEON_* variables the services read.
"""

from __future__ import annotations

import argparse
import socket
import sys

# A probe must answer well within compose's healthcheck timeout.
PROBE_TIMEOUT_S = 3.0


def gateway_healthy(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as error:
            print(f"gateway {target}: {error.code().name}", file=sys.stderr)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"gateway {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
    return serving


def worker_healthy(hostname: str) -> bool:
    """A pool process of this host has written its presence entry within the presence TTL."""
    import redis

    from services.keys import Keys
    from services.presence import live_workers
    from services.settings import StackSettings

    settings = StackSettings()
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )
    try:
        workers = live_workers(client, Keys(settings.namespace))
    except redis.RedisError as error:
        print(f"worker: redis: {type(error).__name__}", file=sys.stderr)
        return False
    finally:
        client.close()
    found = [name for name in workers if name.rsplit("-", 1)[0] == hostname]
    if not found:
        print(f"worker: no heartbeat of {hostname} in the presence hash", file=sys.stderr)
    return bool(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="service", required=True)
    gateway = commands.add_parser("gateway", help="gRPC health of the gateway")
    gateway.add_argument("--target", help="HOST:PORT (default 127.0.0.1:$CM3LEON_PROBE_PORT or $CM3LEON_PORT)")
    worker = commands.add_parser("worker", help="a heartbeat of this host's worker")
    worker.add_argument("--hostname", default=socket.gethostname(), help="(default: this container's hostname)")
    args = parser.parse_args(argv)
    if args.service == "gateway":
        if args.target is None:
            from services.settings import GatewaySettings

            settings = GatewaySettings()
            args.target = f"127.0.0.1:{settings.probe_port or settings.port}"  # the plaintext probe port under TLS
        return 0 if gateway_healthy(args.target) else 1
    return 0 if worker_healthy(args.hostname) else 1


if __name__ == "__main__":
    sys.exit(main())
