"""book/_ext/course_pages.py: MathJax and inline scripts once a page, bibliography list items."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

from sphinx.builders.html._assets import _JavaScript

REPO = Path(__file__).resolve().parents[1]


def _extension():
    spec = importlib.util.spec_from_file_location(
        "course_pages", REPO / "book" / "_ext" / "course_pages.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_book_loads_the_extension_and_serves_mathjax_itself():
    import yaml

    config = yaml.safe_load((REPO / "book" / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"course_pages": "_ext"}
    mathjax = config["sphinx"]["config"]["mathjax_path"]
    assert "://" not in mathjax and (REPO / "book" / "_static" / mathjax).is_file()


def test_mathjax_is_left_to_sphinx_ext_mathjax():
    config = SimpleNamespace(
        mathjax_path="mathjax/tex-chtml.js",
        html_js_files=[
            "mathjax/tex-chtml.js",
            ("mathjax/tex-chtml.js", {}),
            "custom.js",
            ("other.js", {"defer": "defer"}),
        ],
    )
    _extension().load_mathjax_once(None, config)
    assert config.html_js_files == ["custom.js", ("other.js", {"defer": "defer"})]


def test_repeated_inline_scripts_are_kept_once_and_bibliography_entries_are_list_items():
    body = (
        '<div role="list" class="citation-list">\n'
        '<div class="citation" id="id1" role="doc-biblioentry">'
        '<span class="label">1</span></div>\n</div>'
    )
    scripts = [
        _JavaScript("_static/doctools.js", priority=200),
        _JavaScript(None, body="const A = 1;"),
        _JavaScript("_static/thebe.js", **{"async": "async"}),
        _JavaScript("", body="const A = 1;"),
        _JavaScript("", body="const B = 2;"),
    ]
    context = {"script_files": scripts, "body": body}
    _extension().tidy_page(None, "intro", "page.html", context, None)
    assert context["script_files"] is scripts  # the builder's list, edited in place
    assert [(s.filename or "", s.attributes.get("body")) for s in scripts] == [
        ("_static/doctools.js", None),
        ("", "const A = 1;"),
        ("_static/thebe.js", None),
        ("", "const B = 2;"),
    ]
    assert (
        'id="id1" role="listitem"' in context["body"] and "doc-biblioentry" not in context["body"]
    )
