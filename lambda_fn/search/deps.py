"""Dependency aliases for the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lambda_fn.contract.config import Settings
from lambda_fn.search.state import ServiceState
from lambda_fn.search.urls import ImageLinker
from lambda_fn.vision.engine import Engine


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_engine(state: Annotated[ServiceState, Depends(get_state)]) -> Engine:
    """The live engine, taken once, so a request ends on the build it started on (see ServiceState)."""
    return await state.live()


def get_linker(request: Request) -> ImageLinker:
    return request.app.state.linker


def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LinkerDep = Annotated[ImageLinker, Depends(get_linker)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
