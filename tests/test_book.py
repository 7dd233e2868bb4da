"""Checks of the built Jupyter Book (book/_build/html), run by `make test` after `bash book/build.sh`.

They run only when POLAR_VBLL_BOOK_BUILT=1 (the Makefile sets it after building the book). With the
variable set, a missing build is a failure, not a skip.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib.resources import files
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "book" / "_build" / "html"
# NOTEBOOKS_DIR: the same override as book/build.sh takes (for trying the book on other notebooks).
NOTEBOOKS = sorted(Path(os.environ.get("NOTEBOOKS_DIR", REPO / "notebooks")).glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/{}.ipynb"

FIGURE_DIV = re.compile(r'<div id="([^"]+)" class="plotly-graph-div"')
SCRIPT_SRC = re.compile(r'<script[^>]*\bsrc="([^"]+)"')
PLOTLY_CDN = re.compile(r"cdn\.plot\.ly|unpkg\.com/plotly|cdn\.jsdelivr\.net/[^\"']*plotly|cdnjs[^\"']*plotly",
                        re.IGNORECASE)
HIDDEN_INPUT_TOGGLE = re.compile(r'<details class="[^"]*\bhide above-input\b')  # myst-nb's collapsed source
PLOTLY_JS_BANNER = re.compile(r"\*\s*plotly\.js v\d")  # the header comment of plotly.min.js

pytestmark = pytest.mark.skipif(
    os.environ.get("POLAR_VBLL_BOOK_BUILT") != "1",
    reason="book checks run after `bash book/build.sh` with POLAR_VBLL_BOOK_BUILT=1 (make test does both)",
)


@pytest.fixture(scope="module")
def html_dir() -> Path:
    if not (HTML / "index.html").is_file():
        pytest.fail(f"POLAR_VBLL_BOOK_BUILT=1 but there is no built book at {HTML} (run bash book/build.sh)")
    return HTML


def pages(html_dir: Path) -> list[Path]:
    """The built pages (not the one-line redirect index.html that sphinx-external-toc writes)."""
    return [path for path in html_dir.rglob("*.html") if "_static" not in path.parts
            and 'http-equiv="Refresh"' not in read(path)]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def tagged_cells(notebook: Path, tag: str) -> int:
    cells = json.loads(read(notebook))["cells"]
    return sum(tag in cell.get("metadata", {}).get("tags", []) for cell in cells)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks to check (notebooks/*.ipynb)"


@pytest.mark.parametrize("name", ["intro", "references", "glossary", "generated/results", "generated/gpu",
                                  "course_profile", "benchmarks"])
def test_front_and_back_pages_exist(html_dir, name):
    assert (html_dir / f"{name}.html").is_file()


def test_the_results_page_shows_every_committed_run_and_its_figure(html_dir):
    """The results page is computed at build time: every committed run's method is in its tables."""
    from polar_vbll import results

    text = read(html_dir / "generated" / "results.html")
    for run in results.committed_runs():
        assert f"<td><p>{run.label}</p></td>" in text, f"results page lacks {run.label} ({run.run.task})"
    assert FIGURE_DIV.search(text), "the results page shows no plotly figure"
    assert "<table" in text and "| --- |" not in text, "a results table was not rendered"


def test_the_gpu_page_shows_the_measured_walkthrough(html_dir):
    text = read(html_dir / "generated" / "gpu.html")
    assert "<table" in text and "| --- |" not in text
    assert "323 s (1200 steps)" in text  # benchmarks/measured/walkthrough_cpu_course_01.json
    assert "T4 (est.): live fine-tune" in text  # the README's table, polar_vbll.measured.time_table


def test_the_benchmarks_page_shows_every_saved_benchmark_run(html_dir):
    from polar_vbll import measured

    text = read(html_dir / "benchmarks.html")
    assert "| --- |" not in text, "a benchmarks table was not rendered"
    plain = html.unescape(text).replace("\u2019", "'")  # Sphinx's smart quotes
    for row in measured.benchmark_rows(REPO / "benchmarks" / "measured"):
        assert row["target"] in plain, f"benchmarks page lacks {row['file']}"
        for _, value, _ in row["figures"]:
            shown = f"<strong>{value.strip('*')}</strong>" if value.startswith("**") else value
            assert shown in plain, f"benchmarks page lacks {value} of {row['file']}"


