"""The book pipeline: toc parsing, book folder copies, chapter execution and failure reports."""

import json

import nbformat
import pytest

from helpers.tools import pipeline
from helpers.tools.pipeline import (
    BOOK_DIR,
    CHAPTERS_DIR,
    ChapterFailed,
    _select,
    execute_chapter,
    prepare_book_dir,
    source_notebook,
    strip_notebooks,
    toc_chapters,
)


def write_notebook(path, *sources, parameters='SCALE = "cpu"'):
    """A small notebook: a `parameters` cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A throwaway chapter"),
        params,
        *(nbformat.v4.new_code_cell(s) for s in sources),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def test_book_toc_lists_chapters_with_source_notebooks():
    names = toc_chapters(BOOK_DIR / "_toc.yml")
    assert names and names[0] == "01_transfer_learning"
    if not any(CHAPTERS_DIR.glob("*.ipynb")):
        pytest.skip("chapters/ has no notebooks yet")
    missing = [n for n in names if not source_notebook(n).exists()]
    assert not missing, f"toc entries without a source notebook in chapters/: {missing}"


def test_toc_parsing_of_nested_parts_and_md_pages(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "notes.md").write_text("# Notes\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n"
        "  - caption: A\n    chapters:\n      - file: chapters/01_a\n      - file: about\n"
        "  - caption: B\n    chapters:\n      - file: chapters/02_b.ipynb\n"
        "        sections:\n          - file: chapters/03_c\n          - file: chapters/notes\n"
        "          - file: chapters/extra.md\n"
    )
    assert toc_chapters(tmp_path / "_toc.yml") == ["01_a", "02_b", "03_c"]


def test_chapter_selection():
    toc = ["01_transfer_learning", "02_uap_nontargeted"]
    assert _select(None, toc) == toc
    assert _select(["02", "chapters/01_transfer_learning.ipynb"], toc) == toc[::-1]
    with pytest.raises(ValueError, match="not .*in the book's _toc.yml"):
        _select(["09_missing"], toc)


def test_book_copy_leaves_out_generated_files(tmp_path, monkeypatch):
    source = tmp_path / "repo_book"
    (source / "chapters").mkdir(parents=True)
    (source / "_build" / "html").mkdir(parents=True)
    (source / "chapters" / "previous" / "cpu").mkdir(parents=True)
    for name in (
        "_config.yml",
        "_toc.yml",
        "intro.md",
        "references.bib",
        "chapters/page.md",
        "chapters/01_x.ipynb",
        "chapters/01_x.results.json",
        "_build/html/index.html",
        "chapters/previous/cpu/01_x.ipynb",
    ):
        (source / name).write_text("x")
    monkeypatch.setattr(pipeline, "BOOK_DIR", source)
    copy = prepare_book_dir(tmp_path / "copy" / "book")
    copied = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    assert copied == ["_config.yml", "_toc.yml", "chapters/page.md", "intro.md", "references.bib"]
    assert prepare_book_dir(source) == source.resolve()  # the book itself: nothing copied


def test_failure_report_shows_the_failing_cell(tmp_path):
    source = write_notebook(
        tmp_path / "07_broken.ipynb",
        "x = 41",
        "def f():\n    return undefined_name + x\nf()",
        "print('never reached')",
    )
    with pytest.raises(ChapterFailed) as caught:
        execute_chapter(
            source, tmp_path / "book" / "chapters" / "07_broken.ipynb", log_output=False
        )
    report = str(caught.value)
    assert caught.value.chapter == "07_broken"
    assert "Chapter 07_broken failed" in report
    assert "return undefined_name + x" in report  # the failing cell's source
    assert "NameError: name 'undefined_name' is not defined" in report
    assert "never reached" not in report


def test_executed_chapter_gets_scale_and_records_next_to_it(tmp_path):
    source = write_notebook(
        tmp_path / "01_tiny.ipynb",
        "from helpers.records import Recorder\nrec = Recorder('01_tiny', SCALE)\n"
        "rec.log('tiny/answer', 42)",
    )
    output = tmp_path / "book" / "chapters" / "01_tiny.ipynb"
    ran = execute_chapter(source, output, "smoke", log_output=False)
    assert ran.notebook == output and output.exists()
    assert ran.results == output.with_name("01_tiny.results.json")
    results = json.loads(ran.results.read_text())
    assert results.pop("peak_memory_mib") > 0 and results.pop("peak_child_memory_mib") >= 0
    assert results == {
        "chapter": "01_tiny",
        "scale": "smoke",
        "values": {"tiny/answer": 42},
        "passes": {},
    }


def test_injected_parameters_are_used_and_their_cell_is_hidden_from_the_book(tmp_path):
    source = write_notebook(
        tmp_path / "01_seeded.ipynb",
        "from helpers.records import Recorder\nRecorder('01_seeded', SCALE).log('seed', SEED)",
        parameters='SCALE = "cpu"\nSEED = 0',
    )
    output = tmp_path / "book" / "chapters" / "01_seeded.ipynb"
    ran = execute_chapter(source, output, "smoke", log_output=False, parameters={"SEED": 3})
    assert json.loads(ran.results.read_text())["values"] == {"seed": 3}
    cells = nbformat.read(output, as_version=4).cells
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata["tags"]
    own = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    # the reader sees this one
    assert len(own) == 1 and "remove-cell" not in own[0].metadata["tags"]


def test_figures_reach_the_book_with_their_alt_text(tmp_path):
    source = write_notebook(
        tmp_path / "01_figure.ipynb",
        "import matplotlib.pyplot as plt\nimport helpers.plots\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\n"
        "ax.set(title='Falling line', xlabel='time (s)', ylabel='height (m)')\n"
        "fig.suptitle('A test figure')\nplt.show()",
    )
    output = tmp_path / "book" / "chapters" / "01_figure.ipynb"
    execute_chapter(source, output, "smoke", log_output=False)
    cell = [c for c in nbformat.read(output, as_version=4).cells if "plt.show()" in c.source][0]
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)
    alt = cell.metadata["mystnb"]["image"]["alt"]
    assert alt == "A test figure. Falling line (x: time (s), y: height (m))"


def test_a_run_at_another_scale_keeps_the_earlier_one(tmp_path):
    source = write_notebook(
        tmp_path / "01_tiny.ipynb",
        "from helpers.records import Recorder\nRecorder('01_tiny', SCALE).log('tiny/scale', SCALE)",
    )
    output = tmp_path / "book" / "chapters" / "01_tiny.ipynb"
    execute_chapter(source, output, "cpu", log_output=False)
    execute_chapter(source, output, "smoke", log_output=False)
    kept = output.parent / "previous" / "cpu"
    assert json.loads((kept / "01_tiny.results.json").read_text())["values"] == {
        "tiny/scale": "cpu"
    }
    assert pipeline.executed_scale(kept / "01_tiny.ipynb") == "cpu"
    assert pipeline.executed_scale(output) == "smoke"
    # the same scale replaces its own run
    execute_chapter(source, output, "smoke", log_output=False)
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "01_tiny.ipynb",
        "01_tiny.results.json",
        "previous",
    ]


def test_runtime_logs_and_progress_widgets_are_left_out_of_the_executed_chapter(tmp_path):
    source = write_notebook(
        tmp_path / "01_noisy.ipynb",
        "import sys\n"
        "sys.stderr.write('I0000 00:00:1795355361.937424   14762 port.cc:153] oneDNN custom "
        "operations are on.\\n')\n"
        "sys.stderr.write('WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "sys.stderr.write('the chapter warns about something\\n')\n"
        "print('a result')",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='work'):\n    pass",
    )
    output = tmp_path / "book" / "chapters" / "01_noisy.ipynb"
    execute_chapter(source, output, "smoke", log_output=False)
    outputs = [
        o
        for cell in nbformat.read(output, as_version=4).cells
        if cell.cell_type == "code"
        for o in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs)
    assert "a result" in text and "the chapter warns about something" in text
    assert "oneDNN" not in text and "absl" not in text
    assert not [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]


def test_strip_notebooks(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", "1 + 1")
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    ]
    nb.cells[2].execution_count = 1
    nbformat.write(nb, path)
    assert strip_notebooks([path]) == [path]
    cell = nbformat.read(path, as_version=4).cells[2]
    assert cell.outputs == [] and cell.execution_count is None
    assert strip_notebooks([path]) == []  # already clean: left untouched


def test_a_rehearsal_keeps_the_real_run_of_its_scale(tmp_path):
    source = write_notebook(
        tmp_path / "01_tiny.ipynb",
        "from helpers.records import Recorder\n"
        "Recorder('01_tiny', SCALE).log('tiny/rehearsal', REHEARSAL)",
        parameters='SCALE = "cpu"\nREHEARSAL = False',
    )
    output = tmp_path / "book" / "chapters" / "01_tiny.ipynb"
    execute_chapter(source, output, "gpu", log_output=False)
    execute_chapter(source, output, "gpu", log_output=False, parameters={"REHEARSAL": True})
    assert pipeline.executed_scale(output) == "gpu-rehearsal"
    assert pipeline.executed_scale(output.parent / "previous" / "gpu" / "01_tiny.ipynb") == "gpu"


def test_chapters_run_in_parallel_after_the_first_and_failures_name_the_chapter(
    tmp_path, monkeypatch
):
    folder = tmp_path / "chapters"
    folder.mkdir()
    names = ["01_a", "02_b", "03_c", "04_d"]
    for name in names:
        code = (
            "raise RuntimeError('broken on purpose')"
            if name == "04_d"
            else f"from helpers.records import Recorder\nRecorder('{name}', SCALE).log('x', 1)"
        )
        write_notebook(folder / f"{name}.ipynb", code)
    monkeypatch.setattr(pipeline, "CHAPTERS_DIR", folder)
    monkeypatch.setattr(pipeline, "source_notebook", lambda name: folder / f"{name}.ipynb")
    runs = pipeline.execute_all(names[:3], tmp_path / "book", "smoke", jobs=2)
    assert [r.name for r in runs] == names[:3] and all(r.results.exists() for r in runs)
    with pytest.raises(ChapterFailed, match="broken on purpose") as failure:
        pipeline.execute_all(names, tmp_path / "book", "smoke", jobs=2)
    assert failure.value.chapter == "04_d"
    with pytest.raises(ValueError, match="jobs=0"):
        pipeline.execute_all(names, tmp_path / "book", "smoke", jobs=0)
