"""The backfill's child: the ingest function given Distributed Map batches of the images listing.

Batches have the shape the S3 ItemReader and the ItemBatcher give them (tests/events/stepfunctions_map_batch.json),
built from the loopback S3 server's own listing; ingest and reindex run against that server.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from lambda_fn.collection.events import changes_from_batch
from lambda_fn.collection.ingest import ingest
from lambda_fn.collection.reindex import reindex
from lambda_fn.contract.config import Settings, env_name
from lambda_fn.contract.manifest import Manifest, file_sha256, label_metadata
from lambda_fn.contract.shards import namespace
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key
from tests.deployment import FlakyStore, embed_bytes, unique_photo
from tests.helpers import SAMPLE_COUNT, load_event, run_code
from tests.lambda_fn.builds import resaved_model

# What the function is deployed with (its settings' defaults).
LIMITS = {
    "max_bytes": Settings.model_fields["max_ingest_bytes"].default,
    "max_pixels": Settings.model_fields["max_image_pixels"].default,
}


def listing(d) -> list[dict]:
    """The images prefix as the Distributed Map's S3 ItemReader lists it: Key, Etag, Size, LastModified (epoch
    seconds), StorageClass."""
    items = []
    for page in d.client.get_paginator("list_objects_v2").paginate(Bucket=d.bucket, Prefix=f"{d.prefix}/images/"):
        for obj in page.get("Contents", []):
            items.append(
                {
                    "Etag": obj["ETag"],
                    "Key": obj["Key"],
                    "LastModified": int(obj["LastModified"].timestamp()),
                    "Size": obj["Size"],
                    "StorageClass": obj.get("StorageClass", "STANDARD"),
                }
            )
    return items


def map_batch(d, keys: list[str] | None = None) -> dict:
    """A batch of the listing (all of it, or the images ``keys``), as the ItemBatcher hands it to ingest."""
    event = load_event("stepfunctions_map_batch")
    wanted = None if keys is None else {f"{d.prefix}/images/{k}" for k in keys}
    items = [item for item in listing(d) if wanted is None or item["Key"] in wanted]
    assert wanted is None or len(items) == len(wanted)
    assert set(items[0]) == set(event["Items"][0])  # the documented shape
    return {**event, "Items": items}


def _ingest(d, event, *, images=None, models=None):
    changes = changes_from_batch(event, d.images)
    return ingest(changes, images=images or d.images, artifacts=d.artifacts, models=models or d.models(), **LIMITS)


def _reindex(d, tmp_path):
    return reindex(d.artifacts, tmp_path / "work", lease_s=60, n_jobs=1)


def test_a_batch_of_new_images_is_embedded_and_searchable_after_reindex(deployment, tmp_path):
    d = deployment
    photos = {f"backfilled/photo {i}.jpg": unique_photo(100 + i) for i in range(3)}
    for key, data in photos.items():
        d.put_image(key, data)
    report = _ingest(d, map_batch(d, list(photos)))
    assert (report.embedded, report.failed, report.skipped, report.reused) == (3, {}, [], 0)
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == SAMPLE_COUNT + 3
    engine = d.engine()
    for key, data in photos.items():
        top = engine.search(embed_bytes(engine, data), 1)[0]
        assert engine.keys[top.id].key == key and engine.keys[top.id].label == "backfilled"


def test_an_image_whose_metadata_names_its_label_gets_that_label_not_its_top_folder(deployment, tmp_path):
    # ops.upload records each image's label in its metadata: an iFood image's label comes from a CSV, and
    # under a source prefix the top folder is the source. A re-embedding backfill must keep those labels.
    d = deployment
    tagged, plain = "ifood/train_set/train_000123.jpg", "ramen/mine.jpg"
    d.client.put_object(
        Bucket=d.bucket,
        Key=f"{d.prefix}/images/{tagged}",
        Body=unique_photo(7),
        Metadata=label_metadata("crème brûlée"),
    )
    d.put_image(plain, unique_photo(8))
    assert _ingest(d, map_batch(d, [tagged, plain])).embedded == 2
    assert _reindex(d, tmp_path).status == "published"
    labels = {e.key: e.label for e in d.engine().keys}
    assert (labels[tagged], labels[plain]) == ("crème brûlée", "ramen")


def test_a_corrupt_image_is_skipped_with_its_reason_and_the_batch_succeeds(deployment):
    d = deployment
    d.put_image("mixed/good.jpg", unique_photo(111))
    d.put_image("mixed/bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    report = _ingest(d, map_batch(d, ["mixed/good.jpg", "mixed/bad.jpg"]))
    assert report.failed == {} and report.embedded == 1  # nothing transient: the handler answers, no BatchFailed
    (skipped,) = report.as_dict()["skipped"]
    assert skipped["key"] == "mixed/bad.jpg" and "could not be read" in skipped["reason"]


def test_the_same_batch_redelivered_is_reused_and_nothing_is_embedded_twice(deployment, tmp_path):
    d = deployment
    d.put_image("again/one.jpg", unique_photo(121))
    d.put_image("again/two.jpg", unique_photo(122))
    batch = map_batch(d, ["again/one.jpg", "again/two.jpg"])
    first, second = _ingest(d, batch), _ingest(d, batch)
    assert first.embedded == 2 and len(first.shards) == 1
    assert (second.reused, second.embedded, second.shards) == (1, 0, [])
    assert len(list(d.artifacts.list(namespace(d.models()[0].sha256)))) == 1
    assert _reindex(d, tmp_path).count == SAMPLE_COUNT + 2
    keys = [e.key for e in d.engine().keys]
    assert keys.count("again/one.jpg") == keys.count("again/two.jpg") == 1


def test_a_transient_failure_fails_the_batch_and_its_retry_completes_it(deployment, tmp_path):
    d = deployment
    d.put_image("flaky/ok.jpg", unique_photo(131))
    d.put_image("flaky/throttled.jpg", unique_photo(132))
    batch = map_batch(d, ["flaky/ok.jpg", "flaky/throttled.jpg"])
    flaky = FlakyStore(d.images, fail_get={"flaky/throttled.jpg"})
    report = _ingest(d, batch, images=flaky)
    # the handler raises BatchFailed for this (the subprocess test below runs it); the map retries the batch
    (reason,) = report.failed.values()
    assert "SlowDown" in reason and report.embedded == 1
    retry = _ingest(d, batch)
    assert retry.failed == {} and retry.embedded == 2
    assert _reindex(d, tmp_path).count == SAMPLE_COUNT + 2
    assert [e.key for e in d.engine().keys].count("flaky/ok.jpg") == 1


def test_a_backfill_in_batches_puts_a_new_model_live_and_a_rerun_embeds_nothing(deployment, tmp_path, model_path):
    """What the state machine does after a new model is announced: every image, batch by batch, then reindex."""
    d = deployment
    second = resaved_model(model_path, tmp_path / "second.pt")
    sha = file_sha256(second)
    d.artifacts.upload_file(second, model_key(sha))
    d.artifacts.put(POINTER_FILE, ModelPointer(model_file=model_key(sha), model_sha256=sha).model_dump_json().encode())
    assert _reindex(d, tmp_path).pending_model["missing"] == SAMPLE_COUNT  # not live before the backfill

    items = map_batch(d)["Items"]
    batches = [{"Items": items[i : i + 16], "BatchInput": {"execution": "backfill"}} for i in range(0, len(items), 16)]
    reports = [_ingest(d, batch) for batch in batches]
    assert sum(r.embedded for r in reports) == SAMPLE_COUNT and not any(r.failed for r in reports)
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.model_sha256 == sha and result.pending_model is None
    assert Manifest.model_validate_json(d.live_manifest_body()).model_sha256 == sha

    shards = sorted(i.key for i in d.artifacts.list(namespace(sha)))
    reruns = [_ingest(d, batch) for batch in batches]  # the whole backfill again: every batch is recognised
    assert all(r.embedded == 0 and r.reused == len(d.models()) for r in reruns)
    assert sorted(i.key for i in d.artifacts.list(namespace(sha))) == shards
    assert _reindex(d, tmp_path).status == "unchanged"


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class ThrottlingProxy:
    """HTTP proxy on loopback in front of the S3 server: GETs of the chosen keys get S3's 503 SlowDown (what S3
    answers when a prefix is throttled); every other request passes through."""

    def __init__(self, upstream: str, throttled: set[str]):
        target = urlsplit(upstream)
        proxy = self
        self.throttled = throttled

        class Relay(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length", 0))
                return self.rfile.read(length) if length else None

            def _relay(self) -> None:
                body = self._body()
                key = unquote(urlsplit(self.path).path)
                if self.command == "GET" and any(key.endswith(f"/{k}") for k in proxy.throttled):
                    status, headers, data = 503, [("Content-Type", "application/xml")], SLOW_DOWN
                    length = str(len(data))
                else:
                    upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                    forwarded = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                    if body is not None:
                        forwarded["Content-Length"] = str(len(body))
                    upstream_conn.request(self.command, self.path, body=body, headers=forwarded)
                    response = upstream_conn.getresponse()
                    status, data = response.status, response.read()
                    length = response.getheader("Content-Length", str(len(data)))
                    skip = ("transfer-encoding", "connection", "content-length")
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in skip]
                    upstream_conn.close()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ThrottlingProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# Runs each event (one JSON document a line) through the real handler, as the Lambda runtime does, and writes
# what the runtime would report: the result, or the error whose errorType Step Functions' Retry matches.
DRIVER = """
import json, sys
from support.service import LambdaContext
from lambda_fn.collection.handlers.ingest import handler
with open(sys.argv[1]) as events, open(sys.argv[2], "w") as out:
    for line in events:
        try:
            answer = {"result": handler(json.loads(line), LambdaContext())}
        except Exception as exc:
            answer = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
        out.write(json.dumps(answer) + "\\n")
