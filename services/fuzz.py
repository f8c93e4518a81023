"""Fuzzing the gateway: hypothesis strategies over every request message of JobService and CorpusService (built
from the proto descriptors, so a new field is fuzzed without a change here), sent to a real gateway.

Every answer must be OK or one of EXPECTED_CODES; anything else (UNKNOWN, INTERNAL, UNAVAILABLE, a deadline) is
`unexpected`. The tests run 1,000 requests per run (tests/security/test_fuzz.py); the benchmark run:

    python -m services.fuzz --n 20000 --out bench/results --model models/shapes     # an embedded stack
    python -m services.fuzz --n 2000 --target HOST:PORT --api-key KEY                # a running gateway

writes bench/results/fuzz.json: `requests`, `by_code`, `unexpected` (a sample of the offending requests).
Development tooling: it needs hypothesis (a dev dependency); nothing in the gateway imports it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cm3leon_client.api import corpus_pb2, jobs_pb2
from cm3leon_client.channel import API_KEY_HEADER

EXPECTED_CODES = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "UNIMPLEMENTED",
    }
)
SERVICES = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"], corpus_pb2.DESCRIPTOR.services_by_name["CorpusService"])
METHODS: tuple[MethodDescriptor, ...] = tuple(method for service in SERVICES for method in service.methods)
MAX_DEPTH = 4
CALL_TIMEOUT_S = 120.0
STREAM_ITEMS = 2  # a stream is read this far, then cancelled
SAMPLES_KEPT = 20
# The fuzzing tenant's quotas: valid submits mostly answer RESOURCE_EXHAUSTED instead of queueing model work in
# front of the corpus calls (which wait for the same worker).
FUZZ_LIMITS = {"CM3LEON_TENANT_RATE_PER_S": "0.5", "CM3LEON_TENANT_BURST": "2", "CM3LEON_TENANT_MAX_QUEUED_COST": "2"}
INTERESTING_TEXT = (
    "",
    " ",
    "a red circle at the top left",
    "doc-1",
    "shapes",
    "tiny",
    "../etc",
    "x:events",
    "0" * 32,
    "f" * 32,
    "inputs/" + "0" * 32 + "/image.png",
    "x" * 1001,
    "\u00e9\u4e2d\U0001f600",
)


def image_samples() -> tuple[bytes, ...]:
    """Valid and hostile image bytes: PNG, JPEG, truncated, GIF, tiny, palette."""
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    samples = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "RGB"), ("PNG", "P")):
        buffer = io.BytesIO()
        picture.convert(mode).save(buffer, format=fmt)
        samples.append(buffer.getvalue())
    return (*samples, samples[0][:60], samples[1][:100], b"\x89PNG\r\n\x1a\n")


IMAGES = image_samples()
INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(descriptor: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = descriptor.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(INTERESTING_TEXT), st.text(max_size=40))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(IMAGES), st.binary(max_size=64))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.floats(-2.0, 20.0, width=width), st.floats(width=width))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in descriptor.enum_type.values]), st.integers(-3, 99))
    low, high = INT_BOUNDS[kind]
    return st.one_of(st.integers(max(low, -3), 40), st.sampled_from([low, high]))


def field_values(descriptor: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= MAX_DEPTH:
            return None
        single: st.SearchStrategy[Any] = st.deferred(lambda: messages(descriptor.message_type, depth + 1))
    else:
        single = scalar(descriptor)
    return st.lists(single, max_size=4) if descriptor.is_repeated else single


def build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        target = descriptor.fields_by_name[name]
        if target.is_repeated:
            if target.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    getattr(message, name).add().CopyFrom(item)
            else:
                getattr(message, name).extend(value)
        elif target.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of `descriptor`: each field present or not, values from its type (oneofs: the last set wins)."""
    optional = {f.name: s for f in descriptor.fields if (s := field_values(f, depth)) is not None}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: build(descriptor, values))


