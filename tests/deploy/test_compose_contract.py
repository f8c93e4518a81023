"""What the schema cannot check in docker-compose.yml: healthchecks and start order, the settings each service reads,
addresses that match service names, the images' Dockerfiles, the GPU reservation, scaling, and no inlined secrets."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.keys import queue_names
from services.settings import ENV_PREFIX, GatewaySettings, StackSettings, WorkerSettings
from tests.deploy.compose import (
    COMPOSE_FILE,
    CPU_OVERRIDE,
    ENV_EXAMPLE,
    UnsetVariable,
    environment,
    interpolate,
    load,
    merge,
    read_env_file,
    services,
    variables,
)

ROOT = COMPOSE_FILE.parent
# The settings object each service reads (its CM3LEON_* variables).
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "worker": WorkerSettings,
    "worker-text": WorkerSettings,
}
WORKERS = ("worker", "worker-text")
# Where each upstream server listens in its container (their images' defaults; the compose file keeps them).
UPSTREAM_PORTS = {"redis": 6379, "minio": 9000, "qdrant": 6333, "jaeger": 4317}
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|ROOT_USER)", re.IGNORECASE)
# Defaults that must never reach a container: loopback addresses (the container itself) and dev credentials.
LOOPBACK = ("127.0.0.1", "localhost")
# Settings whose names look secret but are not (a path, an interval, a flag): compose may leave them unset.
NOT_SECRETS = frozenset(
    {
        "api_keys_file", "api_keys_reload_s", "dev_keys", "tls_key_file", "cost_image_tokens", "cost_text_tokens",
        "decoder_max_tokens", "decoder_prefill_chunk_tokens",  # decoding tokens, not credentials
    }
)
HOST_PORT = re.compile(r"(?:[a-z]+://)?(?P<host>[a-z][a-z0-9-]*):(?P<port>\d+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    """The file interpolated with .env.example, as `docker compose --env-file .env.example config` would."""
    return interpolate(compose, read_env_file(ENV_EXAMPLE))


def dockerfile_env(service: dict[str, Any]) -> dict[str, str]:
    """The ENV of the final stage of the service's Dockerfile (what the image sets)."""
    build = service.get("build")
    if not build:
        return {}
    text = (ROOT / build.get("context", ".") / build["dockerfile"]).read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                env[key] = value
    return env


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check['test']}"