"""


def test_the_real_handler_answers_a_batch_and_raises_batch_failed_when_s3_throttles(deployment, s3_endpoint, tmp_path):
    d = deployment
    d.put_image("real/ok.jpg", unique_photo(141))
    d.put_image("real/throttled.jpg", unique_photo(142))
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(map_batch(d, ["real/ok.jpg"])) + "\n" + json.dumps(map_batch(d, ["real/throttled.jpg"])) + "\n"
    )
    answers = tmp_path / "answers.jsonl"
    with ThrottlingProxy(s3_endpoint, {"real/throttled.jpg"}) as proxy:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DEEPFOOD_")},
            env_name("artifacts_uri"): d.uri,
            env_name("cache_dir"): str(tmp_path / "cache"),
            env_name("num_threads"): "1",
            "AWS_ENDPOINT_URL": proxy.url,
        }
        run = run_code(DRIVER, events, answers, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ok, throttled = (json.loads(line) for line in answers.read_text().splitlines())
    assert ok["result"]["embedded"] == 1 and ok["result"]["failed"] == [], ok
    assert throttled["errorType"] == "BatchFailed", throttled  # the name the state machine's Retry lists
    assert "1 images failed transiently" in throttled["errorMessage"] and "SlowDown" in throttled["errorMessage"]
