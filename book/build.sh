#!/usr/bin/env bash
# Build the course's Jupyter Book (1.x) into book/_build/html, offline and strictly.
#
#   bash book/build.sh build/notebooks   # CI (make test): EXECUTED_DIR holds executed copies of every
#                                        # notebooks/*.ipynb; they are NOT executed again.
#   bash book/build.sh                   # make book: executes every notebook first (nbmake, the same
#                                        # runner as `make test-notebooks`), honouring POLAR_VBLL_PROFILE.
#
# Both paths then execute the pages generated from the committed runs (book/results.py), run
# book/prepare_notebooks.py (copies into book/notebooks/ and gives each plotly
# figure a static HTML view that uses the one shared _static/plotly.min.js) and build with
# `jupyter-book build -W -n --keep-going` (execute_notebooks: off): any warning fails the build.
#
# Environment: VENV (default <repo>/.venv); NB_TIMEOUT (seconds per notebook when executing, default
# 3600); POLAR_VBLL_PROFILE / POLAR_VBLL_DATA / HF_HUB_OFFLINE (reach the notebooks when executing);
# NOTEBOOKS_DIR (default <repo>/notebooks; only to try the book on other notebooks).
# No PLOTLY_RENDERER is needed: headless runs store figures as plotly JSON, which
# prepare_notebooks.py turns into HTML for the book.
set -euo pipefail

BOOK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BOOK_DIR")"
VENV="${VENV:-$REPO_DIR/.venv}"
PY="$VENV/bin/python"
JB="$VENV/bin/jupyter-book"
for tool in "$PY" "$JB"; do
    [[ -x "$tool" ]] || { echo "build.sh: $tool not found (set VENV or run make setup)" >&2; exit 1; }
done
[[ $# -le 1 ]] || { echo "usage: bash book/build.sh [EXECUTED_DIR]" >&2; exit 2; }

shopt -s nullglob
NOTEBOOKS_DIR="${NOTEBOOKS_DIR:-$REPO_DIR/notebooks}"
sources=("$NOTEBOOKS_DIR"/*.ipynb)
(( ${#sources[@]} )) || { echo "build.sh: no notebooks in $NOTEBOOKS_DIR" >&2; exit 1; }

if [[ $# -eq 1 ]]; then
    EXECUTED_DIR="$(cd "$1" && pwd)" || { echo "build.sh: EXECUTED_DIR $1 does not exist" >&2; exit 1; }
    echo "build.sh: using the executed notebooks in $EXECUTED_DIR (no execution)"
else
    EXECUTED_DIR="$REPO_DIR/build/book-executed"  # not under a _build folder: nbmake skips those
    echo "build.sh: executing ${#sources[@]} notebook(s) into $EXECUTED_DIR" \
         "(POLAR_VBLL_PROFILE=${POLAR_VBLL_PROFILE:-<unset: course>})"
    rm -rf "$EXECUTED_DIR" && mkdir -p "$EXECUTED_DIR"
    cp "${sources[@]}" "$EXECUTED_DIR"/
    (cd "$EXECUTED_DIR" && "$PY" -m pytest -q -p no:cacheprovider --nbmake \
        --nbmake-timeout="${NB_TIMEOUT:-3600}" --overwrite ./*.ipynb)
fi

# One shared plotly.js for every page, taken from the installed plotly package (git-ignored copy).
"$PY" - "$BOOK_DIR/_static/plotly.min.js" <<'PYTHON'
import shutil, sys
from importlib.resources import files
shutil.copyfile(files("plotly") / "package_data" / "plotly.min.js", sys.argv[1])
PYTHON

rm -rf "$BOOK_DIR/notebooks" "$BOOK_DIR/_build/html" "$BOOK_DIR/_build/.doctrees"
mkdir -p "$BOOK_DIR/notebooks"
"$PY" "$BOOK_DIR/prepare_notebooks.py" "$EXECUTED_DIR" "$NOTEBOOKS_DIR" "$BOOK_DIR/notebooks"

# Pages computed from the committed runs and the measured benchmarks (book/results.py, book/gpu.py ->
# book/generated/*.ipynb), executed at every build so they always show what the repository holds.
PAGES_DIR="$REPO_DIR/build/book-pages"
rm -rf "$PAGES_DIR" "$BOOK_DIR/generated" && mkdir -p "$PAGES_DIR" "$BOOK_DIR/generated"
for page in "$BOOK_DIR"/results.py "$BOOK_DIR"/gpu.py; do
    name="$(basename "$page" .py)"
    "$VENV/bin/jupytext" --quiet --to ipynb --output "$PAGES_DIR/$name.ipynb" "$page"
    "$VENV/bin/jupyter" nbconvert --log-level WARN --to notebook --execute --inplace \
        --ExecutePreprocessor.timeout=600 "$PAGES_DIR/$name.ipynb"
    "$PY" "$BOOK_DIR/prepare_notebooks.py" --page "$PAGES_DIR/$name.ipynb" "$BOOK_DIR/generated/$name.ipynb"
done

start=$SECONDS
"$JB" build "$BOOK_DIR" --builder html -W -n --keep-going
pages=$(find "$BOOK_DIR/_build/html" -name '*.html' -not -path '*/_static/*' -not -name 'genindex.html' \
        -not -name 'search.html' -exec grep -L 'http-equiv="Refresh"' {} + | wc -l)  # content pages
echo "build.sh: built $pages pages in $((SECONDS - start)) s: $BOOK_DIR/_build/html/index.html"
