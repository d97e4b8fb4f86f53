"""Structured JSON logs (aws-lambda-powertools), one logger per container.

The service's modules log through ``logging.getLogger(__name__)``; ``configure`` gives those loggers the
powertools JSON handler, so every line carries the Lambda request id once the handler is wrapped with
``logger.inject_lambda_context``. Image bytes are never logged.

Every line's ``service`` names the function that wrote it, as the metrics' ``service`` dimension does
(``lambda_fn.contract.metrics``): each entry point passes its own to ``configure``.
"""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from lambda_fn.contract.metrics import SEARCH_SERVICE

logger = Logger(service=SEARCH_SERVICE)


def configure(level: str, service: str = SEARCH_SERVICE) -> None:
    """Log at ``level`` as ``service`` (``lambda_fn.contract.metrics``' ``*_SERVICE``) from every ``lambda_fn``
    module."""
    # Powertools has no setter for the service: inject_lambda_context(clear_state=True) restores its default
    # keys on each invocation, so the service goes there as well as into the current keys.
    logger.service = service
    logger._default_log_keys["service"] = service
    logger.append_keys(service=service)
    logger.setLevel(level.upper())
    ours = {name for name in logging.root.manager.loggerDict if name.startswith("lambda_fn")}
    copy_config_to_registered_loggers(source_logger=logger, include=ours, log_level=level.upper())
    # Mangum logs every request as plain text; our JSON access log already says the same, with the request id.
    logging.getLogger("mangum").setLevel(logging.WARNING)
