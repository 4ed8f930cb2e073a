"""HTTP routes of the usage domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
