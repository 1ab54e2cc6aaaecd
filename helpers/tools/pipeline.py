"""Execute the chapters with papermill and build the Jupyter Book.

Usage::

    python -m helpers.tools.pipeline [--scale smoke] [--chapters 01_transfer_learning ...]
                               [--book-dir book] [--no-build] [--timeout S] [--jobs N] [--rehearsal]

The chapters to run are the ``chapters/<name>`` entries of ``book/_toc.yml``. Each source
notebook ``chapters/<name>.ipynb`` is executed with ``SCALE`` injected into its
``parameters`` cell, from the ``chapters/`` folder, and written with its outputs to
``<book-dir>/chapters/<name>.ipynb``; the key numbers it records (:mod:`helpers.records`)
land next to it as ``<name>.results.json``. The book is then built with
``execute_notebooks: off``, so nothing runs twice. With a ``--book-dir`` other than the
repository's ``book/``, the book's sources are copied there first and the repository's
tree is left untouched.

From Python (e.g. a test)::

    summary = run("smoke", tmp_path / "book", chapters=["01_transfer_learning"])
    summary["notebooks"]["01_transfer_learning"], summary["results"][...], summary["html_index"]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import yaml

from ..scales import SCALES

REPO = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO / "book"
CHAPTERS_DIR = REPO / "chapters"
KERNEL_NAME = "python3"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SPHINX_ERROR = re.compile(r"(^|:\s)(ERROR|CRITICAL|SEVERE):\s")
_PAPERMILL_MARKER = "papermill-error-cell-tag"
PREVIOUS = "previous"  # book/chapters/previous/<scale>/: executed chapters of other scales


class ChapterFailed(RuntimeError):
    """A chapter raised an error; ``str()`` is a report naming the chapter, cell and error."""

    def __init__(self, chapter: str, report: str):
        super().__init__(report)
        self.chapter = chapter
        self.report = report

    def __reduce__(self):  # crosses from a worker process (``jobs`` > 1) intact
        return type(self), (self.chapter, self.report)


class BuildFailed(RuntimeError):
    """``jupyter-book build`` failed or reported errors."""


@dataclass
class ChapterRun:
    """One executed chapter."""

    name: str
    notebook: Path  # the executed notebook
    results: Path | None  # its <name>.results.json, if the chapter recorded anything
    seconds: float


# ----------------------------------------------------------------------------- the toc


def _toc_files(node) -> Iterator[str]:
    """Every ``file:`` entry of a (nested) toc structure, in order."""
    if isinstance(node, dict):
        if isinstance(node.get("file"), str):
            yield node["file"]
        for child in node.values():
            if isinstance(child, (dict, list)):
                yield from _toc_files(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_files(child)


def toc_chapters(toc: str | Path = BOOK_DIR / "_toc.yml") -> list[str]:
    """Names of the chapter notebooks listed in a ``_toc.yml`` (entries ``chapters/<name>``).

    Markdown pages (an explicit ``.md`` suffix, or a ``<name>.md`` file next to the toc) are
    skipped.
    """
    toc = Path(toc)
    names = []
    for entry in _toc_files(yaml.safe_load(toc.read_text())):
        path = Path(entry)
        if path.parent.as_posix() != "chapters" or path.suffix not in ("", ".ipynb"):
            continue
        if path.suffix == "" and (toc.parent / path.with_suffix(".md")).exists():
            continue
        names.append(path.stem)
    return names


def source_notebook(name: str) -> Path:
    """The source notebook of chapter ``name``."""
    return CHAPTERS_DIR / f"{name}.ipynb"


def _select(requested: Iterable[str] | None, toc: list[str]) -> list[str]:
    """Resolve ``--chapters`` arguments (full names, file names or number prefixes like ``01``)."""
    if not requested:
        return list(toc)
    names = []
    for item in requested:
        stem = Path(item).stem
        matches = [n for n in toc if n == stem] or [n for n in toc if n.startswith(stem + "_")]
        if len(matches) != 1:
            raise ValueError(
                f"chapter {item!r} is not (unambiguously) in the book's _toc.yml; "
                f"chapters: {', '.join(toc) or 'none'}"
            )
        names.append(matches[0])
    return names


# ----------------------------------------------------------------------------- book folder


def _ignore_generated(folder: str, names: list[str]) -> set[str]:
    """copytree filter: skip build output and executed chapters."""
    skip = {
        n
        for n in names
        if n in ("_build", ".ipynb_checkpoints", PREVIOUS) or n.endswith(".results.json")
    }
    if Path(folder).resolve() == (BOOK_DIR / "chapters").resolve():
        skip |= {n for n in names if n.endswith(".ipynb")}
    return skip


def prepare_book_dir(book_dir: str | Path = BOOK_DIR) -> Path:
    """Return ``book_dir`` resolved; unless it is the repository's ``book/``, copy the book's
    sources there."""
    book_dir = Path(book_dir).resolve()
    if book_dir != BOOK_DIR.resolve():
        shutil.copytree(BOOK_DIR, book_dir, dirs_exist_ok=True, ignore=_ignore_generated)
    (book_dir / "chapters").mkdir(parents=True, exist_ok=True)
    return book_dir


# ----------------------------------------------------------------------------- execution


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Temporarily set (or, with None, unset) environment variables (the kernel inherits
    ``os.environ``)."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _prepend(var: str, path: Path) -> str:
    """``path`` followed by the current value of the path-list variable ``var``."""
    return os.pathsep.join(p for p in (str(path), os.environ.get(var, "")) if p)


def _kernel_environment(records_dir: Path) -> dict[str, str]:
    """What the chapter kernel needs on top of ``os.environ``."""
    return {
        "COURSE_RECORDS_DIR": str(records_dir),
        "MPLBACKEND": INLINE_BACKEND,  # figures inline even under MPLBACKEND=Agg
        "PYTHONPATH": _prepend("PYTHONPATH", REPO),  # `import helpers` without installing
        # This interpreter's python3 kernelspec first, even if the user registered another one.
        "JUPYTER_PATH": _prepend("JUPYTER_PATH", Path(sys.prefix) / "share" / "jupyter"),
    }


def _failing_cell(notebook: Path) -> tuple[int | None, str] | None:
    """``(execution count, source)`` of the cell that failed (or was still running) in an executed
    notebook."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001 - no readable output notebook
        return None
    cells = [
        c
        for c in nb.cells
        if c.cell_type == "code" and _PAPERMILL_MARKER not in c.metadata.get("tags", [])
    ]
    for test in (
        lambda c: any(o.get("output_type") == "error" for o in c.get("outputs", [])),
        lambda c: c.metadata.get("papermill", {}).get("exception") is True,
        lambda c: c.metadata.get("papermill", {}).get("status") == "running",
    ):
        for cell in cells:
            if test(cell):
                return cell.get("execution_count"), cell.source
    return None


