"""Run the service locally: the API, the collection images and the web page on one port.

python -m lambda_fn.search.local --artifacts artifacts --images data/sample --port 8000
python -m lambda_fn.search.local --artifacts s3://bucket/prefix/      # the same server against S3

Downloaded artifacts are cached in ``$XDG_CACHE_HOME/deepfood`` (else ``~/.cache/deepfood``), not in /tmp:
a model file is a program, and a folder another user can write is one where they could plant one. The
folder is created 0700 and refused if someone else owns it or others may write it. ``--cache-dir`` or
DEEPFOOD_CACHE_DIR choose another.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from lambda_fn.contract import metrics
from lambda_fn.contract.config import Settings
from lambda_fn.contract.site_config import CONFIG_FILE, site_config
from lambda_fn.search.app import create_app
from lambda_fn.search.urls import LOCAL_IMAGES_ROUTE
from lambda_fn.storage.store import Location

REPO_ROOT = Path(__file__).resolve().parents[2]
# A new build shows up quickly on a workstation; in Lambda the default interval applies (Settings).
LOCAL_MANIFEST_CHECK_S = 2.0
# The cache folder's name under the user's cache directory.
CACHE_NAME = "deepfood"


class UnsafeCacheDir(RuntimeError):
    """The cache folder could be written by another user, who could then plant a model there."""


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/deepfood`` (an absolute XDG_CACHE_HOME only, as the XDG spec says; it is the
    desktop's setting, not the service's) or ``~/.cache/deepfood``, created 0700; refused unless this user
    owns it and no one else may write it."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    path = (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / CACHE_NAME
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise UnsafeCacheDir(
            f"the cache folder {path} is owned by another user (uid {info.st_uid}); remove it or pass --cache-dir"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheDir(
            f"the cache folder {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 700 {path}` or pass --cache-dir"
        )
    return path


class PrintMetrics:
    """Prints what each request recorded as an EMF line on stdout once it is answered, as the Lambda handler
    does per invocation: a developer sees the metrics CloudWatch would get, without AWS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                metrics.flush(metrics.search)


def create_local_app(settings: Settings, *, frontend: Path | None = None) -> FastAPI:
    app = create_app(settings)
    app.add_middleware(PrintMetrics)
    images = Location.parse(settings.resolved_images_uri)
    if not images.is_s3 and not settings.images_base_url and images.path.is_dir():
        app.mount(LOCAL_IMAGES_ROUTE, StaticFiles(directory=images.path), name="files")

    @app.get(f"/{CONFIG_FILE}", include_in_schema=False)
    def config_json() -> dict:
        return site_config(api_base_url="")  # the page and the API share this origin

    if frontend is not None and frontend.is_dir():
        app.mount("/", StaticFiles(directory=frontend, html=True), name="site")
    return app


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default="artifacts", help="folder or s3://bucket/prefix/ (default: artifacts)")
    p.add_argument(
        "--images",
        default=None,
        help="collection folder or s3:// URI served as image links (default: <artifacts>/images/)",
    )
    p.add_argument("--frontend", type=Path, default=REPO_ROOT / "frontend", help="static site folder to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="artifact cache for s3:// artifacts (default: $XDG_CACHE_HOME/deepfood or ~/.cache/deepfood, 0700)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    p.add_argument("--eager", action="store_true", help="load model and index before serving")
    p.add_argument(
        "--manifest-check-s",
        type=float,
        default=LOCAL_MANIFEST_CHECK_S,
        help="seconds between checks for a new build, e.g. one `ops.collection add` published "
        f"(default: {LOCAL_MANIFEST_CHECK_S:g}; a local check reads one small file)",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The service's settings from the flags (and DEEPFOOD_* variables); the cache is the user's own folder
    unless --cache-dir or DEEPFOOD_CACHE_DIR names one."""
    overrides = {
        "artifacts_uri": args.artifacts,
        "images_uri": args.images,
        "num_threads": args.threads,
        "load_on_import": args.eager,
        "manifest_check_s": args.manifest_check_s,
        "cache_dir": args.cache_dir,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if "cache_dir" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"cache_dir": user_cache_dir()})


def main(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    except (UnsafeCacheDir, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_local_app(settings, frontend=args.frontend)
    print(f"DeepFood search on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    print("Metrics: one CloudWatch EMF line (a JSON object with an _aws key) per search on stdout", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
