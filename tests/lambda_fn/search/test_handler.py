"""The container's entry point, invoked the way the Lambda runtime does, with saved API Gateway events."""

import base64
import importlib
import json

import httpx
import pytest

from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import read_keys
from support.service import multipart_image, service_env
from tests.helpers import assert_json_error, load_event, run_code

BOUNDARY = "----deepfoodboundary"


@pytest.fixture(scope="module")
def handler(artifacts_dir, sample_dir, tmp_path_factory):
    """``lambda_fn.search.main.handler`` imported afresh, configured by the environment as in the Lambda runtime."""
    mp = pytest.MonkeyPatch()
    cache_dir = tmp_path_factory.mktemp("lambda-tmp")
    env = service_env(artifacts_uri=artifacts_dir, images_uri=sample_dir, num_threads=1, cache_dir=cache_dir)
    for name, value in env.items():
        mp.setenv(name, value)
    from lambda_fn.contract.config import get_settings

    get_settings.cache_clear()
    module = importlib.reload(importlib.import_module("lambda_fn.search.main"))
    yield module.handler
    mp.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def query(artifacts_dir, sample_dir):
    key = read_keys(artifacts_dir / "keys.json")[21].key
    return 21, (sample_dir / key).read_bytes()


def test_rest_api_multipart_base64_event(handler, lambda_context, query, log_lines):
    image_id, data = query
    event = load_event("apigw_rest_post_search")
    event["body"] = base64.b64encode(multipart_image(data, BOUNDARY)).decode()
    response = handler(event, lambda_context)
    assert response["statusCode"] == 200, response["body"]
    body = json.loads(response["body"])
    assert body["k"] == 5 and body["results"][0]["id"] == image_id
    logs = log_lines()
    request_logs = [entry for entry in logs if entry.get("message") == "request"]
    assert request_logs and request_logs[-1]["function_request_id"] == lambda_context.aws_request_id
    assert request_logs[-1]["status"] == 200
    assert not any(base64.b64encode(data[:30]).decode() in json.dumps(entry) for entry in logs)


def test_base64_bodies_are_decoded_before_mangum_and_wrapped_ones_still_by_it(handler, lambda_context, query):
    from lambda_fn.search.main import decoded_body

    image_id, data = query
    event = load_event("apigw_rest_post_search")
    body = multipart_image(data, BOUNDARY)
    event["body"] = base64.b64encode(body).decode()
    assert decoded_body(event) == {**event, "body": body, "isBase64Encoded": False}
    raw = {**event, "isBase64Encoded": False}
    assert decoded_body(raw) is raw  # not marked base64: Mangum takes the body as it is
    event["body"] = base64.encodebytes(body).decode()  # MIME lines: whitespace a strict decoder refuses
    assert decoded_body(event) is event  # left to Mangum, which skips the newlines as before
    response = handler(event, lambda_context)
    assert response["statusCode"] == 200 and json.loads(response["body"])["results"][0]["id"] == image_id


def test_http_api_v2_raw_image_event(handler, lambda_context, query):
    image_id, data = query
    event = load_event("http_api_v2_post_search")
    event["body"] = base64.b64encode(data).decode()
    response = handler(event, lambda_context)
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["k"] == 3 and body["results"][0]["id"] == image_id


def test_function_url_health_event(handler, lambda_context):
    response = handler(load_event("function_url_get_health"), lambda_context)
    assert response["statusCode"] == 200 and json.loads(response["body"])["status"] == "ready"


def test_rest_api_similar_event(handler, lambda_context):
    response = handler(load_event("apigw_rest_get_similar"), lambda_context)
    body = json.loads(response["body"])
    assert response["statusCode"] == 200 and body["query_id"] == 3 and len(body["results"]) == 4


def _rest_get(path: str) -> dict:
    event = load_event("apigw_rest_get_similar")  # stage "prod": the browser's URL is /prod/<path>
    stage = event["requestContext"]["stage"]
    event.update(path=path, queryStringParameters=None, multiValueQueryStringParameters=None)
    event["pathParameters"] = {"proxy": path.lstrip("/")}
    event["requestContext"]["path"] = f"/{stage}{path}"
    return event


def test_docs_behind_a_rest_stage_fetch_the_schema_inside_the_stage(handler, lambda_context):
    docs = handler(_rest_get("/docs"), lambda_context)
    assert docs["statusCode"] == 200
    assert "'/prod/openapi.json'" in docs["body"] or '"/prod/openapi.json"' in docs["body"]
    schema = handler(_rest_get("/openapi.json"), lambda_context)
    assert schema["statusCode"] == 200 and "/search" in json.loads(schema["body"])["paths"]


def test_docs_without_a_stage_prefix_stay_at_the_root(handler, lambda_context):
    event = load_event("function_url_get_health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/docs"
    body = handler(event, lambda_context)["body"]
    assert "'/openapi.json'" in body or '"/openapi.json"' in body


def test_rest_api_bad_image_is_a_4xx_json_error(handler, lambda_context):
    event = load_event("apigw_rest_post_search")
    event["body"] = base64.b64encode(multipart_image(b"not an image", BOUNDARY)).decode()
    response = handler(event, lambda_context)
    as_http = httpx.Response(response["statusCode"], headers=response["headers"], content=response["body"].encode())
    assert_json_error(as_http, 400, "not_an_image")


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchvision", "training", "tqdm", "moto", "pytest"):
            raise ImportError("blocked in the Lambda image: " + name)
sys.meta_path.insert(0, Block())
"""


def test_handler_imports_without_torchvision_or_training(artifacts_dir):
    script = BLOCK + "import lambda_fn.search.main\nprint('imported', callable(lambda_fn.search.main.handler))"
    env = {**service_env(artifacts_uri=artifacts_dir), "PATH": "/usr/bin:/bin"}
    proc = run_code(script, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported True" in proc.stdout


FIRST_TORCH_IMPORT = """
import sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:  # the first time anything imports torch
            seen.append(getattr(sys.modules.get("lambda_fn.search.main"), "prefetch", None) is not None)
sys.meta_path.insert(0, Watch())
import lambda_fn.search.main as service
from lambda_fn.storage import artifacts, records
from support.service import LambdaContext, search_event
def refetched(*args, **kwargs):
    raise AssertionError("the first load fetched the build again")
service.prefetch.result()  # then anything that fetches from here on is the load itself
records.read_manifest = artifacts.fetch_build = refetched
r = service.handler(search_event(open(sys.argv[1], "rb").read()), LambdaContext())
print("prefetch started before torch:", seen, "status:", r["statusCode"])
print("waited:", service.app.state.service.prefetch_wait_s is not None)
"""


def test_cold_start_fetches_the_build_during_the_torch_import(artifacts_dir, query, tmp_path):
    image = tmp_path / "query.jpg"
    image.write_bytes(query[1])
    settings = service_env(artifacts_uri=artifacts_dir, cache_dir=tmp_path / "cache", num_threads=1)
    env = {**settings, "PATH": "/usr/bin:/bin"}
    proc = run_code(FIRST_TORCH_IMPORT, image, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prefetch started before torch: [True] status: 200" in proc.stdout, proc.stdout[-2000:]
    assert "waited: True" in proc.stdout


def test_missing_configuration_fails_cold_start_with_the_variable_name():
    proc = run_code("import lambda_fn.search.main", env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode != 0
    assert env_name("artifacts_uri") in proc.stderr and "Field required" in proc.stderr
