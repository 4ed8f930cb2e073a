"""HTTP routes of the webhooks domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
