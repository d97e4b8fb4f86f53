"""Structured JSON logs (aws-lambda-powertools), one logger per container.

The service's modules log through ``logging.getLogger(__name__)``; ``configure`` gives those loggers the
powertools JSON handler, so every line carries the Lambda request id once the handler is wrapped with
``logger.inject_lambda_context``. Image bytes are never logged.
"""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

SERVICE_NAME = "deepfood-search"
logger = Logger(service=SERVICE_NAME)


def configure(level: str) -> None:
    logger.setLevel(level.upper())
    ours = {name for name in logging.root.manager.loggerDict if name.startswith("lambda_fn")}
    copy_config_to_registered_loggers(source_logger=logger, include=ours, log_level=level.upper())
    # Mangum logs every request as plain text; our JSON access log already says the same, with the request id.
    logging.getLogger("mangum").setLevel(logging.WARNING)
