"""Portal sign-in: the Discord OAuth2 flow against a local stand-in for Discord's endpoints,
managed servers from permission bits, demo sign-in only in demo mode, CSRF and logout."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from tests.conftest import snowflake

CLIENT_ID = "123456789012345678"
CLIENT_SECRET = "discord-test-secret"


class FakeDiscord:
    """Discord's OAuth2 authorize and token endpoints and /users/@me(/guilds), on loopback.

    ``expect`` names who the next authorization signs in as; the token endpoint checks the
    client credentials and the code, and the API endpoints check the bearer token.
    """

    def __init__(self) -> None:
        self.next_identity: dict[str, Any] | None = None
        self.codes: dict[str, tuple[dict[str, Any], str]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _identity(self) -> dict[str, Any] | None:
                auth = self.headers.get("Authorization", "")
                return fake.tokens.get(auth.removeprefix("Bearer ").strip())

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append(("GET", url.path))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/oauth2/authorize":
                    ok = (
                        query.get("client_id") == CLIENT_ID
                        and query.get("response_type") == "code"
                        and query.get("scope") == "identify guilds"
                        and query.get("state")
                        and fake.next_identity is not None
                    )
                    if not ok:
                        self._json(400, {"error": "invalid_request"})
                        return
                    code = secrets.token_urlsafe(12)
                    assert fake.next_identity is not None
                    fake.codes[code] = (fake.next_identity, query["redirect_uri"])
                    target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                identity = self._identity()
                if identity is None:
                    self._json(401, {"message": "401: Unauthorized", "code": 0})
                elif url.path == "/api/users/@me":
                    self._json(200, identity["user"])
                elif url.path == "/api/users/@me/guilds":
                    self._json(200, identity["guilds"])
                else:
                    self._json(404, {"message": "Unknown"})

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append(("POST", url.path))
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if url.path != "/api/oauth2/token":
                    self._json(404, {"message": "Unknown"})
                    return
                basic = httpx.BasicAuth(CLIENT_ID, CLIENT_SECRET)
                expected = next(basic.auth_flow(httpx.Request("POST", "http://x"))).headers["Authorization"]
                sent_by_post = (
                    form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
                )
                if self.headers.get("Authorization") != expected and not sent_by_post:
                    self._json(401, {"error": "invalid_client"})
                    return
                entry = fake.codes.pop(form.get("code", ""), None)
                if (
                    form.get("grant_type") != "authorization_code"
                    or entry is None
                    or entry[1] != form.get("redirect_uri")
                ):
                    self._json(400, {"error": "invalid_grant"})
                    return
                token = "tok_" + secrets.token_urlsafe(12)
                fake.tokens[token] = entry[0]
                self._json(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": 604800,
                        "refresh_token": "ref_" + secrets.token_urlsafe(8),
                        "scope": "identify guilds",
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def expect(self, user_id: str, name: str, guilds: list[dict[str, Any]]) -> None:
        self.next_identity = {
            "user": {"id": user_id, "username": name.lower(), "global_name": name, "discriminator": "0"},
            "guilds": guilds,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def guild(guild_id: str, name: str, permissions: int, owner: bool = False) -> dict[str, Any]:
    return {"id": guild_id, "name": name, "icon": None, "owner": owner, "permissions": str(permissions)}


@pytest.fixture(scope="module")
def discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord()
    yield fake
    fake.close()


def oauth_settings(discord: FakeDiscord, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "discord_client_id": CLIENT_ID,
        "discord_client_secret": CLIENT_SECRET,
        "discord_api_base": discord.base,
        "session_secret": "portal-test-" + secrets.token_hex(8),
        "demo_mode": False,
    }
    return replace(Settings(), **(values | changes))


def make_client(db: Database, settings: Settings, clock: ManualClock | None = None) -> TestClient:
    container = Container(db=db, clock=clock or ManualClock(), settings=settings)
    return TestClient(create_app(container), follow_redirects=False)


def discord_sign_in(
    client: TestClient,
    discord: FakeDiscord,
    user_id: str,
    name: str,
    guilds: list[dict[str, Any]] | None = None,
    next_path: str = "",
) -> httpx.Response:
    """Walk the real redirect flow: portal → Discord authorize → portal callback."""
    discord.expect(user_id, name, guilds or [])
    start = client.get("/portal/login/discord" + (f"?next={next_path}" if next_path else ""))
    assert start.status_code == 302, start.text
    authorize = httpx.get(start.headers["location"], follow_redirects=False)
    assert authorize.status_code == 302, authorize.text
    back = urlsplit(authorize.headers["location"])
    return client.get(f"{back.path}?{back.query}")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


# ---------------------------------------------------------------------------- tests


def test_discord_sign_in_walks_the_redirect_flow_and_keeps_managed_servers(
    db: Database, discord: FakeDiscord
) -> None:
    client = make_client(db, oauth_settings(discord))
    user, managed, admin, owned, plain = snowflake(), snowflake(), snowflake(), snowflake(), snowflake()
    start = client.get("/portal/login/discord")
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["scope"] == ["identify guilds"] and query["state"][0]
    assert query["redirect_uri"] == ["http://127.0.0.1:8000/portal/auth/callback"]

    done = discord_sign_in(
        client,
        discord,
        user,
        "Dana",
        [
            guild(managed, "Managed Hall", 0x20),
            guild(admin, "Admin Hall", 0x8),
            guild(owned, "Owned Hall", 0, owner=True),
            guild(plain, "Plain Hall", 0x400 | 0x800),  # view channels, send messages
        ],
    )
    assert done.status_code == 303 and done.headers["location"] == "/portal"
    page = client.get("/portal/personal/billing")
    assert page.status_code == 200
    assert "Signed in as <strong>Dana</strong>" in page.text
    assert "Billed to: you" in page.text
    for name in ("Managed Hall", "Admin Hall", "Owned Hall"):
        assert name in page.text
    assert "Plain Hall" not in page.text
    assert ("POST", "/api/oauth2/token") in discord.requests
    assert ("GET", "/api/users/@me/guilds") in discord.requests
    # The session cookie is signed, not encrypted: the Discord token must not be readable in it.
    cookie = "".join(c.value for c in client.cookies.jar)
    decoded = base64.b64decode(cookie.split(".")[0] + "==").decode(errors="replace")
    assert '"uid"' in decoded and user in decoded
    assert not any(tok in decoded or tok in cookie for tok in discord.tokens)

    # Only managed servers open; the other one is refused naming the permission.
    assert client.get(f"/portal/server/{managed}/billing").status_code == 200
    denied = client.get(f"/portal/server/{plain}/billing")
    assert denied.status_code == 403
    assert "Manage Server on this Discord server" in denied.text


def test_callback_with_a_forged_state_does_not_sign_in(db: Database, discord: FakeDiscord) -> None:
    client = make_client(db, oauth_settings(discord))
    discord.expect(snowflake(), "Eve", [])
    start = client.get("/portal/login/discord")
    authorize = httpx.get(start.headers["location"], follow_redirects=False)
    back = urlsplit(authorize.headers["location"])
    params = {k: v[0] for k, v in parse_qs(back.query).items()}
    forged = client.get(back.path + "?" + urlencode({"code": params["code"], "state": "not-the-state"}))
    assert forged.status_code == 303 and "error=discord_failed" in forged.headers["location"]
    assert client.get("/portal/personal/billing").headers["location"].startswith("/portal/login")
    failed = client.get(forged.headers["location"])
    assert "Discord sign-in did not complete" in failed.text


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(db: Database, discord: FakeDiscord) -> None:
    client = make_client(db, oauth_settings(discord))
    guild_id = snowflake()
    asked = client.get(f"/portal/server/{guild_id}/billing")
    assert asked.status_code == 303 and asked.headers["location"].startswith("/portal/login?next=")
    done = discord_sign_in(
        client,
        discord,
        snowflake(),
        "Finn",
        [guild(guild_id, "Finn's", 0x20)],
        f"/portal/server/{guild_id}/billing",
    )
    assert done.headers["location"] == f"/portal/server/{guild_id}/billing"

    other = make_client(db, oauth_settings(discord))
    done = discord_sign_in(other, discord, snowflake(), "Gus", [], "https://evil.example/portal")
    assert done.headers["location"] == "/portal"


def test_demo_sign_in_only_in_demo_mode_without_a_discord_application(
    db: Database, discord: FakeDiscord
) -> None:
    demo = make_client(db, replace(Settings(), demo_mode=True, discord_client_id="", session_secret="s1"))
    login = demo.get("/portal/login")
    assert "Sign in as Ada (demo)" in login.text and "Sign in as Ben (demo)" in login.text
    assert "Sign in with Discord" not in login.text
    signed = demo.post("/portal/login/demo", data={"who": "ben", "csrf_token": csrf_of(login.text)})
    assert signed.status_code == 303
    page = demo.get("/portal/personal/billing")
    assert "Signed in as <strong>Ben</strong>" in page.text and "Acme Guild" in page.text
    assert "Study Hall" not in page.text
    assert demo.get("/portal/server/200000000000000002/billing").status_code == 200
    assert demo.get("/portal/server/200000000000000001/billing").status_code == 403

    # Demo mode with a Discord application configured, and no demo mode: no demo sign-in at all.
    for settings in (
        oauth_settings(discord, demo_mode=True),
        replace(Settings(), demo_mode=False, discord_client_id="", session_secret="s2"),
    ):
        client = make_client(db, settings)
        login = client.get("/portal/login")
        assert "(demo)" not in login.text
        refused = client.post("/portal/login/demo", data={"who": "ada", "csrf_token": "any"})
        assert refused.status_code == 404
        assert client.get("/portal/personal/billing").status_code == 303


def test_posts_without_the_session_csrf_token_are_refused(db: Database, discord: FakeDiscord) -> None:
    client = make_client(db, oauth_settings(discord))
    discord_sign_in(client, discord, snowflake(), "Hal", [])
    page = client.get("/portal/orgs/new")
    token = csrf_of(page.text)
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    for bad in ("", "wrong-token"):
        refused = client.post(
            "/portal/orgs/new", data={"name": "Nope Inc", "nonce": nonce.group(1), "csrf_token": bad}
        )
        assert refused.status_code == 403
        assert "valid form token" in refused.text
    assert "Nope Inc" not in client.get("/portal/personal/billing").text
    logout_refused = client.post("/portal/logout", data={"csrf_token": "wrong"})
    assert logout_refused.status_code == 403
    out = client.post("/portal/logout", data={"csrf_token": token})
    assert out.status_code == 303
    assert client.get("/portal/personal/billing").headers["location"].startswith("/portal/login")
