"""Portal sign-in: Discord OAuth2 (authorization code with `state`), demo sign-in, CSRF.

The session is Starlette's signed cookie. It holds the Discord user id and name, the servers on
which Discord says the user has Manage Server (or Administrator, or owns them), when that list
was fetched, and the per-session CSRF token. Nothing in it is trusted without the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import authlib.deprecate  # (installs Authlib's own warning filter, overridden below)
import httpx
import structlog
from cryptography.fernet import Fernet, InvalidToken
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from chronote_billing.access.service import Principal
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.errors import PermissionDenied
from chronote_billing.core.validation import text_problem
from chronote_billing.people import service as people

from .demo_people import demo_identities

with warnings.catch_warnings():
    # Authlib 1.9 announces a future move of its httpx integration on import; it works as is.
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.starlette_client import OAuth, OAuthError

log = structlog.get_logger(__name__)

MANAGE_GUILD = 0x20
ADMINISTRATOR = 0x8
GUILDS_MAX_AGE_SECONDS = 300  # 0011: refreshed before a server billing write when older
SCOPES = "identify guilds"

router = APIRouter(prefix="/portal")


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    name: str
    guilds: tuple[tuple[str, str], ...]  # (guild id, name) where the user has Manage Server

    @property
    def principal(self) -> Principal:
        return Principal(
            kind="person", user_id=self.user_id, managed_guilds=frozenset(g for g, _ in self.guilds)
        )

    def guild_name(self, guild_id: str) -> str | None:
        return next((name for g, name in self.guilds if g == guild_id), None)


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def demo_available(settings: Settings) -> bool:
    """Demo sign-in exists only in demo mode and only while no Discord application is configured."""
    return bool(settings.demo_mode) and not settings.discord_client_id


def manages(guild: dict[str, Any]) -> bool:
    """Manage Server (0x20) or Administrator (0x8) in the user's permissions there, or ownership."""
    if guild.get("owner") is True:
        return True
    raw = guild.get("permissions", guild.get("permissions_new", 0))
    try:
        bits = int(str(raw))
    except ValueError:
        return False
    return bool(bits & MANAGE_GUILD or bits & ADMINISTRATOR)


def managed_guilds(guilds: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(str(g["id"]), str(g.get("name") or g["id"])) for g in guilds if manages(g)]


def current_user(request: Request) -> SignedIn | None:
    data = request.session
    user_id = data.get("uid")
    if not user_id:
        return None
    guilds = tuple((str(g[0]), str(g[1])) for g in data.get("guilds", []))
    return SignedIn(user_id=str(user_id), name=str(data.get("uname") or user_id), guilds=guilds)


def sign_in(
    request: Request,
    user_id: str,
    name: str,
    guilds: list[tuple[str, str]],
    access_token: str | None = None,
) -> None:
    request.session.clear()
    request.session.update(
        {
            "uid": user_id,
            "uname": name,
            "guilds": [list(g) for g in guilds],
            "guilds_at": time.time(),
            "csrf": secrets.token_urlsafe(24),
        }
    )
    if access_token:
        request.session["dtok"] = _seal(container_of(request).settings, access_token)
    # Admins see this person's name, not only their id, on the organizations they belong to.
    c = container_of(request)
    c.db.write(lambda session: people.remember(session, user_id, name, c.clock.now()))


