"""The portal in a real browser: Chromium (Debian's) through Playwright against uvicorn on
loopback, with a fresh database and demo sign-in. HTMX swaps, forms, errors and the account
switcher are exercised as a person uses them."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn

from chronote_billing.access.service import Principal
from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.ledger.verify import verify
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.usage.schemas import UsageRequest
from chronote_demo import seed as demo
from chronote_stripe_local.server import TEST_SECRET_KEY, start_in_thread
from chronote_stripe_local.testing import StripeLocalHarness
from tests.conftest import fresh_database

CHROMIUM = "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("CHRONOTE_REQUIRE_BROWSER") == "1"
SCREENSHOTS = Path(os.environ.get("CHRONOTE_SCREENSHOT_DIR", "var/screenshots"))
SCREENSHOT = SCREENSHOTS / "portal-personal.png"

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if REQUIRE_BROWSER:
        raise RuntimeError(f"CHRONOTE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

from tests.factories import free_port  # noqa: E402


@dataclass
class Portal:
    url: str
    container: Container
    stripe: StripeLocalHarness


@pytest.fixture(scope="module")
def portal() -> Iterator[Portal]:
    db = fresh_database("portal_browser_" + secrets.token_hex(3))
    port = free_port()
    # A Stripe stand-in of this module's own, which delivers no webhooks: what the portal shows
    # after a checkout comes from the return page alone (decision 0040).
    stand_in = start_in_thread(port=0, webhook_secret="whsec_browser")
    harness = StripeLocalHarness(stand_in)
    harness.send_webhooks_to(None)
    settings = replace(
        Settings(),
        database_url=db.url,
        demo_mode=True,
        discord_client_id="",
        session_secret="browser-" + secrets.token_hex(8),
        public_base_url=f"http://127.0.0.1:{port}",
        stripe_api_base=stand_in.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret="whsec_browser",
    )
    container = Container(db=db, settings=settings)
    demo.load(container)
    sync_catalog(container.billing.client)
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
    yield Portal(f"http://127.0.0.1:{port}", container, harness)
    server.should_exit = True
    thread.join(timeout=10)
    stand_in.stop()
    with db.session(readonly=True) as session:
        violations = verify(session, first_only=False)
    db.dispose()
    assert not violations, violations


@pytest.fixture(scope="module", autouse=True)
def _screenshot_folder() -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)


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
    page.screenshot(path=str(SCREENSHOTS / "portal-authorizations.png"), full_page=True)
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


def test_back_from_checkout_the_page_says_payment_received_without_a_reload(
    portal: Portal, browser: Browser
) -> None:
    """No webhook reaches the portal here: the return page confirms the session with Stripe."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, portal, "Ada")
    expect(page.get_by_test_id("plan-name")).to_have_text("Personal Free")
    page.get_by_role("button", name="Choose Personal Pro").click()
    page.wait_for_url(portal.stripe.url + "/**")
    page.locator("#pay").click()
    page.wait_for_url(re.compile(r".*/portal/personal/billing\?checkout=cs_.*"))
    expect(page.get_by_test_id("checkout-status")).to_have_text(
        "Payment received: Personal Pro is now the plan of Ada."
    )
    expect(page.get_by_test_id("plan-name")).to_have_text("Personal Pro")

    # Pending first, then received, swapped in place while the page stays: Study Hall's checkout
    # is opened but paid only after the person is back on the page.
    study = demo.DEMO_SERVERS["study"][0]
    page.goto(f"{portal.url}/portal/server/{study}/billing")
    page.get_by_role("button", name="Choose Server Basic").click()
    page.wait_for_url(portal.stripe.url + "/**")
    checkout_url = page.url
    session_id = re.search(r"(cs_[A-Za-z0-9_]+)", checkout_url)
    assert session_id
    page.goto(f"{portal.url}/portal/server/{study}/billing?checkout={session_id.group(1)}")
    status = page.get_by_test_id("checkout-status")
    expect(status).to_contain_text("Payment pending")
    expect(page.get_by_test_id("plan-name")).to_have_text("Server Free")
    page.evaluate("window.notReloaded = true")
    assert portal.stripe.pay_checkout(checkout_url).status_code == 303
    expect(status).to_contain_text("Payment received: Server Basic", timeout=15_000)
    expect(page.get_by_test_id("plan-name")).to_have_text("Server Basic")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(SCREENSHOTS / "checkout-return.png"), full_page=True)
    page.close()


