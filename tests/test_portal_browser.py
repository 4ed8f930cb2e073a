"""The portal in a real browser: Chromium (Debian's) through Playwright against uvicorn on
loopback, with a fresh database and demo sign-in. HTMX swaps, forms, errors and the account
switcher are exercised as a person uses them."""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn

from chronote_billing import demo
from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.ledger.verify import verify
from conftest import fresh_database

CHROMIUM = "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("CHRONOTE_REQUIRE_BROWSER") == "1"
SCREENSHOT = Path("/tmp/chronote-portal-personal.png")

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if REQUIRE_BROWSER:
        raise RuntimeError(f"CHRONOTE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@dataclass
class Portal:
    url: str
    container: Container


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def portal() -> Iterator[Portal]:
    db = fresh_database("portal_browser_" + secrets.token_hex(3))
    port = free_port()
    settings = replace(
        Settings(),
        database_url=db.url,
        demo_mode=True,
        discord_client_id="",
        session_secret="browser-" + secrets.token_hex(8),
        public_base_url=f"http://127.0.0.1:{port}",
    )
    container = Container(db=db, settings=settings)
    demo.load(container)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(container), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Portal(f"http://127.0.0.1:{port}", container)
    server.should_exit = True
    thread.join(timeout=10)
    with db.session(readonly=True) as session:
        violations = verify(session, first_only=False)
    db.dispose()
    assert not violations, violations


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def sign_in(page: Page, portal: Portal, who: str) -> None:
    page.goto(portal.url + "/portal")
    expect(page.get_by_role("heading", name="Sign in to Chronote Billing")).to_be_visible()
    page.get_by_role("button", name=f"Sign in as {who} (demo)").click()
    expect(page.get_by_text(f"Signed in as {who}")).to_be_visible()


def create_org(page: Page, name: str) -> None:
    page.get_by_role("link", name="+ Create organization").click()
    page.get_by_label("Organization name").fill(name)
    page.get_by_role("button", name="Create organization").click()
    expect(page.get_by_test_id("billed-to")).to_have_text(f"Billed to: {name}")


def authorize(page: Page, member_id: str, member_name: str, cap: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name="Members").click()
    page.get_by_label("Discord user id").fill(member_id)
    page.get_by_role("button", name="Add member").click()
    # Shown by the name they signed in with; the id is on hover.
    expect(page.get_by_role("cell", name=member_name, exact=True)).to_be_visible()
    expect(page.get_by_title(f"Discord id {member_id}").first).to_be_visible()
    page.get_by_role("link", name="Authorizations").click()
    page.get_by_label("Who may spend").select_option(f"member:{member_id}")
    page.get_by_label("Monthly cap (credits; empty: no cap)").fill(cap)
    page.get_by_role("button", name="Create authorization").click()
    expect(page.get_by_text("Authorization created.")).to_be_visible()
    expect(page.get_by_role("cell", name=member_name, exact=True)).to_be_visible()


def test_admin_creates_org_adds_member_authorizes_and_sees_errors_inline(
    portal: Portal, browser: Browser
) -> None:
    ada_id = demo.DEMO_USERS["ada"][0]
    page = browser.new_page()
    sign_in(page, portal, "Ben")
    expect(page.get_by_test_id("billed-to")).to_have_text("Billed to: you")

    # The switcher: Ben manages Acme Guild (from the guild list), not Study Hall.
    switcher = page.get_by_role("navigation", name="Accounts")
    expect(switcher.get_by_role("link", name="Study Hall")).to_have_count(0)
    switcher.get_by_role("link", name="Acme Guild").click()
    expect(page.get_by_test_id("billed-to")).to_have_text("Billed to: server Acme Guild")
    expect(page.get_by_text("Server Basic").first).to_be_visible()

    create_org(page, "Ben's Lab")
    expect(switcher.get_by_role("link", name=re.compile("Ben's Lab"))).to_be_visible()

    # Bad input: a readable message inside the form, the page stays as it is.
    page.get_by_role("navigation").get_by_role("link", name="Members").click()
    page.get_by_label("Discord user id").fill("not-an-id")
    page.get_by_role("button", name="Add member").click()
    error = page.locator("form .form-error").filter(has_text="must be a Discord id")
    expect(error).to_be_visible()
    expect(page.get_by_label("Discord user id")).to_have_value("not-an-id")

    authorize(page, ada_id, "Ada", "300")
    expect(page.get_by_label("Monthly cap for Ada")).to_have_value("300")

    # Over the limit of what any cap may be: refused inline by the rule, not by the page.
    page.get_by_label("Monthly cap for Ada").fill("99999999999")
    page.get_by_role("button", name="Save cap").click()
    expect(page.locator("form .field-error").filter(has_text="larger than any balance")).to_be_visible()
    page.screenshot(path="/tmp/chronote-portal-authorizations.png", full_page=True)
    page.close()


def test_member_reorders_funding_sources_in_place(portal: Portal, browser: Browser) -> None:
    cy_id = demo.DEMO_USERS["cy"][0]
    admin = browser.new_page()
    sign_in(admin, portal, "Ben")
    for name in ("Ben Studio", "Ben Works"):
        create_org(admin, name)
        authorize(admin, cy_id, "Cy", "120")
    admin.close()

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, portal, "Cy")
    expect(page.get_by_test_id("billed-to")).to_have_text("Billed to: you")
    order = page.get_by_test_id("funding-order")
    # The demo data already authorizes Cy on Acme: it stays first among the authorizations.
    expect(order.locator("li").nth(1)).to_contain_text("Acme authorization")
    expect(order.locator("li").nth(2)).to_contain_text("Ben Studio authorization")
    expect(order.locator("li").nth(3)).to_contain_text("Ben Works authorization")
    expect(order.locator("li").nth(2)).to_contain_text("120 credits/month")

    page.evaluate("window.notReloaded = true")
    page.get_by_role("button", name="Move Ben Studio authorization down").click()
    expect(order.locator("li").nth(2)).to_contain_text("Ben Works authorization")
    expect(order.locator("li").nth(3)).to_contain_text("Ben Studio authorization")
    assert page.evaluate("window.notReloaded") is True  # swapped by HTMX, not a page load
    page.reload()
    expect(page.get_by_test_id("funding-order").locator("li").nth(2)).to_contain_text(
        "Ben Works authorization"
    )

    # Cy is a member, not an admin: the organizations are not theirs to open.
    expect(
        page.get_by_role("navigation", name="Accounts").get_by_role("link", name=re.compile("Ben Studio"))
    ).to_have_count(0)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()
