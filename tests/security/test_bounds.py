"""Bounds: hostile images get clear INVALID_ARGUMENT, unknown fields are never stored, ids and sizes are checked
before Redis, and image decoding runs off the event loop (health answers while big adds are decoded)."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, PngImagePlugin

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import corpus_pb2, jobs_pb2
from cm3leon_client.builders import image_input
from services.errors import InvalidArgument
from services.jobstore import FINISHED_EVENTS_TTL_S
from services.keys import Keys
from services.settings import GatewaySettings
from services.stack import Stack
from services.validation import normalise_image
from tests.security.helpers import code_of

SETTINGS = GatewaySettings()


def saved(picture: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(size: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, what the error message says)."""
    png, jpeg = saved(rgb(), "PNG"), saved(rgb(), "JPEG")
    big_text = PngImagePlugin.PngInfo()
    big_text.add_text("comment", "x" * (8 * 1024 * 1024), zip=True)  # a zTXt chunk of 8 MB once inflated
    return {
        "truncated PNG": (png[: len(png) // 2], "readable"),
        "truncated JPEG": (jpeg[: len(jpeg) // 2], "readable"),
        "APNG": (saved(rgb(), "PNG", save_all=True, append_images=[rgb(seed=1)]), "animated"),
        "16-bit PNG": (saved(Image.fromarray(np.full((32, 32), 4000, np.uint16)), "PNG"), "16-bit"),
        "CMYK JPEG": (saved(rgb().convert("CMYK"), "JPEG"), "mode CMYK"),
        "palette PNG": (saved(rgb().convert("P"), "PNG"), "mode P"),
        "GIF": (saved(rgb(), "GIF"), "not a PNG or JPEG"),
        "TIFF": (saved(rgb(), "TIFF"), "not a PNG or JPEG"),
        "WebP": (saved(rgb(), "WEBP"), "not a PNG or JPEG"),
        "huge zTXt": (saved(rgb(), "PNG", pnginfo=big_text), "readable"),
    }


@pytest.mark.parametrize("name", list(hostile_images()))
def test_hostile_images_are_refused_clearly(name: str) -> None:
    data, says = hostile_images()[name]
    with pytest.raises(InvalidArgument) as raised:
        normalise_image("image.data", data, SETTINGS)
    message = str(raised.value)
    assert message.startswith("image.data: ") and says in message and "0x" not in message, message


@pytest.mark.parametrize("picture", [rgb(), rgb().convert("RGBA"), rgb().convert("L")], ids=["RGB", "RGBA", "L"])
def test_plain_images_are_accepted(picture: Image.Image) -> None:
    for fmt in ("PNG", "JPEG") if picture.mode != "RGBA" else ("PNG",):
        normalised = Image.open(io.BytesIO(normalise_image("image.data", saved(picture, fmt), SETTINGS)))
        assert normalised.format == "PNG" and normalised.mode == "RGB" and normalised.size == picture.size


def with_unknown_field(request: jobs_pb2.JobRequest, size: int) -> jobs_pb2.JobRequest:
    """`request` carrying an unknown length-delimited field (number 4000) of `size` bytes."""
    tag = (4000 << 3) | 2
    varint = bytearray()
    for value in (tag, size):
        while value >= 0x80:
            varint.append((value & 0x7F) | 0x80)
            value >>= 7
        varint.append(value)
    return jobs_pb2.JobRequest.FromString(request.SerializeToString() + bytes(varint) + b"u" * size)


@pytest.mark.slow
def test_megabytes_of_unknown_fields_are_never_stored(secure_stack: Stack, client_a: Client) -> None:
    request = with_unknown_field(api.text_to_image("a red circle", seed=3), 3 * 1024 * 1024)
    assert request.ByteSize() > 3 * 1024 * 1024
    job = client_a.submit(request)
    store = redis.Redis(port=secure_stack.redis_port)
    stored = store.get(Keys(secure_stack.namespace).job(job.job_id))
    assert stored is not None and len(stored) < 16 * 1024, "the record holds the known fields only"
    final = client_a.wait(job.job_id, timeout_s=120)
    events_key = Keys(secure_stack.namespace).events(job.job_id)
    events = store.xrange(events_key)
    assert events and max(len(fields[b"record"]) for _, fields in events) < 16 * 1024
    # Once final, the job's progress snapshots are gone: the stream keeps the last one, for minutes not days.
    assert [int(entry_id.split(b"-")[0]) for entry_id, _ in events] == [final.sequence]
    assert 0 < store.ttl(events_key) <= FINISHED_EVENTS_TTL_S < store.ttl(Keys(secure_stack.namespace).job(job.job_id))


@pytest.mark.slow
def test_ids_and_sizes_are_checked_before_redis(client_a: Client) -> None:
    for job_id in ("x:events", "*", "0" * 31, "A" * 32):
        code, details = code_of(lambda job_id=job_id: client_a.get(job_id))
        assert code == grpc.StatusCode.NOT_FOUND and "job_id" in details
    code, details = code_of(lambda: client_a.delete_documents([f"d{i}" for i in range(257)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "doc_ids" in details
    code, details = code_of(lambda: client_a.delete_documents(["ok", "bad id!"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "doc_ids[1]" in details
    code, details = code_of(lambda: client_a.list(states=[1] * 9))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "states" in details


@pytest.mark.slow
def test_hostile_images_through_the_gateway(client_a: Client) -> None:
    for name, (data, says) in hostile_images().items():
        if name == "huge zTXt":
            continue  # larger than the inline limit: refused for its size, before decoding
        code, details = code_of(lambda data=data: client_a.submit(api.caption(data)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "request.caption.image.data" in details, name
        assert says in details, (name, details)


@pytest.mark.slow
def test_health_answers_while_many_megapixel_images_are_decoded(secure_target: str) -> None:
    """256 one-megapixel PNGs in one AddDocuments: decoded in the gateway's pool, not on its event loop."""
    picture = saved(Image.new("RGB", (1024, 1024), "red"), "PNG")  # small bytes, a megapixel to decode
    documents = [corpus_pb2.CorpusDocument(doc_id=f"bulk-{i}", image=image_input(picture)) for i in range(256)]
    answered_during: list[float] = []
    with Client(secure_target, "key-bulk", timeout_s=300) as bulk:
        done = threading.Event()
        outcome: list[object] = []

        def add() -> None:
            try:
                outcome.append(bulk.add_documents(documents))
            except grpc.RpcError as error:
                outcome.append(error)
            finally:
                done.set()

        adder = threading.Thread(target=add)
        with grpc.insecure_channel(secure_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            adder.start()
            while not done.is_set():
                started = time.monotonic()
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                if not done.is_set():
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    answered_during.append(time.monotonic() - started)
                time.sleep(0.05)
        adder.join()
        assert isinstance(outcome[0], corpus_pb2.AddDocumentsResponse), outcome[0]
        bulk.delete_documents([d.doc_id for d in documents])
    assert len(answered_during) >= 3, "health answered while the adds were in flight"
    print(f"health answered {len(answered_during)} times during the adds, slowest {max(answered_during):.3f} s")
