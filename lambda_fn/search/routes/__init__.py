"""One router module per resource.

Imported before any route is declared, so it first spares FastAPI an import of ``pydantic.v1``: declaring a
route asks whether its types are Pydantic v1 models, only to refuse them, and that check imports the whole
``pydantic.v1`` package (127 ms of a cold start on a quiet 2-vCPU x86 machine; this app has no v1 model).
A v1 model cannot exist before ``pydantic.v1`` is imported, so the checks below ask FastAPI's own only once it
is; a v1 model is still refused as before.
"""

from __future__ import annotations

import sys


def _once_v1_is_imported(check):
    def guarded(obj) -> bool:
        return "pydantic.v1" in sys.modules and check(obj)

    guarded.__wrapped__ = check
    return guarded


def _guard_v1_checks() -> bool:
    """Wrap FastAPI's two checks; False (and nothing changed) where this FastAPI has them elsewhere, since
    ``fastapi._compat`` is private: the service then starts as fast as FastAPI itself allows, no slower."""
    try:
        from fastapi import encoders
        from fastapi._compat import shared

        class_check, instance_check = shared.is_pydantic_v1_model_class, encoders.is_pydantic_v1_model_instance
    except (ImportError, AttributeError):
        return False
    if not hasattr(class_check, "__wrapped__"):
        shared.is_pydantic_v1_model_class = _once_v1_is_imported(class_check)
        encoders.is_pydantic_v1_model_instance = _once_v1_is_imported(instance_check)
    return True


_guard_v1_checks()
