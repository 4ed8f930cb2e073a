"""Portal pages."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

router = APIRouter()


def install(app: FastAPI) -> None:
    """Mount the portal's static files and pages on the application."""
    app.include_router(router)
