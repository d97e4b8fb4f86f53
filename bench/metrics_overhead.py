"""What the CloudWatch metrics cost a warm request: p50 with and without them, side by side in one run.

Two handlers over one loaded service (the same engine, torch thread and caches): ``lambda_fn.search.main.handler``
as deployed (``RequestMetrics`` reads each answer, one EMF line is printed per invocation), and the same app
without ``RequestMetrics`` behind the same Mangum, stage prefix and logger but no flush. Requests alternate
between the two, so machine noise hits both alike. EMF lines go to /dev/null, as a write to Lambda's log pipe.
Cases: a 224-px upload (``POST /search``, ~65 ms of work) and a search by image id
(``GET /images/{id}/similar``, ~1 ms, where a fixed cost shows most). ``metrics path alone`` times just the
recording of a search answer plus the flush, in rounds of many (the best round is the least disturbed), for
a figure below the noise of a whole request.

    python -m bench.metrics_overhead [--iterations 200] [--out bench/results/metrics_overhead.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time

from bench._setup import RESULTS, THREADS, artifacts, photo_jpeg, pin_threads
from bench.harness import percentile, write_result
from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE
from support.service import LambdaContext, search_event, service_env

PATH_ROUNDS = 7


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200, help="requests per handler and case (default: 200)")
    p.add_argument(
        "--path-iterations", type=int, default=2000, help="metrics path alone: repetitions per round (default: 2000)"
    )
    p.add_argument("--out", default=str(RESULTS / "metrics_overhead.json"), help="where the report is written")
    return p


def similar_event(image_id: int, k: int = 10) -> dict:
    event = copy.deepcopy(search_event(b"x", k=k))
    event.update(path=f"/images/{image_id}/similar", httpMethod="GET", body=None, isBase64Encoded=False)
    event["headers"] = {"Host": "bench.example"}
    event["pathParameters"] = {"proxy": f"images/{image_id}/similar"}
    event["requestContext"].update(httpMethod="GET", path=f"/prod/images/{image_id}/similar")
    return event


def main(args: argparse.Namespace) -> dict:
    art = artifacts()
    os.environ.update(service_env(artifacts_uri=art, num_threads=THREADS, log_level="WARNING"))
    from mangum import Mangum

    import lambda_fn.search.main as service
    from lambda_fn.contract import metrics
    from lambda_fn.contract.logs import logger
    from lambda_fn.search import app as app_module
    from lambda_fn.search.app import create_app

    pin_threads()
    bare = create_app(service.settings)
    bare.user_middleware = [mw for mw in bare.user_middleware if mw.cls is not app_module.RequestMetrics]
    bare.state.service, bare.state.linker = service.app.state.service, service.app.state.linker  # one engine
    without = logger.inject_lambda_context(clear_state=True)(Mangum(service.StagePrefix(bare), lifespan="off"))
    handlers = {"with metrics": service.handler, "without metrics": without}
    ctx = LambdaContext()
    data = photo_jpeg(DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE, seed=7)
    cases = {f"{DEFAULT_CROP_SIZE}px upload": search_event(data), "search by image id": similar_event(3)}
    for event in cases.values():  # ten results each: the random-weight index is all near-duplicates
        event["queryStringParameters"]["dedupe"] = "false"
        event["multiValueQueryStringParameters"]["dedupe"] = ["false"]

    report = {"threads": THREADS, "iterations": args.iterations, "cases": {}}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for label, event in cases.items():
            for handler in handlers.values():  # warm-up; the first also loads the model and index
                for _ in range(3):
                    assert handler(event, ctx)["statusCode"] == 200
            times = {name: [] for name in handlers}
            order = list(handlers)
            for i in range(args.iterations):
                for name in order[i % 2 :] + order[: i % 2]:
                    t0 = time.perf_counter()
                    response = handlers[name](event, ctx)
                    times[name].append((time.perf_counter() - t0) * 1000)
                    assert response["statusCode"] == 200
            with_p50, without_p50 = (percentile(times[n], 50) for n in handlers)
            report["cases"][label] = {
                **{name: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95)} for name, t in times.items()},
                "p50 difference ms": with_p50 - without_p50,
                "p50 ratio": with_p50 / without_p50,
            }
        body = json.dumps(json.loads(service.handler(cases[f"{DEFAULT_CROP_SIZE}px upload"], ctx)["body"])).encode()
        rounds = []
        for _ in range(PATH_ROUNDS):  # the best round: the least disturbed by other processes
            t0 = time.perf_counter()
            for _ in range(args.path_iterations):
                app_module._record(200, body)
                metrics.flush(metrics.search)
            rounds.append((time.perf_counter() - t0) / args.path_iterations * 1e6)
    report["metrics path alone"] = {
        "us_per_request_best": min(rounds),
        "us_per_request_median": percentile(rounds, 50),
        "response_bytes": len(body),
    }
    print(json.dumps(report, indent=2))
    write_result(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