def _cipher(settings: Settings) -> Fernet:
    # The session cookie is signed, not encrypted: the Discord token in it is encrypted so a
    # leaked cookie does not also leak a token usable against Discord.
    key = hashlib.sha256(b"chronote-portal-discord-token:" + settings.session_secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _seal(settings: Settings, token: str) -> str:
    return _cipher(settings).encrypt(token.encode()).decode()


def _unseal(settings: Settings, sealed: Any) -> str | None:
    if not isinstance(sealed, str) or not sealed:
        return None
    try:
        return _cipher(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(24)
        request.session["csrf"] = token
    return str(token)


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.session.get("csrf")
    given = submitted or request.headers.get("X-CSRF-Token")
    # Compared as bytes: compare_digest refuses text with characters outside ASCII.
    if not expected or not given or not hmac.compare_digest(_bytes(expected), _bytes(given)):
        raise PermissionDenied(
            "This form has expired or did not come from this site. Reload the page and try again.",
            missing_permission="a valid form token (CSRF) for this session",
        )


def _bytes(value: Any) -> bytes:
    return str(value).encode("utf-8", "replace")


def safe_next(target: str | None) -> str:
    """Only same-site portal paths are followed after sign-in."""
    if not target or text_problem(target) is not None or len(target) > 2000:
        return "/portal"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/portal") or target.startswith("//"):
        return "/portal"
    return target


# ---------------------------------------------------------------------------- Discord OAuth2


def _oauth(request: Request) -> Any:
    """The Discord client for this app's settings (built once per application)."""
    app = request.app
    client = getattr(app.state, "portal_discord", None)
    if client is None:
        settings = container_of(request).settings
        base = settings.discord_api_base.rstrip("/")
        registry = OAuth()
        registry.register(
            name="discord",
            client_id=settings.discord_client_id,
            client_secret=settings.discord_client_secret,
            authorize_url=f"{base}/oauth2/authorize",
            access_token_url=f"{base}/oauth2/token",
            api_base_url=base + "/",
            client_kwargs={"scope": SCOPES, "timeout": 10.0},
        )
        client = registry.create_client("discord")
        app.state.portal_discord = client
    return client


def _callback_url(settings: Settings) -> str:
    return settings.public_base_url.rstrip("/") + "/portal/auth/callback"


@router.get("/login/discord", include_in_schema=False)
async def login_discord(request: Request) -> Response:
    settings = container_of(request).settings
    if not settings.discord_client_id:
        return RedirectResponse("/portal/login?error=discord_not_configured", status_code=303)
    request.session["next"] = safe_next(request.query_params.get("next"))
    response: Response = await _oauth(request).authorize_redirect(request, _callback_url(settings))
    return response


@router.get("/auth/callback", include_in_schema=False)
async def auth_callback(request: Request) -> Response:
    client = _oauth(request)
    next_url = safe_next(request.session.get("next"))
    try:
        token = await client.authorize_access_token(request)
        me = (await client.get("users/@me", token=token)).raise_for_status().json()
        guilds = (await client.get("users/@me/guilds", token=token)).raise_for_status().json()
    except (OAuthError, httpx.HTTPError, ValueError, KeyError) as exc:
        log.warning("portal_discord_sign_in_failed", error=str(exc))
        request.session.pop("next", None)
        return RedirectResponse("/portal/login?error=discord_failed", status_code=303)
    name = str(me.get("global_name") or me.get("username") or me["id"])
    await run_in_threadpool(
        sign_in, request, str(me["id"]), name, managed_guilds(guilds), token.get("access_token")
    )
    return RedirectResponse(next_url, status_code=303)


async def refresh_guilds_if_stale(request: Request) -> None:
    """Before a server billing write: re-read the guild list when it is older than 5 minutes.

    Demo sessions have no Discord token and keep their fixed list. If Discord no longer accepts
    the token, the managed list is emptied (the write is then refused) rather than trusted.
    """
    settings = container_of(request).settings
    token = _unseal(settings, request.session.get("dtok"))
    fetched = float(request.session.get("guilds_at") or 0)
    if not token or time.time() - fetched < GUILDS_MAX_AGE_SECONDS:
        return
    url = settings.discord_api_base.rstrip("/") + "/users/@me/guilds"
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            reply = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            reply.raise_for_status()
            guilds = managed_guilds(reply.json())
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        log.warning("portal_guild_refresh_failed", error=str(exc))
        guilds = []
    request.session["guilds"] = [list(g) for g in guilds]
    request.session["guilds_at"] = time.time()


# ---------------------------------------------------------------------------- demo and logout


def demo_keys() -> list[str]:
    """The demo people, in the order the sign-in page offers them."""
    return [person.key for person in demo_identities().people]


def demo_identity(key: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    person = demo_identities().person(key)
    if person is None:
        return None
    return person.discord_user_id, person.name, [(s.guild_id, s.name) for s in person.manages]
