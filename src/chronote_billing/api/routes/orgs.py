"""HTTP routes of the orgs domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
