"""Copy executed course notebooks into book/notebooks/ and give each plotly figure a static HTML view.

Usage: python book/prepare_notebooks.py EXECUTED_DIR SOURCE_DIR BOOK_NOTEBOOKS_DIR
       python book/prepare_notebooks.py --page EXECUTED.ipynb BOOK_PAGE.ipynb   (one generated page)

Why: a notebook executed headless (nbmake, nbclient) gets plotly's ``plotly_mimetype`` renderer,
so a figure is stored only as ``application/vnd.plotly.v1+json``, a mime type that myst-nb does not
render. This script replaces that JSON, in the book's copy only, by a ``text/html`` view: a
``plotly-graph-div`` plus a ``Plotly.newPlot`` call, *without* plotly.js. The book loads one shared
copy of plotly.js from ``_static/plotly.min.js`` (see ``html_js_files`` in ``_config.yml``), so the
figures work offline and no page embeds or downloads its own plotly.js. (The JSON cannot stay next to
the HTML: myst-nb parses every mime type of an output and warns about the unknown plotly one, and the
book is built with -W.)

An output that is only an ipywidgets view (e.g. a tqdm progress bar, whose text/plain is a stale
"0%|" line) has nothing the book can show, so it is dropped from the book's copy.

Checks (exit status 1 with a message): every ``SOURCE_DIR/*.ipynb`` has an executed copy in
EXECUTED_DIR, and each copy was executed (its code cells carry execution counts), so the book is
never built from notebooks that silently were not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import plotly.io as pio

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STATIC_VIEWS = {PLOTLY_MIME, "text/html", "text/markdown", "text/latex", "image/png", "image/jpeg", "image/svg+xml"}
DEFAULT_HEIGHT = "500px"


def figure_html(figure: dict, div_id: str) -> str:
    """The div + script of one figure, relying on a page-level ``Plotly`` (include_plotlyjs=False)."""
    return pio.to_html(figure, include_plotlyjs=False, include_mathjax=False, full_html=False,
                       validate=False, div_id=div_id, default_height=DEFAULT_HEIGHT)


def add_static_views(notebook: dict, stem: str) -> int:
    """Replace plotly JSON by a text/html view in every output; return how many figures were found."""
    count = 0
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME not in data:
                continue
            count += 1
            figure = data.pop(PLOTLY_MIME)
            if isinstance(figure, str):
                figure = json.loads(figure)
            data["text/html"] = figure_html(figure, f"plotly-{stem}-{count}")
    return count


def drop_widget_only_outputs(notebook: dict) -> int:
    """Remove outputs that hold a widget view but no static view; return how many were removed."""
    removed = 0
    for cell in notebook.get("cells", []):
        outputs = cell.get("outputs", [])
        kept = [output for output in outputs
                if WIDGET_MIME not in output.get("data", {}) or STATIC_VIEWS & set(output["data"])]
        removed += len(outputs) - len(kept)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def was_executed(notebook: dict) -> bool:
    code_cells = [cell for cell in notebook.get("cells", []) if cell.get("cell_type") == "code"
                  and "".join(cell.get("source", "")).strip()]
    return not code_cells or any(cell.get("execution_count") for cell in code_cells)


def prepare(executed: Path, target: Path) -> str:
    """Write the book's copy of one executed notebook; raise ValueError if it was not executed."""
    notebook = json.loads(executed.read_text(encoding="utf-8"))
    if not was_executed(notebook):
        raise ValueError(f"{executed}: no code cell has an execution count (was it executed?)")
    dropped = drop_widget_only_outputs(notebook)
    figures = add_static_views(notebook, target.stem)
    target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{target.name}: {figures} plotly figure(s), {dropped} widget-only output(s) left out"


def main(executed_dir: Path, source_dir: Path, book_dir: Path) -> int:
    sources = sorted(source_dir.glob("*.ipynb"))
    if not sources:
        print(f"prepare_notebooks: no notebooks in {source_dir}", file=sys.stderr)
        return 1
    problems = []
    for source in sources:
        executed = executed_dir / source.name
        if not executed.is_file():
            problems.append(f"{source.name}: no executed copy in {executed_dir}")
            continue
        try:
            print(f"prepare_notebooks: {prepare(executed, book_dir / source.name)}")
        except ValueError as error:
            problems.append(str(error))
    for problem in problems:
        print(f"prepare_notebooks: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--page":
        print(f"prepare_notebooks: {prepare(Path(sys.argv[2]), Path(sys.argv[3]))}")
        sys.exit(0)
    if len(sys.argv) != 4:
        print(__doc__.splitlines()[2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*(Path(argument) for argument in sys.argv[1:])))
