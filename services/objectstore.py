"""The object store: any S3 server through the MinIO client (SeaweedFS `weed mini` in tests and the embedded
stack, MinIO in docker-compose). Keys are chosen by the server from job ids, never from user input.

    inputs/{job_id}/{field}.png        an inline input image, normalised to PNG
    jobs/{job_id}/output-{i}.png       output image i (deterministic: a redelivered job overwrites the same bytes)
    jobs/{job_id}/preview-{n}.png      progressive preview n (each its own key: an earlier URL stays valid)
    corpus/{sha256}.png                a CorpusService image (content-addressed)
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import urllib3
from minio import Minio
from minio.error import S3Error
from PIL import Image

from services.records import StoredObject
from services.settings import StackSettings

PNG = "image/png"
# Keys a client may reference as an input image (an earlier job's input or output); the job id in the key is
# checked against the caller's tenant before use.
REFERENCEABLE_KEY = re.compile(r"^(?:inputs|jobs)/([0-9a-f]{32})/[a-z0-9_.-]{1,64}$")
READY_TIMEOUT_S = 30.0
# Per connect and per read. The MinIO client's own default is 5 minutes each, so a server that accepts connections
# but never answers would hold a worker (or a readiness probe) that long per request.
REQUEST_TIMEOUT_S = 30.0


def input_key(job_id: str, field: str) -> str:
    return f"inputs/{job_id}/{field}.png"


def output_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/output-{index}.png"


def preview_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/preview-{index}.png"


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ObjectStore:
    client: Minio
    bucket: str
    presign_expiry_s: int

    @classmethod
    def from_settings(cls, settings: StackSettings, timeout_s: float = REQUEST_TIMEOUT_S) -> ObjectStore:
        # The MinIO client's retry policy (5 tries, backoff, on 5xx), with `timeout_s` instead of its 5 minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            maxsize=10,
            retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        return cls(client, settings.s3_bucket, settings.presign_expiry_s)

    def ensure_bucket(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Create the bucket if missing, waiting for a server that is still starting."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if not self.client.bucket_exists(self.bucket):
                    self.client.make_bucket(self.bucket)
                return
            except S3Error as error:
                if error.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if time.monotonic() > deadline:
                    raise
            except Exception:  # connection refused / reset while the server starts
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def put(self, key: str, data: bytes, media_type: str = PNG) -> StoredObject:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=media_type)
        width = height = 0
        if media_type == PNG:
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
        return StoredObject(
            key=key,
            size_bytes=len(data),
            media_type=media_type,
            sha256=hashlib.sha256(data).hexdigest(),
            width=width,
            height=height,
        )

    def put_image(self, key: str, image: np.ndarray | Image.Image) -> StoredObject:
        return self.put(key, png_bytes(image))

    def get(self, key: str) -> bytes:
        response = self.client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_image(self, key: str) -> np.ndarray:
        with Image.open(io.BytesIO(self.get(key))) as picture:
            return np.array(picture.convert("RGB"))

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def url(self, key: str) -> str:
        return self.client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=self.presign_expiry_s))
