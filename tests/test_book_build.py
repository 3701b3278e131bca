"""The book builds without warnings and every page renders correctly in a real browser.

1. The book is staged as `make book` stages it (scripts/stage_book.py: a copy in
   _build/test-book/src with execution off and progress bars collapsed), but from the notebooks'
   stored outputs, which nbval has just re-checked (make test runs notebooks/ before tests/); then
   `jupyter-book build` with warnings as errors (-W -n --keep-going) into _build/test-book.
2. Every page of _toc.yml is opened in headless Debian Chromium (driven by playwright, no browser
   download), served from 127.0.0.1. A full-page screenshot of each goes to
   _build/test-book/screenshots/. Asserted per page: no console error or uncaught exception, no
   failed local request, no request to any non-local URL (they are also blocked), equations
   typeset by the vendored MathJax (no TeX errors), every image loaded with a non-zero size, and
   at least as many output images as the chapter notebook stores.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import REPO_ROOT, SETUP_HINT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import stage_book  # noqa: E402  (scripts/stage_book.py, shared with `make book`)

pytestmark = pytest.mark.slow

OUT = REPO_ROOT / "_build" / "test-book"
HTML = OUT / "_build" / "html"
SHOTS = OUT / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
MATHJAX = REPO_ROOT / "book" / "_static" / "mathjax" / "tex-chtml.js"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove-cell"}


def toc_files() -> list[str]:
    """Every document of _toc.yml, root first, as paths without extension (as `make book` reads it)."""
    return stage_book.toc_documents(REPO_ROOT)


def source_of(doc: str) -> Path:
    for suffix in (".md", ".ipynb"):
        if (REPO_ROOT / f"{doc}{suffix}").exists():
            return REPO_ROOT / f"{doc}{suffix}"
    raise AssertionError(f"_toc.yml lists {doc!r} but neither {doc}.md nor {doc}.ipynb exists")


def stored_image_outputs(notebook: Path) -> int:
    """How many image outputs the notebook stores in cells whose output the book shows."""
    nb = json.loads(notebook.read_text())
    count = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or HIDDEN_OUTPUT_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            count += any(mime in output.get("data", {}) for mime in IMAGE_MIMES)
    return count


@pytest.fixture(scope="module")
def built_html() -> Path:
    if not MATHJAX.exists():
        pytest.fail(f"MathJax is not vendored ({MATHJAX} missing). {SETUP_HINT}", pytrace=False)
    for doc in toc_files():
        src = source_of(doc)
        if src.suffix == ".ipynb":
            nb = json.loads(src.read_text())
            if not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"):
                pytest.fail(
                    f"{src.relative_to(REPO_ROOT)} has no stored outputs, so its page would show none. "
                    "Fix: execute it in place and save it with its outputs, e.g. "
                    f"`.venv/bin/jupyter nbconvert --to notebook --execute --inplace {src.relative_to(REPO_ROOT)}`.",
                    pytrace=False,
                )

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    staged = stage_book.stage(OUT / "src")  # stored notebooks, execution off, as `make book` renders
    config = yaml.safe_load((staged / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off", "the staged book must not execute notebooks"

    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jupyter_book), "build", str(staged), "--path-output", str(OUT), "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    (OUT / "build.log").write_text(log)
    assert proc.returncode == 0, f"jupyter-book build failed (exit {proc.returncode}); log in {OUT / 'build.log'}:\n{log[-6000:]}"
    assert (HTML / "index.html").exists(), f"no index.html in {HTML}"
    return HTML


def test_html_loads_nothing_from_the_network(built_html: Path):
    """No page or style sheet refers to a remote script, style sheet, font or image (no CDN)."""
    remote = re.compile(
        r"<(?:script|img|iframe)\b[^>]*\bsrc=[\"']?(?:https?:)?//"
        r"|<link\b(?=[^>]*\brel=[\"']?(?:stylesheet|preload|modulepreload|icon|prefetch))[^>]*\bhref=[\"']?(?:https?:)?//",
        re.I,
    )
    css_remote = re.compile(r"(?:@import|url\()\s*[\"']?(?:https?:)?//", re.I)
    offenders = []
    for page in built_html.rglob("*.html"):
        offenders += [f"{page.relative_to(built_html)}: {m.group(0)[:120]}" for m in remote.finditer(page.read_text())]
    for sheet in built_html.joinpath("_static").rglob("*.css"):
        offenders += [f"{sheet.relative_to(built_html)}: {m.group(0)}" for m in css_remote.finditer(sheet.read_text(errors="replace"))]
    assert not offenders, "the built book references remote resources:\n" + "\n".join(offenders[:20])


def test_every_toc_page_is_built(built_html: Path):
    missing = [doc for doc in toc_files() if not (built_html / f"{doc}.html").exists()]
    assert not missing, f"pages of _toc.yml missing from the build: {missing}"
    assert (built_html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax was not copied into _static"


@pytest.fixture(scope="module")
def server(built_html: Path):
    """Serve the built book on 127.0.0.1 (an ephemeral port), quietly."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser_context(server, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium). {SETUP_HINT}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),  # fresh profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        requests: list[str] = []

        def only_local(route):
            url = route.request.url
            requests.append(url)
            if url.startswith(server + "/") or urlparse(url).scheme in ("data", "blob", "about"):
                route.continue_()
            else:
                route.abort()

        context.route("**/*", only_local)
        context.requests = requests  # every URL any page asked for, in order
        yield context
        context.close()


