"""The page at ``/`` of ``parsetune serve`` in a real headless browser (Debian's Chromium driven by
playwright): it loads the model's task, parses a sentence into a well-formed ViGGO MR and shows the
time; with ``--api-key`` it shows the 401 as an error until the key is typed.

Skipped when /usr/bin/chromium or playwright is missing (CI installs Chromium: .ci/run)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from serve_helpers import make_tiny_run, serving  # noqa: E402

from parsetune.tasks.viggo_mr import parse_mr  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
FIRST_PARSE_MS = 60_000  # the first request compiles the decode steps (the server runs with --no-warmup)
SENTENCE = "Half-Life 2 is a first person shooter from 2004 that I really liked."
MR_SHAPE = re.compile(r"^\s*\w+\(.*\)\s*$", re.S)  # an error message never looks like this


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return make_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("serve-page") / "run")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (launch() gives it a fresh temporary profile)."""
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """``open_page(url)``: a fresh context's page at ``url``; afterwards, asserts the page raised no
    JavaScript error and asked nothing of any other origin (no CDN)."""
    contexts, errors, foreign = [], [], []

    def open_(url: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(FIRST_PARSE_MS)
        page.on("pageerror", lambda err: errors.append(str(err)))
        origin = urlsplit(url).netloc
        page.on("request", lambda req: foreign.append(req.url) if urlsplit(req.url).netloc != origin else None)
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not foreign, f"the page requested other origins: {foreign}"


def parse_on_page(page, sentence: str) -> str:
    page.fill("#text", sentence)
    page.click("#submit")
    output = page.locator("#output")
    sync_api.expect(output).to_have_text(MR_SHAPE, timeout=FIRST_PARSE_MS)
    sync_api.expect(output).not_to_have_class(re.compile(r"\berror\b"))
    sync_api.expect(page.locator("#submit")).to_be_enabled()
    return output.inner_text()


def test_page_parses_a_sentence(tiny_run, open_page):
    with serving(tiny_run) as url:
        page = open_page(url + "/")
        sync_api.expect(page.locator("#meta")).to_contain_text("task viggo")
        sync_api.expect(page.locator("#meta")).to_contain_text(f"model {tiny_run.name}")

        output = parse_on_page(page, SENTENCE)
        mr = parse_mr(output)
        assert mr.valid, f"not a well-formed ViGGO MR: {output!r} ({mr.error})"
        sync_api.expect(page.locator("#timing")).to_have_text(re.compile(r"took \d+\.\d\d s \(server \d+\.\d\d s, \d+ tokens\)"))


def test_page_with_api_key(tiny_run, open_page):
    with serving(tiny_run, "--api-key", "sekret") as url:
        page = open_page(url + "/")
        meta, output = page.locator("#meta"), page.locator("#output")
        sync_api.expect(meta).to_contain_text("could not read the task: missing or wrong API key")

        page.fill("#text", SENTENCE)
        page.click("#submit")
        sync_api.expect(output).to_have_class(re.compile(r"\berror\b"))
        sync_api.expect(output).to_have_text("missing or wrong API key (Authorization: Bearer KEY)")
        sync_api.expect(page.locator("#timing")).to_be_empty()

        page.click("summary")  # the key field is inside the collapsed <details>
        page.fill("#key", "sekret")
        sync_api.expect(meta).to_contain_text("task viggo")  # the page re-reads the task with the key
        text = parse_on_page(page, SENTENCE)
        assert parse_mr(text).valid, text
        sync_api.expect(page.locator("#timing")).to_contain_text("took ")

        page.fill("#key", "wrong")
        page.click("#submit")
        sync_api.expect(output).to_have_class(re.compile(r"\berror\b"))
        sync_api.expect(output).to_contain_text("missing or wrong API key")
