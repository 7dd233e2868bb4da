"""The built book in a real browser: every page opened in headless Chromium, as a learner sees it.

Runs after ``bash book/build.sh`` with POLAR_VBLL_BOOK_BUILT=1 (``make test`` does both), like
tests/test_book.py. Per page: no console error and no uncaught page error (offline, requests to
other hosts are not counted; book/_ext/course_theme.py fixes the two the theme used to log);
every plotly figure drew an SVG with its data traces; the math was typeset by MathJax; no table
is wider than its column in a 1280 px window (wide tables sit in ``full-width`` cells); on notebook
pages, the Colab badge links to the notebook's path in the repository. A full-page screenshot of each page goes to
build/screenshots/ (not committed) for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from browser import SCREENSHOTS, browser, serve

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "book" / "_build" / "html"
COLAB = "https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/{}.ipynb"
MATH_SOURCE = re.compile(r'class="math[ "]|\\\(|\\\[|\$\$')  # what MathJax has to typeset

# Requests to other hosts (the Colab badge image) fail offline and are not counted; the book's own
# files must load. Every console error counts, including the theme's (see book/_ext/course_theme.py).
pytestmark = pytest.mark.skipif(
    os.environ.get("POLAR_VBLL_BOOK_BUILT") != "1",
    reason="browser checks of the book run after `bash book/build.sh` with POLAR_VBLL_BOOK_BUILT=1 "
           "(make test does both)",
)


def book_pages() -> list[Path]:
    if not HTML.is_dir():
        return []
    return sorted(path for path in HTML.rglob("*.html") if "_static" not in path.parts
                  and path.name not in ("genindex.html", "search.html")
                  and 'http-equiv="Refresh"' not in path.read_text(encoding="utf-8"))


PAGES = book_pages()


@pytest.fixture(scope="module")
def chromium():
    if not PAGES:
        pytest.fail(f"POLAR_VBLL_BOOK_BUILT=1 but there is no built book at {HTML}")
    with browser() as instance, serve(HTML) as base:
        yield instance, base


@pytest.mark.parametrize("page_path", PAGES, ids=[str(p.relative_to(HTML)) for p in PAGES])
def test_the_page_renders_in_chromium(chromium, page_path):
    instance, base = chromium
    relative = page_path.relative_to(HTML).as_posix()
    page = instance.new_page(viewport={"width": 1280, "height": 900})
    errors = []

    def local(url: str) -> bool:  # offline, only the book's own files can load
        return url.startswith(base) and not url.endswith("/favicon.ico")

    def on_console(message):
        if message.type == "error" and local(message.location.get("url") or base):
            errors.append(f"console: {message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}")
            if local(request.url) else None)
    page.goto(f"{base}/{relative}", wait_until="load")
    source = page_path.read_text(encoding="utf-8")
    try:
        figures = page.locator("div.plotly-graph-div")
        count = figures.count()
        if relative.startswith("notebooks/"):
            assert count > 0, f"{relative}: no plotly figure on a notebook page"
        for index in range(count):
            figure = figures.nth(index)
            figure.scroll_into_view_if_needed()
            figure.locator("svg.main-svg").first.wait_for(state="attached", timeout=30_000)
            traces = figure.locator("g.trace, g.barlayer g.point, g.scatterlayer g.trace").count()
            assert traces > 0, f"{relative}: plotly figure {index} drew an SVG without data traces"
        if MATH_SOURCE.search(source):
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=30_000)
            page.evaluate("() => MathJax.startup.promise")
            typeset = page.locator("mjx-container").count()
            assert typeset > 0, f"{relative}: the page has math but MathJax typeset none of it"
            assert page.locator("mjx-merror").count() == 0, f"{relative}: MathJax reported a TeX error"
        if relative.startswith("notebooks/"):
            stem = Path(relative).stem
            hrefs = page.eval_on_selector_all("a[href*='colab.research.google.com']",
                                              "links => links.map(link => link.href)")
            assert COLAB.format(stem) in hrefs, f"{relative}: no Colab link to {COLAB.format(stem)}: {hrefs}"
        hidden = page.evaluate("""() => [...document.querySelectorAll('table')].map(table => {
            const box = table.closest('.pst-scrollable-table-container') || table.parentElement;
            return [box.scrollWidth - box.clientWidth, table.innerText.slice(0, 40)];
        }).filter(([over]) => over > 2)""")
        assert not hidden, (f"{relative}: a table is wider than its column at 1280 px, its last "
                            f"columns behind a scroll (px over, start): {hidden}")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / (relative.replace("/", "_") + ".png")), full_page=True)
        assert not errors, f"{relative}: " + "; ".join(errors)
    finally:
        page.close()
