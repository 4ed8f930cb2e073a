"""HTTP routes of the billing domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
