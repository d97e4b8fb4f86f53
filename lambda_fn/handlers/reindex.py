"""Reindex function entry point (``CMD ["lambda_fn.handlers.reindex.handler"]``).

Invoked by the schedule (an EventBridge event, ignored) and as the step after a backfill's map; answers
the run's report (``published``, ``unchanged``, ``busy``, ...), which the state machine records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lambda_fn.config import get_settings
from lambda_fn.logs import configure, logger
from lambda_fn.reindex import reindex
from lambda_fn.store import open_store

settings = get_settings()
configure(settings.log_level)
artifacts = open_store(settings.artifacts_uri)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict, context: Any) -> dict:
    return reindex(artifacts, Path(settings.cache_dir) / "reindex", lease_s=settings.reindex_lease_s).as_dict()
