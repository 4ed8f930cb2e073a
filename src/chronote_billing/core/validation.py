"""Validated types for everything that arrives from outside (decision 0034).

Every request model, path, query and header parameter of the API and every portal path and
form field is typed with one of these, so the rules are written once: Discord ids are
snowflakes, our ids have their prefix and alphabet (``core/ids.py``), free text has no NUL, no
lone surrogate and no control character, every string is at most as long as the narrowest
column it flows into, and numbers are strict integers (``true``, ``"100"`` and ``1.0`` are not
numbers). Messages never repeat the rejected value: a message that quotes a NUL or a lone
surrogate cannot be rendered, which is how such values used to become 500s.

The functions at the end (``check_text``, ``printable``) serve the edges that read input
without Pydantic (portal forms).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt
from pydantic_core import PydanticCustomError

from .idempotency import MAX_KEY_LENGTH

# ---------------------------------------------------------------------------- characters

# Control characters other than tab, line feed and carriage return, DEL, C1 controls, and the
# surrogate range (a lone surrogate is not a character; UTF-8 cannot encode it).
_BAD_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# One line: no control character at all.
_BAD_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _reject(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        found = pattern.search(value)
        if found is not None:
            char = found.group()
            kind = (
                "a NUL character"
                if char == "\x00"
                else ("a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character")
            )
            raise PydanticCustomError(
                "text_characters", "{what} must not contain {kind}", {"what": what, "kind": kind}
            )
        return value

    return AfterValidator(check)


def _text(max_length: int, min_length: int = 0) -> tuple[Any, ...]:
    """Free text (descriptions, reasons): tabs and line breaks allowed, no other control
    character, NUL or lone surrogate; at most ``max_length`` characters."""
    return Field(min_length=min_length, max_length=max_length), _reject(_BAD_IN_TEXT, "text")


def _line(max_length: int, min_length: int = 1, **schema: Any) -> tuple[Any, ...]:
    """One line of text (names, references): no control character at all."""
    return Field(min_length=min_length, max_length=max_length, **schema), _reject(_BAD_IN_LINE, "text")


# Lengths are those of the narrowest column each value flows into.
Name = Annotated[str, *_line(200)]  # organizations.name, billing_accounts.display_name
Reason = Annotated[str, *_text(500, min_length=0)]  # hold and grant reasons (text columns; 500 by contract)
MeetingRef = Annotated[str, *_line(128, description="Your meeting id, at most 128 characters.")]
EventRef = Annotated[str, *_line(128, description="Your event id, at most 128 characters.")]
OwnerRef = Annotated[str, *_line(64)]  # billing_accounts.owner_ref
Keyword = Annotated[str, *_line(32)]  # context, capture_source, event_type: checked by the services
CatalogRef = Annotated[str, *_line(40)]  # plan and pack ids
PromotionCodeText = Annotated[str, *_line(64)]  # what a person typed; checked against Stripe's codes
Url = Annotated[str, *_line(2000)]
GuildList = Annotated[str, *_line(4096, min_length=0)]  # comma-separated Discord ids
SignatureHeader = Annotated[str, *_line(4096, min_length=0)]  # Stripe-Signature: t=...,v1=...


# ---------------------------------------------------------------------------- identifiers

SNOWFLAKE_PATTERN = r"^[0-9]{15,21}$"


def _matching(pattern: str, message: str, min_length: int, max_length: int, **schema: Any) -> Any:
    """A string that must match ``pattern`` (ASCII), refused with ``message``; the pattern and
    lengths are published in the OpenAPI document."""
    compiled = re.compile(pattern, re.ASCII)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise PydanticCustomError("format", message)
        return value

    return (
        AfterValidator(check),
        Field(
            json_schema_extra={"pattern": pattern, "minLength": min_length, "maxLength": max_length, **schema}
        ),
    )


DiscordId = Annotated[
    str,
    *_matching(
        SNOWFLAKE_PATTERN,
        "not a Discord id (15 to 21 digits)",
        15,
        21,
        description="A Discord id (snowflake): 15 to 21 digits.",
        examples=["100000000000000001"],
    ),
]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # core/ids.py's alphabet
_ID_BODY = f"[{_CROCKFORD}]{{26}}"


def _prefixed(what: str, *prefixes: str) -> Any:
    alternatives = "|".join(prefixes)
    pattern = f"^({alternatives})_{_ID_BODY}$" if len(prefixes) > 1 else f"^{prefixes[0]}_{_ID_BODY}$"
    shape = " or ".join(p + "_" for p in prefixes) + " and 26 letters and digits"
    return Annotated[
        str,
        *_matching(
            pattern,
            f"not {what} id ({shape})",
            min(len(p) for p in prefixes) + 27,
            max(len(p) for p in prefixes) + 27,
            description=f"{what[0].upper()}{what[1:]} id: {shape}.",
            examples=[f"{prefixes[0]}_01m92q5egskz0frejap38z336j"],
        ),
    ]


# Stripe's Checkout Session ids (cs_test_..., cs_live_...), as its return URLs carry them.
CheckoutSessionId = Annotated[
    str,
    *_matching(r"^cs_[A-Za-z0-9_]{1,250}$", "not a Checkout Session id (cs_...)", 4, 253),
]

AccountId = _prefixed("a billing account", "acct")
HoldId = _prefixed("a hold", "hold")
RecordingId = _prefixed("a recording or metered event", "rec", "use")
OrgId = _prefixed("an organization", "org")
AuthorizationId = _prefixed("an authorization", "auth")
NotificationId = _prefixed("an outbox entry", "evt", "job")

FUNDING_SOURCE_PATTERN = f"^(personal|auth_{_ID_BODY})$"
FundingSource = Annotated[
    str,
    *_matching(
        FUNDING_SOURCE_PATTERN,
        "not a funding source ('personal' or an authorization id, auth_...)",
        8,
        31,
        description="'personal' or the id of an authorization you hold (auth_...).",
    ),
]


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


IdempotencyKeyText = Annotated[
    str,
    BeforeValidator(_strip),
    Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description=f"1 to {MAX_KEY_LENGTH} characters of your choosing; a retry with the same key "
        "returns the first result.",
    ),
    _reject(_BAD_IN_LINE, "Idempotency-Key"),
]

# ---------------------------------------------------------------------------- numbers

# Strict: true, "100" and 1.0 are not whole numbers. Bounds are the domain's own or wider: where
# a service answers a range with a code of its own (invalid_threshold, recording_too_long), the
# edge leaves the range to it and only keeps the number inside what a BIGINT holds.
BIGINT_MAX = 2**63 - 1
WholeNumber = Annotated[StrictInt, Field(ge=-BIGINT_MAX, le=BIGINT_MAX)]
# A count or amount the service checks itself (its refusal has its own code).
Count = Annotated[StrictInt, Field(ge=-BIGINT_MAX, le=BIGINT_MAX)]
Minutes = Annotated[StrictInt, Field(gt=0, le=24 * 60, description="Whole minutes.")]
DurationSeconds = Annotated[StrictInt, Field(gt=0, le=24 * 3600, description="Whole seconds.")]
SourceSeconds = Annotated[StrictInt, Field(ge=0, le=10**9, description="Whole seconds.")]
ByteCount = Annotated[StrictInt, Field(gt=0, le=10**12, description="Bytes.")]
CapCredits = Annotated[StrictInt, Field(ge=0, le=10**9, description="Whole credits.")]
TtlSeconds = Annotated[StrictInt, Field(gt=0, le=7 * 24 * 3600, description="Seconds from now.")]

# ---------------------------------------------------------------------------- moments

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # far enough; leaves room for the days services add


def _bounded_moment(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise PydanticCustomError("moment", "must be between 1970 and 9000")
    return value


def _iso_text(value: Any) -> Any:
    # A moment is sent as ISO 8601 text; a bare number is not a date (no epoch guessing).
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("moment", "must be a date and time in ISO 8601, e.g. 2026-12-05T10:00:00Z")
    return value


Moment = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_bounded_moment)]

# ---------------------------------------------------------------------------- structured

METADATA_MAX_BYTES = 8 * 1024
METADATA_MAX_KEYS = 50
METADATA_MAX_DEPTH = 4


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > METADATA_MAX_KEYS:
        raise PydanticCustomError("metadata", "metadata has at most {n} keys", {"n": METADATA_MAX_KEYS})

    def walk(node: Any, depth: int) -> None:
        if depth > METADATA_MAX_DEPTH:
            raise PydanticCustomError(
                "metadata", "metadata nests at most {n} levels", {"n": METADATA_MAX_DEPTH}
            )
        if isinstance(node, str):
            if _BAD_IN_TEXT.search(node):
                raise PydanticCustomError(
                    "metadata", "metadata strings must not contain NUL, control characters or lone surrogates"
                )
        elif isinstance(node, dict):
            for key, item in node.items():
                walk(key, depth)
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)
        elif isinstance(node, float) and node != node:  # NaN is not JSON
            raise PydanticCustomError("metadata", "metadata numbers must be finite")

    walk(value, 1)
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise PydanticCustomError("metadata", "metadata numbers must be finite") from None
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "metadata", "metadata is at most {n} bytes as JSON", {"n": METADATA_MAX_BYTES}
        )
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_check_metadata),
    Field(description="Your own key-value data: at most 50 keys, 4 levels and 8 KiB as JSON."),
]

# ---------------------------------------------------------------------------- without Pydantic


def text_problem(value: str, one_line: bool = True) -> str | None:
    """What is wrong with ``value``'s characters, in words, or None when nothing is."""
    found = (_BAD_IN_LINE if one_line else _BAD_IN_TEXT).search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "must not contain a NUL character"
    if "\ud800" <= char <= "\udfff":
        return "must not contain a lone surrogate"
    return "must not contain control characters"


def printable(value: str, limit: int = 80) -> str:
    """``value`` safe to show in a message: bad characters replaced, and cut to ``limit``."""
    cleaned = _BAD_IN_LINE.sub("\ufffd", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def scrub(value: Any) -> Any:
    """A JSON-like document with every string made printable (problem documents, pages)."""
    if isinstance(value, str):
        return _BAD_IN_TEXT.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
