"""Screenshots of the portal's main pages for README (`make screenshots`).

Serves the demo data from a throwaway SQLite database on a free loopback port and drives
Debian's Chromium through Playwright, as the browser tests do. Writes PNG files into the folder
given (docs/screenshots by default).
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import uvicorn
from playwright.sync_api import Page, sync_playwright

from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core import migrate
from chronote_billing.core.db import Database
from chronote_demo import seed as demo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign_in(page: Page, base: str, who: str) -> None:
    page.context.clear_cookies()
    page.goto(base + "/portal/login")
    page.get_by_role("button", name=f"Sign in as {who} (demo)").click()
    page.wait_for_url("**/portal/personal/billing")


def shoot(page: Page, base: str, path: str, out: Path, name: str) -> None:
    page.goto(base + path)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out / name), full_page=True)
    print(f"wrote {out / name}")


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        db = Database(f"sqlite:///{tmp}/screenshots.db")
        migrate.upgrade(db.engine)
        settings = replace(
            Settings(),
            database_url=db.url,
            demo_mode=True,
            discord_client_id="",
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
            if time.monotonic() > deadline:
                sys.exit("the portal did not start")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        study, guild = demo.DEMO_SERVERS["study"][0], demo.DEMO_SERVERS["guild"][0]
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=DESKTOP)
                shoot(page, base, "/portal/login", out, "login.png")
                sign_in(page, base, "Ada")
                shoot(page, base, "/portal/personal/billing", out, "personal-billing.png")
                shoot(page, base, f"/portal/server/{study}/billing", out, "server-billing.png")
                sign_in(page, base, "Ben")
                org = page.get_by_role("navigation", name="Accounts").get_by_role("link", name="Acme ·")
                org_path = "/" + org.get_attribute("href").lstrip("/")  # type: ignore[union-attr]
                shoot(page, base, org_path, out, "org-billing.png")
                shoot(page, base, org_path + "/authorizations", out, "org-authorizations.png")
                shoot(page, base, org_path + "/usage", out, "org-usage.png")
                shoot(page, base, f"/portal/server/{guild}/billing", out, "server-billing-org.png")
                phone = browser.new_page(viewport=PHONE)
                sign_in(phone, base, "Cy")
                shoot(phone, base, "/portal/personal/billing", out, "personal-billing-phone.png")
                browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            db.dispose()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
