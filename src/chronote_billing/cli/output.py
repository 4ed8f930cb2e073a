"""CLI plumbing: one container per command, domain errors as one-line messages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import ArgumentError, OperationalError

from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError
from chronote_billing.credits_text import whole_credits

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_container: Container | None = None


def container() -> Container:
    global _container
    if _container is None:
        _container = Container()
    return _container


def set_container(value: Container | None) -> None:
    """Tests point the CLI at their own database and clock."""
    global _container
    _container = value


def fail(message: str, code: int = 1) -> None:
    # Escaped: messages carry ids and codes in brackets, which are not markup.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn expected failures into a one-line message and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BillingError as exc:
            fail(f"{exc.message} [{exc.code}]")
        except OperationalError as exc:
            fail(
                f"database unavailable or not migrated ({str(exc.orig).splitlines()[0]}); run 'chronote-billing migrate'"
            )
        except ArgumentError as exc:
            fail(f"CHRONOTE_DATABASE_URL is not a database URL ({exc})")
        except (ValueError, OSError, OverflowError) as exc:
            fail(str(exc))
        return None

    return wrapper  # type: ignore[return-value]


def millicredits_to_credits(amount: int) -> str:
    """Whole credits, as everywhere a person reads them (decision 0039)."""
    return whole_credits(amount)


def parse_credits(text: str) -> int:
    """'12' or '12.5' credits to millicredits, exactly (no float rounding)."""
    text = text.strip().replace(",", "")
    if not text or text.startswith("-"):
        raise ValueError(f"'{text}' is not a positive number of credits")
    whole, _, frac = text.partition(".")
    if not whole.isdigit() and whole != "" or (frac and not frac.isdigit()) or len(frac) > 3:
        raise ValueError(f"'{text}' is not a number of credits with at most 3 decimals")
    value = int(whole or "0") * 1000 + int((frac + "000")[:3])
    if value <= 0:
        raise ValueError("amount must be positive")
    return value


__all__ = ["console", "err_console", "container", "fail", "handle_errors"]