@pytest.mark.parametrize("doc", toc_files())
def test_page_renders_in_chromium(doc: str, server: str, browser_context):
    src = source_of(doc)
    page = browser_context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console error: {msg.text}"))
    page.on("pageerror", lambda exc: problems.append(f"uncaught exception: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url} ({req.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    first_request = len(browser_context.requests)

    page.goto(f"{server}/{doc}.html", wait_until="load")
    n_math = page.locator(".math").count()  # Sphinx wraps every equation in .math
    if n_math:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("() => MathJax.startup.promise")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{doc.replace('/', '__')}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.wait_for_load_state("networkidle")
    images = page.evaluate(
        "() => Array.from(document.images).map(i => ({src: i.getAttribute('src'), w: i.naturalWidth,"
        " h: i.naturalHeight, output: !!i.closest('.cell_output')}))"
    )
    n_mjx = page.locator("mjx-container").count()
    n_tex_errors = page.locator("mjx-merror").count()
    title = page.locator("main h1").first.inner_text() if page.locator("main h1").count() else ""
    page.close()

    remote = [u for u in browser_context.requests[first_request:] if not u.startswith(server + "/")
              and urlparse(u).scheme not in ("data", "blob", "about")]
    assert not remote, f"{doc}: requests to non-local URLs (blocked): {remote[:10]}"
    assert not problems, f"{doc}: " + "\n".join(problems[:20])
    assert shot.stat().st_size > 10_000, f"{doc}: screenshot {shot} is suspiciously small"
    assert title.strip(), f"{doc}: the page has no <h1> title"
    assert n_mjx >= n_math, f"{doc}: {n_math} equations but only {n_mjx} typeset by MathJax"
    assert n_tex_errors == 0, f"{doc}: MathJax reports {n_tex_errors} TeX errors"
    broken = [i["src"] for i in images if not (i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"{doc}: images that did not load: {broken}"
    if src.suffix == ".ipynb":
        expected = stored_image_outputs(src)
        shown = sum(i["output"] for i in images)
        assert shown >= expected, f"{doc}: the notebook stores {expected} figures, the page shows {shown}"
    if doc == toc_files()[0]:
        assert n_math > 0 and n_mjx > 0, "the intro page has a display equation: MathJax must typeset it"


# The reader's view (issue: the rendered book as a reader sees it). Pages that still fail; remove a page once it
# passes (a strict xfail: a pending page that passes fails, so the list cannot go stale).
LAYOUT_PENDING: set[str] = set()
MIN_SCALE = 0.85
"""An image shown below this fraction of its natural width is squeezed: its text shrinks below the body's size."""
LAYOUT_JS = (REPO_ROOT / "tests" / "book_layout.js").read_text()


def layout_cases():
    pending = pytest.mark.xfail(strict=True, reason="in LAYOUT_PENDING: not fitted to the column yet")
    return [pytest.param(doc, id=doc, marks=[pending] if doc in LAYOUT_PENDING else []) for doc in toc_files()]


@pytest.mark.parametrize("doc", layout_cases())
def test_page_fits_the_column(doc: str, server: str, browser_context):
    """At 1280 px nothing in the content column is wider than it or cut inside a scroll box (code inputs aside),
    no figure is squeezed below MIN_SCALE of its natural width, no Markdown table is left as raw pipes and no
    display equation overflows (tests/book_layout.js)."""
    page = browser_context.new_page()
    page.goto(f"{server}/{doc}.html", wait_until="load")
    if page.locator(".math").count():
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("() => MathJax.startup.promise")
    found = page.evaluate(LAYOUT_JS, MIN_SCALE)
    page.close()
    problems = [f"{kind}: {what}" for kind in ("wide", "scaled", "pipes", "math") for what in found[kind]]
    assert not problems, (f"{doc} (column {found['column']} px): {len(problems)} layout problems:\n"
                          + "\n".join(p.encode("utf-8", "replace").decode()[:200] for p in problems[:25]))
