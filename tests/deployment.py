"""A deployment in the loopback S3 server, and S3 events in the shapes AWS documents, for ingest/reindex tests."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import numpy as np
from botocore.exceptions import ClientError
from PIL import Image

from lambda_fn.storage.artifacts import fetch
from lambda_fn.storage.store import S3Store, Store
from lambda_fn.vision.engine import Engine
from lambda_fn.vision.imaging import load_for_model
from lambda_fn.vision.models import target_models
from ops.upload import upload
from tests.helpers import load_event

PREFIX = "deepfood"


@dataclass
class Deployment:
    client: object
    bucket: str
    prefix: str
    cache: Path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    @property
    def artifacts(self) -> S3Store:
        return S3Store(self.bucket, self.prefix, self.client)

    @property
    def images(self) -> S3Store:
        return S3Store(self.bucket, f"{self.prefix}/images/", self.client)

    def models(self):
        return target_models(self.artifacts, self.cache)

    def put_image(self, key: str, data: bytes) -> dict:
        """Upload a collection image; returns what S3 notifies about it (key, size, ETag)."""
        full = f"{self.prefix}/images/{key}"
        etag = self.client.put_object(Bucket=self.bucket, Key=full, Body=data)["ETag"].strip('"')
        return {"key": full, "size": len(data), "eTag": etag}

    def engine(self) -> Engine:
        fetched = fetch(self.uri, self.cache, self.client)
        return Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)

    def live_manifest_body(self) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/manifest.json")["Body"].read()


def deploy(client, bucket: str, artifacts_dir: Path, sample_dir: Path, cache: Path) -> Deployment:
    """What `ops.upload` does for a user: images, then the build, then the manifest."""
    upload(artifacts_dir, sample_dir, bucket, PREFIX, client=client, workers=4)
    return Deployment(client, bucket, PREFIX, cache)


def unique_photo(seed: int, size=(96, 80)) -> bytes:
    """A JPEG no other test image resembles: seeded noise over a seeded gradient."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    pixels = np.clip(base * rng.uniform(0.2, 1.0, 3) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def sqs_event(*objects: dict, removed: bool = False, time: str = "2026-11-29T12:00:00.000Z", bucket: str) -> dict:
    """One SQS message per object, each carrying the S3 notification AWS documents for it."""
    template = load_event("sqs_s3_object_removed" if removed else "sqs_s3_object_created")
    record = template["Records"][0]
    out = {"Records": []}
    for n, obj in enumerate(objects):
        body = json.loads(record["body"])
        s3_record = body["Records"][0]
        s3_record["eventTime"] = time
        s3_record["s3"]["bucket"]["name"] = bucket
        s3_record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        entry = {"key": quote_plus(obj["key"], safe="/"), "sequencer": f"{n + 1:016X}"}
        if not removed:
            entry.update(size=obj["size"], eTag=obj["eTag"])
        s3_record["s3"]["object"] = entry
        message = copy.deepcopy(record)
        message["messageId"] = obj.get("message_id", f"msg-{n}-{obj['key']}")
        message["body"] = json.dumps(body)
        out["Records"].append(message)
    return out


def embed_bytes(engine: Engine, data: bytes) -> np.ndarray:
    pixels = load_for_model(data, engine.meta.resize_size, engine.meta.crop_size)
    return engine.embed(pixels[None])[0][0]


class FlakyStore(Store):
    """A Store that fails chosen calls the way S3 does when it throttles, and passes the rest through."""

    def __init__(self, inner: Store, *, fail_get: set[str] = frozenset(), fail_upload: set[str] = frozenset()):
        self.inner, self.fail_get, self.fail_upload = inner, set(fail_get), set(fail_upload)

    @staticmethod
    def _slow_down(operation: str) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            },
            operation,
        )

    def get(self, key):
        if key in self.fail_get:
            raise self._slow_down("GetObject")
        return self.inner.get(key)

    def upload_file(self, path, key):
        if any(key.endswith(name) for name in self.fail_upload):
            raise self._slow_down("PutObject")
        return self.inner.upload_file(path, key)

    def describe(self, key=""):
        return self.inner.describe(key)

    def head(self, key):
        return self.inner.head(key)

    def put(self, key, data, **kw):
        return self.inner.put(key, data, **kw)

    def download_file(self, key, path):
        return self.inner.download_file(key, path)

    def copy(self, source, destination):
        return self.inner.copy(source, destination)

    def delete(self, key, **kw):
        return self.inner.delete(key, **kw)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def full_key(self, key):
        return self.inner.full_key(key)

    def relative_key(self, full_key):
        return self.inner.relative_key(full_key)
