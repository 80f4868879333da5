"""The interactive docs in a real headless Chromium: offline, Authorize, Try it out."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from live_gateway import serve, stack_env
from mailboxes import Mailbox

from service.config import is_loopback

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a downloaded browser
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (CI installs it)",
)


@pytest.mark.timeout(180)
def test_docs_and_redoc_work_offline_in_chromium(
    stack: dict[str, str], mailbox: Mailbox, tmp_path: Path
) -> None:
    from playwright.sync_api import Request, Route, sync_playwright

    mailbox.append(stack, b"Subject: seen in the browser\r\n\r\nbody\r\n")
    elsewhere: list[str] = []

    def here(url: str) -> bool:
        return url.startswith(("data:", "blob:")) or is_loopback(urlsplit(url).hostname or "")

    def guard(route: Route, request: Request) -> None:
        if here(request.url):
            route.continue_()
        else:
            elsewhere.append(request.url)
            route.abort()

    def note(request: Request) -> None:
        if not here(request.url):
            elsewhere.append(request.url)

    with serve(stack_env(stack), tmp_path / "serve.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=FLAGS, headless=True
        )  # a fresh --user-data-dir
        try:
            page = browser.new_page()
            page.route("**/*", guard)
            page.on("request", note)
            page.goto(url + "/docs")
            page.get_by_role("button", name="Authorize").first.click()
            page.locator("#auth-basic-username").fill(mailbox.address)
            page.locator("#auth-basic-password").fill(mailbox.password)
            page.locator(".auth-container button.authorize").first.click()
            page.locator(".auth-container button.btn-done").first.click()
            op = page.locator("#operations-messages-listMessages")
            op.locator(".opblock-summary").click()
            op.get_by_role("button", name="Try it out").click()
            op.get_by_role("button", name="Execute").click()
            status = op.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip() == "200"
            body = op.locator(".live-responses-table .microlight").first.inner_text()
            assert "seen in the browser" in body

            page.goto(url + "/redoc")
            page.get_by_text("mailgate", exact=False).first.wait_for(timeout=30_000)
            section = page.locator('[data-section-id="operation/listMessages"]').first
            section.wait_for(state="attached", timeout=30_000)  # rendered from the spec
            page.wait_for_load_state("networkidle")
        finally:
            browser.close()
    assert elsewhere == [], f"the docs asked hosts other than this one: {elsewhere}"
    assert not re.search(r"Traceback", (tmp_path / "serve.log").read_text())