def test_start_order_and_restarts(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    one_shot = {name for name, s in all_services.items() if s.get("restart") == "no"}
    assert one_shot == {"minio-init"}
    for name, service in all_services.items():
        assert service.get("restart") in ("no", "unless-stopped", "always"), name
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}: {spec}"
    for name in ("gateway", *WORKERS):
        assert {"redis", "minio-init"} <= set(all_services[name]["depends_on"]), name
    for name in WORKERS:
        assert "qdrant" in all_services[name]["depends_on"]


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services(compose).items():
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            assert not source.startswith((".", "/", "~")), f"{name} bind-mounts {source}"
            used.add(source)
    assert used == declared and {"redis-data", "qdrant-data", "minio-data"} <= declared
    redis_command = services(compose)["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes", "AOF: accepted jobs survive a restart"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_variables_exist_and_validate(
    name: str, resolved: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CM3LEON_* variable a service is given is a field of its settings object (a renamed setting fails
    here), the values validate, and no field keeps a default that is wrong in a container."""
    settings_class = SETTINGS[name]
    service = services(resolved)[name]
    given = {**dockerfile_env(service), **environment(service)}
    fields = {f"{ENV_PREFIX}{field}".upper() for field in settings_class.model_fields}
    unknown = {key for key in given if key.startswith(ENV_PREFIX)} - fields
    assert not unknown, f"{name} sets variables its settings do not read: {unknown}"
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    settings = settings_class()  # raises on a bad value
    defaults = settings_class.model_construct()
    for field in settings_class.model_fields:
        value, default = getattr(settings, field), getattr(defaults, field)
        secret = SECRET_NAME.search(field) and field not in NOT_SECRETS
        wrong_here = any(host in str(default) for host in LOOPBACK) or secret
        if wrong_here and field != "host":
            assert f"{ENV_PREFIX}{field}".upper() in given and value != default, f"{name}: set {field}"
    if name == "gateway":
        assert settings.host == "0.0.0.0", "the gateway listens beyond its container"  # type: ignore[attr-defined]
        assert settings.api_keys != defaults.api_keys  # type: ignore[attr-defined]
    if name in WORKERS:
        assert given.get("QDRANT_URL"), "scaled workers share one Qdrant server (local mode is one client per dir)"


def test_minio_init_makes_the_bucket_and_user_the_services_use(compose: dict[str, Any]) -> None:
    init = environment(services(compose)["minio-init"])
    s3 = {key: value for key, value in init.items() if key.startswith(f"{ENV_PREFIX}S3_")}
    assert set(s3) == {f"{ENV_PREFIX}S3_{k}" for k in ("ACCESS_KEY", "SECRET_KEY", "BUCKET")}
    for name in ("gateway", *WORKERS):
        service = environment(services(compose)[name])
        assert {key: service[key] for key in s3} == s3, name


def test_addresses_name_services_and_their_ports(resolved: dict[str, Any]) -> None:
    all_services = services(resolved)
    collector = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    listening = {
        **UPSTREAM_PORTS,
        "otel-collector": int(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]),
        "gateway": int(environment(all_services["gateway"])["CM3LEON_PORT"]),
    }
    found = 0
    for name, service in all_services.items():
        texts = [*environment(service).values(), *map(str, service.get("entrypoint") or [])]
        for text in texts:
            for match in HOST_PORT.finditer(text):
                host, port = match.group("host"), int(match.group("port"))
                assert host not in LOOPBACK, f"{name}: {text} points at its own container"
                if host in all_services:
                    assert port == listening[host], f"{name}: {text}, but {host} listens on {listening[host]}"
                    found += 1
    assert found >= 8, "redis, minio, qdrant, the collector and jaeger are reached by name"
    gateway_ports = all_services["gateway"]["ports"]
    assert any(str(p).endswith(f":{listening['gateway']}") for p in gateway_ports), gateway_ports
    health_port = collector["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]
    probe = " ".join(all_services["otel-collector"]["healthcheck"]["test"])
    assert f"127.0.0.1:{health_port}/" in probe, probe


def test_workers_scale_and_split_queues(resolved: dict[str, Any]) -> None:
    all_services = services(resolved)
    queues = set(queue_names(StackSettings().namespace).values())
    consumed: dict[str, set[str]] = {}
    for name in WORKERS:
        service = all_services[name]
        assert "container_name" not in service and "ports" not in service, f"{name} would not scale"
        command = service["command"]
        assert command[command.index("-n") + 1].endswith("@%h"), "a Celery node name per container"
        consumed[name] = set(command[command.index("-Q") + 1].split(","))
        assert consumed[name] <= queues, f"{name} consumes unknown queues {consumed[name] - queues}"
    assert consumed["worker"] == queues, "by default one worker group serves every traffic class"
    assert consumed["worker-text"] == {queue_names(StackSettings().namespace)["text"]}
    assert all_services["worker-text"]["profiles"] == ["split-queues"]


def test_worker_requests_a_gpu_and_the_cpu_override_drops_it(compose: dict[str, Any]) -> None:
    [device] = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and device["count"] >= 1
    merged = services(merge(compose, load(CPU_OVERRIDE)))
    for name in WORKERS:
        cpu = merged[name]
        assert "deploy" not in cpu or not cpu["deploy"], f"the CPU override resets {name}'s GPU reservation"
        assert environment(cpu)["CM3LEON_DEVICE"] == "cpu"
        assert "whl/cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"]
        assert cpu["image"] != compose["services"][name]["image"], "CPU and GPU images under their own tags"
        assert cpu["command"] == compose["services"][name]["command"], "the override keeps each group's queues"
    assert merged["worker-text"]["profiles"] == ["split-queues"]


def test_dockerfiles_exist_multi_stage_non_root(compose: dict[str, Any]) -> None:
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] not in "#!"]
    built = [s["build"] for s in services(compose).values() if "build" in s]
    assert len(built) >= 3, "gateway, worker, otel-collector"
    for build in built:
        path = ROOT / build["context"] / build["dockerfile"]
        assert path.is_file(), f"no Dockerfile {path}"
        text = path.read_text()
        assert len(re.findall(r"^FROM ", text, re.M)) >= 2, f"{path.name}: multi-stage"
        final = text.split("\nFROM ")[-1]
        users = re.findall(r"^USER (\S+)", final, re.M)
        assert users and users[-1] not in ("root", "0"), f"{path.name}: non-root"
        for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", text, re.M):
            assert (ROOT / source).exists(), f"{path.name} copies missing {source}"
            top = Path(source).parts[0].rstrip("/")
            assert top not in {p.rstrip("/") for p in ignored}, f"{path.name} copies {source}, .dockerignore drops it"
    assert ".env" in ignored and ".venv" in ignored


def test_no_secret_is_inlined(compose: dict[str, Any]) -> None:
    example = read_env_file(ENV_EXAMPLE)
    for name, service in services(compose).items():
        for key, raw in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith(("_URL", "_ENDPOINT")):
                refs = variables(raw)
                assert refs and raw.strip() == raw and raw.startswith("${"), f"{name}.{key} = {raw!r} is inlined"
                assert all(op in (None, ":?", "?") for _, op, _ in refs), f"{name}.{key} has a default secret"
    text = COMPOSE_FILE.read_text()
    for secret in ("cm3leon-secret", "dev-key", *(v for k, v in example.items() if SECRET_NAME.search(k))):
        assert secret not in text, f"{secret!r} is in docker-compose.yml"
    required = {name for name, op, _ in variables(compose) if op in (":?", "?")}
    assert required <= set(example), f".env.example lacks {required - set(example)}"
    assert all("change-me" in example[name] for name in required), "placeholders, not values"
    with pytest.raises(UnsetVariable):
        interpolate(compose, {k: v for k, v in example.items() if k != "QDRANT_API_KEY"})


def test_the_plaintext_gateway_port_is_loopback_and_redis_and_s3_are_locked(resolved: dict[str, Any]) -> None:
    """Security (docs/security.md): no plaintext API port beyond the host, a Redis password and memory limit, an
    S3 user that reaches only the bucket."""
    all_services = services(resolved)
    gateway = environment(all_services["gateway"])
    if not gateway.get("CM3LEON_TLS_CERT_FILE"):
        assert all(str(port).startswith("127.0.0.1:") for port in all_services["gateway"]["ports"])
    password = read_env_file(ENV_EXAMPLE)["REDIS_PASSWORD"]
    for name in ("gateway", *WORKERS):
        assert f":{password}@redis:" in environment(all_services[name])["CM3LEON_REDIS_URL"], name
    redis = all_services["redis"]
    assert "requirepass" in " ".join(redis["entrypoint"]) and password not in " ".join(redis["command"])
    assert redis["command"][redis["command"].index("--maxmemory") + 1], "a memory limit"
    init = " ".join(all_services["minio-init"]["entrypoint"])
    assert "readwrite" not in init and 'bucket="arn:aws:s3:::$CM3LEON_S3_BUCKET"' in init
    assert "policy attach root cm3leon-bucket" in init