def calls() -> st.SearchStrategy[tuple[MethodDescriptor, Message]]:
    """(method, request) over every RPC of both services."""
    return st.sampled_from(METHODS).flatmap(lambda m: messages(m.input_type).map(lambda request: (m, request)))


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def call(channel: grpc.Channel, api_key: str, method: MethodDescriptor, request: Message) -> tuple[str, str]:
    """(status code name, details) of one call; a stream is read a little, then cancelled."""
    output = message_factory.GetMessageClass(method.output_type)
    metadata = ((API_KEY_HEADER, api_key),)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path_of(method), request_serializer=serialize, response_deserializer=output.FromString
            )(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
            for index, _ in enumerate(stream):
                if index + 1 >= STREAM_ITEMS:
                    stream.cancel()
                    break
        else:
            channel.unary_unary(path_of(method), request_serializer=serialize, response_deserializer=output.FromString)(
                request, metadata=metadata, timeout=CALL_TIMEOUT_S
            )
        return "OK", ""
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED:  # our own cancel of a stream read far enough
            return "OK", ""
        return error.code().name, error.details() or ""


@dataclass
class FuzzReport:
    requests: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    unexpected: list[dict[str, str]] = field(default_factory=list)
    unexpected_count: int = 0

    def record(self, method: MethodDescriptor, request: Message, code: str, details: str) -> None:
        self.requests += 1
        self.by_code[code] += 1
        if code not in EXPECTED_CODES:
            self.unexpected_count += 1
            if len(self.unexpected) < SAMPLES_KEPT:
                shown = text_format.MessageToString(request, as_one_line=True)[:500]
                self.unexpected.append({"method": path_of(method), "code": code, "details": details, "request": shown})

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_code": dict(sorted(self.by_code.items())),
            "unexpected": self.unexpected,
            "unexpected_count": self.unexpected_count,
        }


def fuzz(target: str, api_key: str, n: int, on_call: Callable[[str], None] | None = None) -> FuzzReport:
    """`n` generated requests (fixed seed: the same ones every run) against the gateway at `target`."""
    report = FuzzReport()
    with grpc.insecure_channel(target) as channel:

        @settings(
            max_examples=n,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=("generate",),
        )
        @given(calls())
        def run(generated: tuple[MethodDescriptor, Message]) -> None:
            method, request = generated
            code, details = call(channel, api_key, method, request)
            report.record(method, request, code, details)
            if on_call is not None:
                on_call(code)

        run()
    return report


def embedded_stack(model: Path, workdir: Path) -> tuple[Any, str, str]:
    """A stack (Redis, S3, a worker of `model`, a gateway) with a made key: (stack, target, key)."""
    import secrets

    from services.auth import DEFAULT_SCOPES, hashed_entry
    from services.stack import Stack

    key = secrets.token_urlsafe(18)
    stack = Stack(
        workdir,
        namespace="fuzz",
        environment={"CM3LEON_API_KEYS": json.dumps(hashed_entry(key, "fuzz", DEFAULT_SCOPES))},
    )
    stack.start_redis()
    stack.start_s3()
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model.resolve()),
        "CM3LEON_RETRIEVER_DIR": str((model / "retriever").resolve()),
    }
    worker_env["CM3LEON_MEMORY_PATH"] = str(workdir / "qdrant")
    stack.start_worker("worker", worker_env)
    stack.start_gateway()
    return stack, f"127.0.0.1:{stack.gateway_port}", key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="generated requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--target", default=os.environ.get("CM3LEON_TARGET", ""), help="a running gateway")
    parser.add_argument("--api-key", default=os.environ.get("CM3LEON_API_KEY", ""))
    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="for an embedded stack")
    args = parser.parse_args(argv)
    stack = None
    started = time.perf_counter()
    try:
        if args.target:
            target, key = args.target, args.api_key
        else:
            stack, target, key = embedded_stack(args.model, Path(tempfile.mkdtemp(prefix="cm3leon-fuzz-")))
        report = fuzz(target, key, args.n)
    finally:
        if stack is not None:
            stack.stop()
    result = {"benchmark": "fuzz", **report.as_json(), "seconds": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "unexpected"}))
    return 0 if report.unexpected_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
