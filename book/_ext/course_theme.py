"""Two fixes to the book theme's defaults, so that a page's browser console stays clean.

* pydata-sphinx-theme (under sphinx-book-theme) starts every page with ``data-mode=""`` unless
  the template variable ``default_mode`` is set, and then logs "Got invalid theme mode" from its
  own script; we set it to "light" in ``html_context``. Learners can still switch to dark or
  "auto" with the theme button.
* sphinx-thebe adds its inline ``const THEBE_JS_URL = ...`` script once per environment read,
  and jupyter-book triggers two, so every page declared the constant twice ("Identifier
  'THEBE_JS_URL' has already been declared"). We keep the first copy of each script.

Loaded through ``sphinx.local_extensions`` in ``book/_config.yml``; tests/test_book_browser.py
checks that no page logs a console error.
"""

from __future__ import annotations

DEFAULT_MODE = "light"


def _default_mode(app, config) -> None:
    config.html_context = {"default_mode": DEFAULT_MODE, **(config.html_context or {})}


def _drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        # the same inline script arrives with filename None (page context) and "" (add_js_file)
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("config-inited", _default_mode)
    # late (default priority is 500): other extensions add their page scripts in this event too
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
