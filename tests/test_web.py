"""The web page end to end in headless Debian Chromium (playwright), server on 127.0.0.1 only.

Needs /usr/bin/chromium and the playwright package (scripts/install_browser.sh installs both); skipped with
that reason otherwise. ``PLVM_UPDATE_SCREENSHOT=1`` also writes docs/web_screenshot.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from plvm.models.tiny_plvm import tiny_plvm
from plvm.server import ServerLimits, create_app
from plvm.server.run import BackgroundServer
from plvm.store import ConceptStore, StoreIdentity

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian chromium is not installed (run scripts/install_browser.sh: apt-get install chromium)",
)


def figure(path: Path, colour, seed: int) -> Path:
    """A simple drawn 'character' so the screenshot shows recognisable thumbnails."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (160, 160), tuple(int(v) for v in rng.integers(200, 250, 3)))
    d = ImageDraw.Draw(img)
    d.ellipse((50, 20, 110, 80), fill=(240, 200, 170), outline=(60, 40, 30), width=2)
    d.rectangle((45, 85, 115, 150), fill=colour)
    d.ellipse((66, 42, 74, 50), fill=(20, 20, 20))
    d.ellipse((86, 42, 94, 50), fill=(20, 20, 20))
    img.save(path)
    return path


@pytest.fixture()
def server(tmp_path):
    plvm = tiny_plvm()
    store = ConceptStore(tmp_path / "store", StoreIdentity.of(plvm))
    app = create_app(plvm, store, limits=ServerLimits(max_new_tokens=12), threshold=0.999, model_name="tiny")
    with BackgroundServer.start(app, host="127.0.0.1") as running:
        running.store = store
        yield running


def test_create_concepts_upload_photo_and_chat_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    bo = figure(tmp_path / "bo.png", (200, 40, 40), 1)
    mo = figure(tmp_path / "mo.png", (40, 90, 200), 2)
    requests: list[str] = []
    console_errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            assert "base tiny" in page.inner_text("[data-testid=info]")
            assert not page.is_visible("[data-testid=token-form]")  # no token needed on this server

            for name, path in (("<bo>", bo), ("mo", mo)):
                page.fill("[data-testid=concept-name]", name)
                page.set_input_files("[data-testid=concept-image]", str(path))
                page.click("[data-testid=add-button]")
                bare = name.strip("<>")
                page.wait_for_selector(f"#concept-list li[data-concept={bare}]", timeout=20_000)
                assert f"added <{bare}>" in page.inner_text("[data-testid=add-status]")
            # a name clash shows the API's message
            page.fill("[data-testid=concept-name]", "bo")
            page.set_input_files("[data-testid=concept-image]", str(mo))
            page.click("[data-testid=add-button]")
            page.wait_for_function("document.querySelector('#add-status').textContent.includes('already exists')")
            page.wait_for_function("document.querySelectorAll('#concept-list img[src^=\"blob:\"]').length == 2")

            page.set_input_files("[data-testid=photo-input]", str(bo))  # the photo to ask about
            page.wait_for_selector("[data-testid=identify-table] tr.present[data-concept=bo]", timeout=20_000)
            rows = page.locator("[data-testid=identify-table] tr[data-concept]")
            assert rows.count() == 2
            scores = page.inner_text("[data-testid=identify-table]")
            assert re.search(r"<bo>\s+1\.000", scores), scores

            page.fill("[data-testid=question]", "Is <bo> in this photo?")
            page.click("[data-testid=send]")
            page.wait_for_selector(".msg.assistant[data-done=true]", timeout=60_000)
            active = page.inner_text("[data-testid=active-concepts]")
            assert "<bo>" in active and "named" in active
            assert page.locator(".msg.assistant").first.get_attribute("data-active") == "bo"

            page.fill("[data-testid=question]", "Is <zz> here?")
            page.click("[data-testid=send]")
            page.wait_for_selector(".msg.error[data-done=true]", timeout=20_000)
            assert "unknown concept <zz>; known concepts: <bo>, <mo>" in page.inner_text(".msg.error")

            page.fill("[data-testid=question]", "Write a caption for this photo.")
            page.click("[data-testid=send]")
            page.wait_for_function(
                "document.querySelectorAll('.msg.assistant[data-done=true]').length == 2", timeout=60_000
            )
            page.fill("[data-testid=question]", "")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    (tmp_path / "web.png").write_bytes(shot)
    if os.environ.get("PLVM_UPDATE_SCREENSHOT"):
        (DOCS / "web_screenshot.png").write_bytes(shot)
    assert server.store.names() == ["bo", "mo"]
    outside = [u for u in requests if not (u.startswith(server.url) or u.startswith(("blob:", "data:")))]
    assert outside == []  # no CDN, nothing off the machine
    assert [e for e in console_errors if "409" not in e and "404" not in e] == []