def test_references_list_the_course_papers(html_dir):
    text = read(html_dir / "references.html")
    for marker in ("2106.09685", "2506.03133", "2404.11599", "2604.03388", "2406.11675", "2308.13111",
                   "2102.07432", "On calibration of modern neural networks", "deep ensembles",
                   "Dropout as a Bayesian approximation"):
        assert marker.lower() in text.lower(), f"references.html does not mention {marker!r}"


def test_glossary_defines_the_terms(html_dir):
    text = read(html_dir / "glossary.html")
    for term in ("Stable-rank", "Stiefel-manifold", "Retraction", "Landing-field", "ELBO", "Jensen-bound",
                 "ECE", "NLL", "Brier-score"):
        assert f'id="term-{term}"' in text, f"glossary.html has no term {term!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_page_has_rendered_plotly_figures(html_dir, notebook):
    page = html_dir / "notebooks" / f"{notebook.stem}.html"
    assert page.is_file(), f"no book page for {notebook.name}"
    text = read(page)
    figure_ids = FIGURE_DIV.findall(text)
    assert figure_ids, f"{page.name} shows no plotly figure"
    for figure_id in figure_ids:
        assert re.search(r'Plotly\.newPlot\(\s*"' + re.escape(figure_id) + '"', text), \
            f"{page.name}: figure div {figure_id} has no Plotly.newPlot call"
    # The book shows the static figure, not an ipywidgets view that would need a CDN widget manager.
    assert "application/vnd.jupyter.widget-view+json" not in text
    assert "require.min.js" not in text and "html-manager" not in text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_solutions_are_hidden_behind_a_toggle(html_dir, notebook):
    text = read(html_dir / "notebooks" / f"{notebook.stem}.html")
    hidden = tagged_cells(notebook, "hide-input")
    assert text.count("tag_hide-input") == hidden
    if hidden:
        assert len(HIDDEN_INPUT_TOGGLE.findall(text)) >= hidden
        assert "Show code cell source" in text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_colab_launch_button_opens_the_repository_notebook(html_dir, notebook):
    assert COLAB.format(notebook.stem) in read(html_dir / "notebooks" / f"{notebook.stem}.html")


def test_plotly_js_is_one_shared_local_copy(html_dir):
    shared = html_dir / "_static" / "plotly.min.js"
    assert shared.is_file()
    assert shared.read_bytes() == (files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    for page in pages(html_dir):
        text = read(page)
        sources = [src for src in SCRIPT_SRC.findall(text) if "plotly" in src.lower()]
        assert len(sources) == 1, f"{page.relative_to(html_dir)} loads plotly.js {len(sources)} times: {sources}"
        assert re.fullmatch(r"(\.\./)*_static/plotly\.min\.js(\?v=\w+)?", sources[0]), sources[0]
        assert not PLOTLY_JS_BANNER.search(text), f"{page.relative_to(html_dir)} embeds its own plotly.js"
        assert not PLOTLY_CDN.search(text), f"{page.relative_to(html_dir)} references a CDN for plotly"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_the_final_fine_tune_shows_committed_course_results(html_dir, notebook):
    """The book is executed in the smoke profile, but its fine-tunes are the committed course runs
    (polar_vbll.pretrained): no page may show a smoke-profile fine-tune as its result."""
    text = read(html_dir / "notebooks" / f"{notebook.stem}.html")
    assert "loaded the committed course-profile checkpoint" in text, \
        f"{notebook.stem}: the page does not show a committed course fine-tune (run `make checkpoints`?)"
    for shown in ("trained here at the smoke profile", "trained here on "):  # loaded, not live
        assert shown not in text, f"{notebook.stem} shows a fine-tune trained while building"
    assert "POLAR_VBLL_RETRAIN=1" in text, f"{notebook.stem} does not say how to retrain"