def failure_report(name: str, output: Path, error: BaseException) -> str:
    """A readable report of a failed chapter: its name, the failing cell's source, the error."""
    cell = _failing_cell(output)
    if cell is None and hasattr(error, "source"):
        cell = error.exec_count, error.source
    if hasattr(error, "ename"):
        message = f"{error.ename}: {error.evalue}"
        details = _ANSI.sub("", "\n".join(error.traceback))
    else:
        message, details = f"{type(error).__name__}: {error}", ""
    bar = "-" * 72
    if cell is None:
        parts = [bar, f"Chapter {name} failed outside its cells:", bar, message]
    else:
        count = cell[0] if cell[0] is not None else " "
        parts = [
            bar,
            f"Chapter {name} failed in cell In [{count}]:",
            bar,
            cell[1].rstrip(),
            bar,
            message,
        ]
    if details and details.strip() != message:
        parts += ["", details.rstrip()]
    parts.append(bar)
    if cell is not None and output.exists():
        parts.append(f"Executed notebook (with the traceback): {output}")
    return "\n".join(parts)


#: stderr lines of TensorFlow's runtime logs (absl/oneDNN/CUDA notices), not written by the chapter.
_RUNTIME_LOG = re.compile(
    r"^([IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |WARNING: All log messages before "
    r"absl::InitializeLog)"
)
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def tidy_outputs(notebook: Path) -> int:
    """Remove what a reader of the rendered chapter should not see; return how many outputs changed.

    * TensorFlow's runtime log lines on stderr (the chapter's own warnings stay);
    * progress-bar widgets: papermill does not save their state, so the book would show them at 0 %
      (and their saved state would make the page load widget scripts from the internet);
    * papermill's injected ``# Parameters`` cell (tagged ``remove-cell`` for the book): the reader
      sees the chapter's own parameters cell, and the chapter prints the scale it ran at;

    and it hands the alt text of a cell's figures (stored by :mod:`helpers.plots`) to the book
    (myst-nb's cell-level ``image`` options: one alt text for the figures of a cell).
    """
    nb = nbformat.read(notebook, as_version=4)
    # their state: loads widget scripts from CDNs
    changed = int(nb.metadata.pop("widgets", None) is not None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            changed += 1
        changed += _alt_text_to_cell(cell)
        kept = []
        for output in cell.outputs:
            if output.get("output_type") == "display_data" and _WIDGET_VIEW in output.get(
                "data", {}
            ):
                changed += 1
                continue
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output["text"].splitlines(keepends=True)
                clean = [line for line in lines if not _RUNTIME_LOG.match(line)]
                if len(clean) != len(lines):
                    changed += 1
                    if not "".join(clean).strip():
                        continue
                    output["text"] = "".join(clean)
            kept.append(output)
        cell.outputs = kept
    if changed:
        nbformat.write(nb, notebook)
    return changed


def _alt_text_to_cell(cell) -> int:
    """Set the cell's image alt text (myst-nb cell metadata) from its figure outputs; 1 if set."""
    alts = []
    for output in cell.outputs:
        alt = output.get("metadata", {}).get("alt")
        if "image/png" in output.get("data", {}) and alt and alt not in alts:
            alts.append(alt)
    if not alts:
        return 0
    cell.metadata.setdefault("mystnb", {}).setdefault("image", {})["alt"] = " | ".join(alts)
    return 1


def scale_label(scale: str, parameters: dict | None = None) -> str:
    """``scale``, or ``<scale>-rehearsal`` when the parameters ask for a rehearsal (as
    ``Preset.label``)."""
    return f"{scale}-rehearsal" if (parameters or {}).get("REHEARSAL") else scale


def executed_scale(notebook: Path) -> str | None:
    """The scale label an executed notebook was run with (papermill's metadata), or None."""
    try:
        parameters = nbformat.read(notebook, as_version=4).metadata["papermill"]["parameters"]
        return scale_label(parameters["SCALE"], parameters)
    except Exception:  # noqa: BLE001 - not executed by papermill, unreadable, or no SCALE
        return None


def keep_other_scale(output: Path, results: Path, scale: str) -> Path | None:
    """Move an executed chapter of another scale (and its numbers) to ``previous/<its scale>/``.

    A run at ``scale`` replaces only its own scale's outputs: a day-long ``paper`` run survives a
    later ``smoke`` run. Returns the folder they went to, or None if nothing was moved.
    """
    old_scale = executed_scale(output) if output.exists() else None
    if old_scale is None or old_scale == scale:
        return None
    folder = output.parent / PREVIOUS / str(old_scale)
    folder.mkdir(parents=True, exist_ok=True)
    for path in (output, results):
        if path.exists():
            path.replace(folder / path.name)
    return folder


def execute_chapter(
    source: str | Path,
    output: str | Path,
    scale: str = "smoke",
    *,
    cwd: str | Path | None = None,
    records_dir: str | Path | None = None,
    timeout: float | None = None,
    log_output: bool = True,
    parameters: dict | None = None,
) -> ChapterRun:
    """Execute one notebook with papermill, ``SCALE`` injected; raise :class:`ChapterFailed` on
    error.

    The kernel runs in ``cwd`` (default: the notebook's folder) with ``COURSE_RECORDS_DIR`` =
    ``records_dir`` (default: the output's folder). ``timeout`` limits each cell, in seconds.
    ``parameters`` are injected too (e.g. ``{"SEED": 1}``).
    """
    source, output = Path(source).resolve(), Path(output).resolve()
    name = source.stem
    records = Path(records_dir or output.parent).resolve()
    results = records / f"{name}.results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    records.mkdir(parents=True, exist_ok=True)
    keep_other_scale(output, results, scale_label(scale, parameters))
    for stale in (output, results):  # never report a previous run's notebook or numbers
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    with _environ(**_kernel_environment(records)):
        try:
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters={"SCALE": scale, **(parameters or {})},
                kernel_name=KERNEL_NAME,
                language="python",
                cwd=str(cwd or source.parent),
                progress_bar=False,
                log_output=log_output,
                execution_timeout=timeout,
            )
        except Exception as error:  # noqa: BLE001 - cell errors, timeouts, dead kernels
            raise ChapterFailed(name, failure_report(name, output, error)) from error
    tidy_outputs(output)
    return ChapterRun(
        name, output, results if results.exists() else None, time.perf_counter() - start
    )