def test_a_cap_below_this_months_use_is_allowed_with_a_warning_and_shows_over_cap(
    portal: Portal, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, portal, "Ben")
    page.get_by_role("navigation", name="Accounts").get_by_role("link", name=re.compile("^Acme ·")).click()
    page.get_by_role("link", name="Authorizations").click()
    cap = page.get_by_label("Monthly cap for Cy")
    cap.fill("-5")
    cap.locator("xpath=..").get_by_role("button", name="Save cap").click()
    # One message, beside the field, in its label; nothing green next to it.
    error = page.locator(".field-error").filter(has_text="Monthly cap must be 0 or more")
    expect(error).to_be_visible()
    expect(page.get_by_test_id("flash")).to_have_count(0)
    cap.fill("20")  # Cy already used 32 credits this month in the demo
    cap.locator("xpath=..").get_by_role("button", name="Save cap").click()
    flash = page.get_by_test_id("flash")
    expect(flash).to_contain_text("Cap for Cy set to 20 credits, below the 32 credits already used")
    row = page.get_by_role("row").filter(has=page.get_by_label("Monthly cap for Cy"))
    expect(row.get_by_text("over cap", exact=True)).to_be_visible()
    expect(row).to_contain_text("12 over")
    page.screenshot(path=str(SCREENSHOTS / "cap-below-use-admin.png"), full_page=True)

    member = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(member, portal, "Cy")
    acme = member.get_by_test_id("funding-order").locator("li").filter(has_text="Acme authorization")
    expect(acme.get_by_text("over cap", exact=True)).to_be_visible()
    expect(acme).to_contain_text("over the cap, nothing more can be spent from it this month")
    member.screenshot(path=str(SCREENSHOTS / "cap-below-use-member.png"), full_page=True)
    page.close()
    member.close()


def test_the_portal_fits_a_390_pixel_screen_with_the_accounts_in_a_menu(
    portal: Portal, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    sign_in(page, portal, "Ben")
    switcher = page.get_by_role("navigation", name="Accounts")
    expect(switcher).to_be_hidden()
    for path in ("/portal/personal/billing", f"/portal/server/{demo.DEMO_SERVERS['guild'][0]}/billing"):
        page.goto(portal.url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.get_by_role("button", name="Accounts menu").click()
    expect(switcher).to_be_visible()
    switcher.get_by_role("link", name=re.compile("^Acme ·")).click()
    expect(page.get_by_test_id("billed-to")).to_have_text("Billed to: Acme")
    expect(switcher).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for tab in ("Members", "Authorizations", "Usage"):
        with page.expect_navigation():  # measured on the new page, not during the navigation
            page.get_by_role("link", name=tab, exact=True).click()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
    page.screenshot(path=str(SCREENSHOTS / "phone-390.png"), full_page=True)
    page.close()


def test_an_extended_recording_reads_as_one_line_at_its_final_amount(
    portal: Portal, browser: Browser
) -> None:
    c = portal.container
    ada = demo.DEMO_USERS["ada"][0]
    request = UsageRequest(
        context="personal",
        capture_source="desktop",
        user_id=ada,
        meeting_id="browser-m1",
        requested_minutes=30,
    )
    recording = c.db.write(lambda s: c.usage.start_recording(s, request, "browser-rec-start"))
    ada_acts = Principal(kind="person", user_id=ada)
    c.db.write(lambda s: c.usage.extend_recording(s, ada_acts, recording.id, 15, "browser-rec-extend"))

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, portal, "Ada")
    statement = page.locator("#statement")
    expect(statement.get_by_test_id("reserved")).to_contain_text("45 reserved by 1 recording in progress")
    expect(statement.locator("tbody tr")).not_to_contain_text(["-30"])

    c.db.write(
        lambda s: c.usage.finish_recording(
            s, ada_acts, recording.id, {"desktop": 25 * 60}, "browser-rec-finish"
        )
    )
    page.reload()
    usage_rows = statement.locator('tr[data-line-type="usage"]')
    first = usage_rows.first
    expect(first).to_contain_text("Desktop recording")
    expect(first.locator("td").nth(3)).to_have_text("-25")
    # The hold of 30, its extension of 15 and the 20 returned add no line of their own.
    amounts = statement.locator("tbody tr td:nth-child(4)").all_inner_texts()
    assert "-30" not in amounts and "-15" not in amounts and "+20" not in amounts, amounts
    expect(statement.get_by_test_id("reserved")).not_to_contain_text("reserved by")
    page.screenshot(path=str(SCREENSHOTS / "statement-extended-recording.png"), full_page=True)
    page.close()
