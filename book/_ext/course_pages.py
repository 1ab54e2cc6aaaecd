"""Sphinx extension of the course's book: what each HTML page loads, and its bibliography's markup.

* MathJax once. Jupyter Book 1 adds every ``*.js`` file under ``book/_static`` to every page
  (``html_js_files``, its way of adding custom scripts), so the vendored
  ``_static/mathjax/tex-chtml.js`` was loaded a second time on every page: eagerly, without the
  configuration that myst-parser gives ``sphinx.ext.mathjax`` (which loads ``mathjax_path``
  itself, deferred, on the pages with mathematics), and on pages without any. The second copy
  failed (``Cannot set property Package ... which has only a getter``). It is taken out of
  ``html_js_files`` here, leaving ``sphinx.ext.mathjax``'s.
* Inline scripts once. Sphinx 7 repeats an inline script that an extension adds after the
  builder has started (its first copy is registered with the file name None, the second with
  ''), so sphinx-thebe's ``const THEBE_JS_URL = ...`` ran twice and raised a SyntaxError on every
  page. Identical scripts are kept once.
* Bibliography entries as list items. docutils 0.21 puts the references in a ``role="list"``
  container but gives each entry the deprecated ARIA role ``doc-biblioentry``: assistive
  technology then sees a list without items (axe-core: aria-required-children, critical).
  Each entry gets ``role="listitem"``.
"""

from __future__ import annotations

import posixpath
import re

_BIBLIOENTRY = re.compile(r'(<div class="citation"[^>]*?) role="doc-biblioentry"')


def _path(entry) -> str:
    """The file name of an ``html_js_files`` entry (a name, or a (name, attributes) pair)."""
    name = entry[0] if isinstance(entry, (tuple, list)) else entry
    return posixpath.normpath(str(name)) if name else ""


def load_mathjax_once(app, config) -> None:
    """Drop ``mathjax_path`` from ``html_js_files``: sphinx.ext.mathjax loads it where needed."""
    mathjax = _path(config.mathjax_path or "")
    if mathjax:
        config.html_js_files = [entry for entry in config.html_js_files if _path(entry) != mathjax]


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return (
        getattr(script, "filename", script) or "",
        getattr(script, "priority", None),
        tuple(sorted((key, str(value)) for key, value in attributes.items())),
    )


def tidy_page(app, pagename, templatename, context, doctree) -> None:
    """Each script once on the page; bibliography entries as items of their list."""
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        seen, unique = set(), []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique
    if isinstance(context.get("body"), str):
        context["body"] = _BIBLIOENTRY.sub(r'\1 role="listitem"', context["body"])


def setup(app):
    app.connect(
        "config-inited", load_mathjax_once, priority=900
    )  # after Sphinx normalises the list
    app.connect(
        "html-page-context", tidy_page, priority=1000
    )  # after the extensions add their scripts
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