def execute_all(
    names: Iterable[str],
    book_dir: str | Path = BOOK_DIR,
    scale: str = "smoke",
    timeout: float | None = None,
    parameters: dict | None = None,
    jobs: int = 1,
) -> list[ChapterRun]:
    """Execute chapters ``names`` into ``<book_dir>/chapters/``, stopping at the first failure.

    ``parameters``: injected into every chapter besides ``SCALE`` (e.g. ``{"SEED": 1}``).
    ``jobs`` > 1: the first chapter runs alone (it trains the models the others load), then the
    others ``jobs`` at a time, each in its own process; a failure stops the chapters not yet
    started.
    """
    names = list(names)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: run at least 1 chapter at a time.")
    for name in names:
        if not source_notebook(name).exists():
            raise FileNotFoundError(f"chapter {name}: no source notebook {source_notebook(name)}")
    tasks = [
        (
            i,
            len(names),
            str(source_notebook(name)),
            str(book_dir),
            scale,
            timeout,
            parameters,
            str(CHAPTERS_DIR),
        )
        for i, name in enumerate(names, 1)
    ]
    if jobs == 1 or len(names) < 3:
        return [_execute_numbered(*task) for task in tasks]
    runs = [_execute_numbered(*tasks[0])]
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [pool.submit(_execute_numbered, *task) for task in tasks[1:]]
        try:
            runs += [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return runs


def _execute_numbered(
    i: int, total: int, source: str, book_dir: str, scale: str, timeout, parameters, cwd: str
) -> ChapterRun:
    """Execute the chapter notebook ``source`` (number ``i`` of ``total``) into
    ``<book_dir>/chapters/``."""
    name = Path(source).stem
    shown = "".join(f", {key}={value!r}" for key, value in (parameters or {}).items())
    print(f"=== [{i}/{total}] {name} (SCALE={scale}{shown})", flush=True)
    run_ = execute_chapter(
        source,
        Path(book_dir) / "chapters" / f"{name}.ipynb",
        scale,
        cwd=cwd,
        timeout=timeout,
        parameters=parameters,
    )
    print(f"=== {name} done in {run_.seconds:.0f} s", flush=True)
    return run_


def _add_unexecuted(book_dir: Path, names: Iterable[str]) -> list[str]:
    """Copy toc chapters that have no executed notebook in the book yet, so the book still
    builds."""
    added = []
    for name in names:
        target, source = book_dir / "chapters" / f"{name}.ipynb", source_notebook(name)
        if not target.exists() and source.exists():
            shutil.copyfile(source, target)
            added.append(name)
    return added


# ----------------------------------------------------------------------------- HTML


def _jupyter_book_command() -> list[str]:
    """The jupyter-book of this interpreter's environment."""
    binary = Path(sys.executable).with_name("jupyter-book")
    if binary.exists():
        return [str(binary)]
    return [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]


def build_html(book_dir: str | Path = BOOK_DIR, *, verbose: bool = True) -> Path:
    """Run ``jupyter-book build <book_dir> --all``; return the HTML index.

    Warnings are shown but tolerated; a non-zero exit or ERROR/CRITICAL messages raise
    :class:`BuildFailed`.
    """
    book_dir = Path(book_dir).resolve()
    command = [*_jupyter_book_command(), "build", str(book_dir), "--all"]
    print("=== " + " ".join(command), flush=True)
    proc = subprocess.Popen(
        command,
        cwd=book_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines = []
    for line in proc.stdout:
        line = _ANSI.sub("", line)
        lines.append(line)
        if verbose or "WARNING" in line or _SPHINX_ERROR.search(line):
            print(line, end="", flush=True)
    status = proc.wait()
    errors = [line.rstrip() for line in lines if _SPHINX_ERROR.search(line)]
    index = book_dir / "_build" / "html" / "index.html"
    if status or errors or not index.exists():
        if errors:
            raise BuildFailed("the book build reported errors:\n" + "\n".join(errors[:20]))
        raise BuildFailed(
            f"jupyter-book build failed (exit status {status}):\n" + "".join(lines[-30:])
        )
    warnings = sum("WARNING" in line for line in lines)
    print(f"=== book built with {warnings} warning(s): {index}", flush=True)
    return index


# ----------------------------------------------------------------------------- all together


def run(
    scale: str = "smoke",
    book_dir: str | Path = BOOK_DIR,
    chapters: Iterable[str] | None = None,
    build: bool = True,
    timeout: float | None = None,
    parameters: dict | None = None,
    jobs: int = 1,
) -> dict:
    """Execute the chapters (default: all in the toc) and build the book.

    ``parameters``: injected into every chapter besides ``SCALE`` (e.g. ``{"SEED": 1}``).
    ``jobs``: chapters executed at a time after the first (see :func:`execute_all`).

    Returns ``{"scale", "book_dir", "notebooks": {name: path}, "results": {name: path or None},
    "seconds": {name: s}, "unexecuted": [names], "html_index": path or None}``.
    """
    book_dir = prepare_book_dir(book_dir)
    toc = toc_chapters(book_dir / "_toc.yml")
    runs = execute_all(_select(chapters, toc), book_dir, scale, timeout, parameters, jobs)
    unexecuted = _add_unexecuted(book_dir, toc) if build else []
    return {
        "scale": scale,
        "book_dir": book_dir,
        "notebooks": {r.name: r.notebook for r in runs},
        "results": {r.name: r.results for r in runs},
        "seconds": {r.name: r.seconds for r in runs},
        "unexecuted": unexecuted,
        "html_index": build_html(book_dir) if build else None,
    }


def _short(path: Path | None) -> str:
    """``path`` relative to the working directory when below it."""
    if path is None:
        return "-"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def print_summary(summary: dict) -> None:
    """A few lines: each chapter, its time and results file, and the HTML index."""
    print(f"\nSummary (SCALE={summary['scale']})")
    for name, notebook in summary["notebooks"].items():
        results = summary["results"][name]
        print(
            f"  {name:<32} {summary['seconds'][name]:7.1f} s   "
            f"results: {_short(results) if results else '(none recorded)'}"
        )
    for name in summary["unexecuted"]:
        print(f"  {name:<32} not executed in this run: shown without outputs")
    if summary["html_index"]:
        print(f"HTML: {summary['html_index']}")


def strip_notebooks(paths: Iterable[str | Path] | None = None) -> list[Path]:
    """Clear outputs and execution counts of notebooks (default: ``chapters/*.ipynb``); return those
    changed."""
    changed = []
    for path in map(Path, paths if paths is not None else sorted(CHAPTERS_DIR.glob("*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        before = json.dumps(nb, sort_keys=True)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            for key in ("execution", "papermill"):
                cell.metadata.pop(key, None)
        nb.metadata.pop("papermill", None)
        if json.dumps(nb, sort_keys=True) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


# Over 50 lines: mostly argparse's options, a few lines each.
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.tools.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument(
        "--chapters",
        nargs="+",
        metavar="NAME",
        help="only these chapters (default: all in the toc)",
    )
    parser.add_argument(
        "--book-dir", default=str(BOOK_DIR), help="book folder (default: the repository's book/)"
    )
    parser.add_argument(
        "--no-build", action="store_true", help="execute the chapters but do not build the HTML"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="limit on each cell, in seconds"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="after the first chapter, execute N chapters at a time (default 1)",
    )
    parser.add_argument(
        "--rehearsal",
        action="store_true",
        help="the scale's code paths with tiny budgets, random weights and synthetic data",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.perf_counter()
    try:
        summary = run(
            args.scale,
            args.book_dir,
            args.chapters,
            build=not args.no_build,
            timeout=args.timeout,
            parameters={"REHEARSAL": True} if args.rehearsal else None,
            jobs=args.jobs,
        )
    except ChapterFailed as failure:
        print(f"\n{failure.report}", file=sys.stderr)
        return 1
    except (BuildFailed, FileNotFoundError, ValueError) as error:
        print(f"\nError: {error}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Total: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
