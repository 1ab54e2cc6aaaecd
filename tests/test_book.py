"""Every chapter executed at the smoke scale, its recorded numbers, and the rendered book.

The chapters run once per session, in the ``built_book`` fixture (tests/conftest.py), which
test_browser.py shares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers import config
from helpers.records import load_reference
from helpers.tools.pipeline import toc_chapters
from helpers.tools.regression import format_table, report_rows

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "01_transfer_learning"
CHAPTERS = toc_chapters()
pytestmark = [pytest.mark.slow, pytest.mark.book]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_numbers_match_the_reference(built_book, chapter):
    """The regression report of ``python -m helpers.tools.regression report`` for this chapter: no
    FAIL."""
    results = json.loads(Path(built_book["results"][chapter]).read_text())
    rows = report_rows(results, load_reference(chapter, "smoke"))
    assert not [row for row in rows if row.status == "FAIL"], "\n" + format_table(rows)


def test_real_pneumonia_model_reaches_80_percent(built_book, real_medmnist_dir):
    if real_medmnist_dir is None:
        pytest.skip("the real PneumoniaMNIST file is not available")
    values = json.loads(Path(built_book["results"][CHAPTER]).read_text())["values"]
    assert values["pneumonia/data"] == "real"
    assert values["pneumonia/small_cnn/test_accuracy"] >= 0.80


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_executed_chapters_have_no_errors_and_show_figures(built_book, chapter):
    notebook = nbformat.read(built_book["notebooks"][chapter], as_version=4)
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    page = (
        Path(built_book["book_dir"]) / "_build" / "html" / "chapters" / f"{chapter}.html"
    ).read_text()
    figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]+\.png"[^>]*>', page)
    assert len(figures) >= 3
    alts = [re.search(r'alt="([^"]*)"', tag) for tag in figures]
    assert all(alt and alt.group(1).strip() and "_images/" not in alt.group(1) for alt in alts), (
        figures[:2]
    )
    assert "Summary" in page and "Exercises" in page
    # papermill's injected cell is hidden: one parameters cell
    assert "# Parameters</span>" not in page


def test_chapter_page_shows_table_figures_and_data_kind(built_book):
    page = Path(built_book["book_dir"]) / "_build" / "html" / "chapters" / f"{CHAPTER}.html"
    html = page.read_text()
    assert "paper, Inception V3 test (%)" in html  # the accuracy table beside the paper's
    figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', html)
    assert len(figures) >= 3, f"only {len(figures)} figures on the chapter page"
    assert "REAL data:" in html and "SYNTHETIC stand-ins" in html
    assert "Summary" in html and "Exercises" in html


def test_every_chapter_has_a_colab_link_pointing_at_itself_at_the_pinned_release():
    for name in toc_chapters():
        notebook = nbformat.read(REPO / "chapters" / f"{name}.ipynb", as_version=4)
        first = notebook.cells[0].source
        assert config.colab_link(name) in first, (
            f"{name}: run `python -m helpers.config` to rewrite its Colab link"
        )
        assert f"/blob/{config.REPO_REF}/chapters/{name}.ipynb" in config.colab_url(name)
        assert "colab-badge.svg" not in first  # a text link: it shows offline too


def test_install_cell_installs_the_pinned_release_and_does_nothing_outside_colab():
    assert (
        config.install_spec().endswith(f"medattack@{config.REPO_REF}")
        and "@main" not in config.install_spec()
    )
    for name in toc_chapters():
        notebook = nbformat.read(REPO / "chapters" / f"{name}.ipynb", as_version=4)
        install = notebook.cells[1].source
        assert install == config.install_cell(), (
            f"{name}: run `python -m helpers.config` to rewrite its install cell"
        )
        assert 'if "google.colab" in sys.modules:' in install and config.install_spec() in install


def test_every_chapter_checks_its_environment_before_anything_else():
    for name in toc_chapters():
        notebook = nbformat.read(REPO / "chapters" / f"{name}.ipynb", as_version=4)
        code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
        assert "REHEARSAL = False" in code[1]  # the parameters cell: SCALE, REHEARSAL, SEED
        setup = code[2]  # install cell, parameters cell, then the setup cell
        order = [
            setup.find(part)
            for part in (
                "get_preset(SCALE, rehearsal=REHEARSAL)",
                "check_environment(preset)",
                "Recorder(",
            )
        ]
        # the preset, checked, before anything runs
        assert -1 not in order and order == sorted(order), name
