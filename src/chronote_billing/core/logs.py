"""Logging, configured once per process (decision 0035): JSON lines on stderr.

structlog's events and the standard library's records (uvicorn, Alembic) are rendered by the
same processors: UTC timestamp, level, logger name, the event's keys, the request's bound
context (its id), and exceptions as bounded tracebacks without local variables.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

TRACEBACK_MAX_FRAMES = 30
TRACEBACK_MAX_CHARS = 16 * 1024

_configured = False
_lock = threading.Lock()


def bounded_traceback(exc: BaseException) -> str:
    """The innermost frames of ``exc`` and of the exceptions chained to it, no local variables,
    at most ``TRACEBACK_MAX_CHARS`` (the end is kept: that is where the error is)."""
    rendered = "".join(
        traceback.TracebackException.from_exception(
            exc, limit=-TRACEBACK_MAX_FRAMES, capture_locals=False, max_group_width=5, max_group_depth=3
        ).format()
    )
    if len(rendered) > TRACEBACK_MAX_CHARS:
        rendered = "… (cut)\n" + rendered[-TRACEBACK_MAX_CHARS:]
    return rendered


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) == 3 else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def render_exception(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``exc_info`` becomes ``exception`` (bounded) and ``error_type``."""
    exc = _exception_of(event.pop("exc_info", None))
    if exc is not None:
        event.setdefault("error_type", type(exc).__name__)
        event["exception"] = bounded_traceback(exc)
    return event


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        render_exception,
    ]


def configure_logging(level: str | None = None, stream: TextIO | None = None, force: bool = False) -> None:
    """Configure structlog and the standard library's logging; later calls do nothing unless
    ``force`` (tests capture the output that way)."""
    global _configured
    with _lock:
        if _configured and not force:
            return
        name = (level or os.environ.get("CHRONOTE_LOG_LEVEL") or "info").upper()
        numeric = logging.getLevelNamesMapping().get(name, logging.INFO)
        out = stream or _Stderr()
        renderer = structlog.processors.JSONRenderer()  # ASCII output: nothing can fail to encode
        structlog.configure(
            processors=[
                *_shared_processors(),
                _logger_name,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=lambda *args: _NamedWriteLogger(out, args[0] if args else None),
            cache_logger_on_first_use=not force,
        )
        handler = logging.StreamHandler(out)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[*_shared_processors(), structlog.stdlib.add_logger_name],
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            )
        )
        root = logging.getLogger()
        for old in list(root.handlers):
            if getattr(old, "_chronote", False):
                root.removeHandler(old)
        handler._chronote = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(numeric)
        # uvicorn installs handlers of its own; its records go through ours instead. Its access
        # log is replaced by the request line of api/observe.py.
        for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(noisy)
            logger.handlers.clear()
            logger.propagate = True
        logging.getLogger("uvicorn.access").disabled = True
        # One line per outgoing HTTP call at INFO is noise; their failures still show.
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        _configured = True


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test's capture, a redirected stream)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's line writer (one lock per file), knowing the module that logs through it."""

    def __init__(self, file: Any, name: Any) -> None:
        super().__init__(file)
        self.name = name if isinstance(name, str) else None


def _logger_name(logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # structlog's own loggers carry the module name they were made with, when they have one.
    bound = getattr(logger, "name", None)
    if bound and "logger" not in event:
        event["logger"] = bound
    return event


# uvicorn's own dictConfig would undo the above; `serve` passes this instead.
UVICORN_LOG_CONFIG: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}
