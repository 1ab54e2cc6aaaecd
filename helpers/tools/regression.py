"""Regression runs: the chapters' numbers against references derived from a measured seed spread.

Each chapter records its key numbers (:mod:`helpers.records`); ``tests/references`` holds, per
scale, the checks they must pass (``<chapter>.<scale>.json``) and the spread they come from
(``spread.<scale>.json``): every chapter executed with several seeds on one machine, with each
seed's numbers, their mean, standard deviation, min and max, the date, the library versions
and the machine. A check is traceable to that spread:

* a value ``{"value": v, "abs_tol": t}`` covers mean +- 3 standard deviations of the seeds, in
  every configuration where it applies (and, for a rate over ``images`` images, t >= 1/images);
* a bound ``{"min": m}`` or ``{"max": m}`` lies at or beyond mean -+ 3 standard deviations;
* a ``claim`` is a lower bound on a difference that must stay above zero (e.g. UAP minus random
  fooling rate >= m > 0): where the spread cannot support m > 0, the claim is not checked there;
* a value whose spread is wider than +- 0.25 is not checked at that scale (it could not tell a
  change from noise).

A configuration is one set of data folders: ``local-data`` (real PneumoniaMNIST in
``MEDMNIST_DIR``, photos in ``NATURAL_IMAGES_DIR``) or ``no-local-data`` (every dataset
synthetic); a check's ``when`` picks the ones it applies to.

Commands (``make regress`` runs the first)::

    python -m helpers.tools.regression report [--scale smoke] [--chapters 05 ...] [--results DIR]
    python -m helpers.tools.regression derive --seeds 0 1 2 3 4 [--no-local-data]
    python -m helpers.tools.regression references [--scale smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..config import ENV_CACHE_DIR, ENV_MEDMNIST_DIR, ENV_NATURAL_DIR
from ..records import REFERENCES_DIR, _applies, _check_one, _is_number, load_reference, load_results
from ..scales import SCALES
from .pipeline import ChapterFailed, _environ, _select, run, toc_chapters

SIGMAS = 3  # a check covers mean +- SIGMAS standard deviations of the seeds
MIN_SEEDS = 5  # a spread needs at least this many seeds
MIN_IMAGES = 10  # no check on a rate over fewer images
MAX_TOLERANCE = 0.25  # a value check wider than +- this says nothing: not checked at that scale
LOCAL_DATA = (ENV_MEDMNIST_DIR, ENV_NATURAL_DIR)
VERSIONED = ("tensorflow", "keras", "numpy", "adversarial-robustness-toolbox", "papermill")


# ----------------------------------------------------------------------------- the report


@dataclass
class Row:
    """One line of the regression report."""

    chapter: str
    key: str
    check: str  # e.g. "0.870 ± 0.050", ">= 0.080", "= 800"
    value: str  # this run's value, or "-" when the check does not apply
    status: str  # "ok", "FAIL" or "n/a"
    detail: str = ""
    claim: str = ""  # what a bound on a difference stands for


def describe_check(spec: dict) -> str:
    """A check in a few characters: ``0.87 ± 0.05``, ``>= 0.08``, ``in [0.1, 0.2]``, ``= 800``."""
    if "equals" in spec:
        return f"= {spec['equals']!r}"
    if "value" in spec:
        return f"{spec['value']:.3f} ± {spec.get('abs_tol', 0):.3f}"
    if "min" in spec and "max" in spec:
        return f"in [{spec['min']:.3f}, {spec['max']:.3f}]"
    return f">= {spec['min']:.3f}" if "min" in spec else f"<= {spec['max']:.3f}"


def _specs(reference: dict) -> Iterator[tuple[str, dict]]:
    for key, specs in reference.get("checks", {}).items():
        for spec in specs if isinstance(specs, list) else [specs]:
            yield key, spec


def _shown(value) -> str:
    return f"{value:.4g}" if _is_number(value) else repr(value)


def report_rows(results: dict, reference: dict) -> list[Row]:
    """Every check of ``reference`` against ``results`` (a results file's content)."""
    values = results["values"] if isinstance(results.get("values"), dict) else results
    chapter = reference.get("chapter", "?")
    rows = []
    for key, spec in _specs(reference):
        failure = _check_one(key, spec, values)
        check = (
            describe_check(spec)
            if isinstance(spec, dict) and spec.keys() & {"value", "min", "max", "equals"}
            else "(invalid)"
        )
        applies = (
            isinstance(spec, dict)
            and all(k in values for k in spec.get("when", {}))
            and _applies(spec, values)
        )
        if failure is None and not applies:
            when = ", ".join(f"{k} = {v}" for k, v in spec.get("when", {}).items())
            rows.append(
                Row(chapter, key, check, "-", "n/a", f"only when {when}", spec.get("claim", ""))
            )
            continue
        shown = _shown(values[key]) if key in values else "missing"
        rows.append(
            Row(
                chapter,
                key,
                check,
                shown,
                "ok" if failure is None else "FAIL",
                failure or "",
                spec.get("claim", ""),
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    """The report as a plain-text table, one check per line, then a count."""
    header = Row("chapter", "number", "reference", "this run", "")
    widths = [
        max(len(getattr(r, f)) for r in [header, *rows])
        for f in ("chapter", "key", "check", "value")
    ]
    lines = []
    for row in [header, *rows]:
        cells = [
            getattr(row, f).ljust(w) for f, w in zip(("chapter", "key", "check", "value"), widths)
        ]
        claim = f"  ({row.claim})" if row.claim else ""
        lines.append(("  ".join([*cells, row.status.ljust(4)]) + claim).rstrip())
        if row.status == "FAIL":
            lines.append(" " * (widths[0] + 2) + "-> " + row.detail)
    counts = {status: sum(r.status == status for r in rows) for status in ("ok", "FAIL", "n/a")}
    lines.append(f"{counts['ok']} passed, {counts['FAIL']} failed, {counts['n/a']} not applicable")
    return "\n".join(lines)


def check_results(results_dir: str | Path, chapters: Iterable[str], scale: str) -> list[Row]:
    """Report rows of every chapter's ``<chapter>.results.json`` in ``results_dir``."""
    rows = []
    for chapter in chapters:
        path = Path(results_dir) / f"{chapter}.results.json"
        reference = load_reference(chapter, scale)
        if not path.is_file():
            rows.append(Row(chapter, "(results file)", "present", "missing", "FAIL", f"no {path}"))
            continue
        rows.extend(report_rows(load_results(path), reference))
    return rows


# ----------------------------------------------------------------------------- running chapters


def run_chapters(
    scale: str,
    chapters: Iterable[str] | None,
    work: Path,
    *,
    seed: int | None = None,
    cache: Path | None = None,
) -> dict[str, Path | None]:
    """Execute the chapters into ``work`` (a fresh cache ``work/cache`` unless ``cache``); their
    results files."""
    parameters = None if seed is None else {"SEED": int(seed)}
    with _environ(**{ENV_CACHE_DIR: str(cache or work / "cache")}):
        summary = run(scale, work / "book", chapters=chapters, build=False, parameters=parameters)
    return summary["results"]


# ----------------------------------------------------------------------------- the spread


def spread_path(scale: str, folder: str | Path | None = None) -> Path:
    return Path(folder or REFERENCES_DIR) / f"spread.{scale}.json"


def load_spread(scale: str, folder: str | Path | None = None) -> dict:
    """The spread file of ``scale`` (empty if there is none yet)."""
    path = spread_path(scale, folder)
    return (
        json.loads(path.read_text()) if path.is_file() else {"scale": scale, "configurations": {}}
    )


def summary(values: list) -> dict:
    """mean, sd (n - 1), min, max and n of numbers; the distinct values of anything else."""
    if values and all(_is_number(v) for v in values):
        return {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return {"distinct": sorted({json.dumps(v) for v in values}), "n": len(values)}


def environment_description() -> dict:
    """Date, machine and library versions, for the spread file."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores",
        "versions": versions,
    }


def configuration_name() -> str:
    """``local-data`` when a local data folder is set, else ``no-local-data``."""
    return "local-data" if any(os.environ.get(v) for v in LOCAL_DATA) else "no-local-data"


def derive(
    scale: str,
    seeds: list[int],
    *,
    chapters: Iterable[str] | None = None,
    no_local_data: bool = False,
    folder: str | Path | None = None,
    work: Path | None = None,
) -> dict:
    """Run the chapters once per seed and write their spread into ``spread.<scale>.json``.

    With ``no_local_data`` the local data folders are unset for the run (every dataset synthetic,
    as on a fresh machine). The file is rewritten after each seed, so an interrupted run keeps
    what it measured. The configuration's earlier entry is replaced; with ``chapters``, only those
    chapters' runs are (when the entry has the same seeds), the others are kept.
    """
    if len(set(seeds)) < MIN_SEEDS:
        raise ValueError(f"seeds={seeds}: a spread needs at least {MIN_SEEDS} different seeds.")
    names = list(chapters or toc_chapters())
    unset = {var: None for var in LOCAL_DATA} if no_local_data else {}
    work = Path(work or tempfile.mkdtemp(prefix="medattack-spread-"))
    spread = load_spread(scale, folder)
    with _environ(**unset):
        name = configuration_name()
        earlier = spread["configurations"].get(name, {})
        kept = {
            chapter: runs
            for chapter, runs in earlier.get("runs", {}).items()
            if chapter not in names and earlier.get("seeds") == [int(seed) for seed in seeds]
        }
        entry = {
            **environment_description(),
            "seeds": [],
            "local_data": {v: bool(os.environ.get(v)) for v in LOCAL_DATA},
            "runs": {chapter: [] for chapter in names},
        }
        for seed in seeds:
            results = run_chapters(
                scale, names, work / f"seed{seed}", seed=seed, cache=work / "cache"
            )
            for chapter in names:
                path = results.get(chapter)
                entry["runs"][chapter].append(load_results(path)["values"] if path else {})
            entry["seeds"].append(int(seed))
            if len(entry["seeds"]) == len(seeds):
                entry["runs"].update(kept)  # complete: the chapters not run this time come back
            entry["stats"] = _stats(entry["runs"])
            spread["configurations"][name] = entry
            _write_json(spread_path(scale, folder), spread)
            print(f"=== seed {seed} recorded in {spread_path(scale, folder)} ({name})", flush=True)
    return spread


def _stats(runs: dict[str, list[dict]]) -> dict:
    stats = {}
    for chapter, per_seed in runs.items():
        keys = sorted({k for values in per_seed for k in values})
        stats[chapter] = {
            k: summary([values[k] for values in per_seed if k in values]) for k in keys
        }
    return stats


def _write_json(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
    partial.replace(path)


# --------------------------------------------------------------------------- checks from the spread


def _matching_values(spread: dict, chapter: str, key: str, spec: dict) -> dict[str, list[float]]:
    """Per configuration, the seeds' values of ``key`` where ``spec``'s ``when`` holds."""
    out = {}
    for name, entry in spread.get("configurations", {}).items():
        values = [
            v[key]
            for v in entry.get("runs", {}).get(chapter, [])
            if key in v and all(k in v for k in spec.get("when", {})) and _applies(spec, v)
        ]
        if values:
            out[name] = values
    return out


def required_bounds(
    spread: dict, chapter: str, key: str, spec: dict
) -> tuple[float, float, list[str]]:
    """(lo, hi, problems): the range a check must cover, mean -+ 3 sd in every configuration where
    it applies."""
    problems = []
    per_configuration = _matching_values(spread, chapter, key, spec)
    if not per_configuration:
        return (
            math.nan,
            math.nan,
            [f"{chapter}: {key}: no seed of the spread satisfies this check's condition"],
        )
    lo, hi = math.inf, -math.inf
    for name, values in per_configuration.items():
        if len(values) < MIN_SEEDS:
            problems.append(f"{chapter}: {key}: only {len(values)} seed(s) in configuration {name}")
        if not all(_is_number(v) for v in values):
            problems.append(f"{chapter}: {key}: not a number in configuration {name}")
            continue
        stats = summary(values)
        lo = min(lo, stats["mean"] - SIGMAS * stats["sd"], stats["min"])
        hi = max(hi, stats["mean"] + SIGMAS * stats["sd"], stats["max"])
    return lo, hi, problems


def minimum_tolerance(spec: dict) -> float:
    """One image's worth of a rate over ``images`` images, else 0.001."""
    return 1.0 / spec["images"] if spec.get("images") else 0.001


def trace(spread: dict, chapter: str, key: str, spec: dict) -> list[str]:
    """Why a check is not traceable to the spread (empty: it is)."""
    if "equals" in spec:
        return []
    lo, hi, problems = required_bounds(spread, chapter, key, spec)
    if problems:
        return problems
    slack = 1e-9
    if "images" in spec and spec["images"] < MIN_IMAGES:
        problems.append(
            f"{chapter}: {key}: a rate over {spec['images']} images (< {MIN_IMAGES}) is not checked"
        )
    if "value" in spec:
        tol = spec.get("abs_tol", 0.0)
        if tol < minimum_tolerance(spec) - slack:
            problems.append(
                f"{chapter}: {key}: abs_tol {tol} is below one image's "
                f"worth, {minimum_tolerance(spec):.4g}"
            )
        if spec["value"] - tol > lo + slack or spec["value"] + tol < hi - slack:
            problems.append(
                f"{chapter}: {key}: {describe_check(spec)} does not cover the spread "
                f"[{lo:.4f}, {hi:.4f}]"
            )
        if tol > MAX_TOLERANCE:
            problems.append(
                f"{chapter}: {key}: ± {tol:.3f} is too wide to tell a change from noise: do not "
                "check it at this scale, or raise its budget"
            )
    if "min" in spec and spec["min"] > lo + slack:
        problems.append(
            f"{chapter}: {key}: min {spec['min']} is above the spread's lower end {lo:.4f}"
        )
    if "max" in spec and spec["max"] < hi - slack:
        problems.append(
            f"{chapter}: {key}: max {spec['max']} is below the spread's upper end {hi:.4f}"
        )
    if spec.get("claim") and not spec.get("min", 0) > 0:
        problems.append(
            f"{chapter}: {key}: the claim '{spec['claim']}' needs a margin min > 0 "
            f"(got {spec.get('min')})"
        )
    return problems


def derived_check(spread: dict, chapter: str, key: str, spec: dict) -> tuple[dict, list[str]]:
    """``spec`` with its value/abs_tol, min or max re-derived from the spread; and any problems."""
    if "equals" in spec:
        return spec, []
    lo, hi, problems = required_bounds(spread, chapter, key, spec)
    if problems:
        return spec, problems
    new = dict(spec)
    if "value" in spec or ("min" in spec and "max" in spec):
        value = round((lo + hi) / 2, 3)
        tol = max(value - lo, hi - value, minimum_tolerance(spec))
        new.pop("min", None), new.pop("max", None)
        new.update(value=value, abs_tol=math.ceil(tol * 1000 - 1e-6) / 1000)
    elif "min" in spec:
        new["min"] = math.floor(lo * 1000 + 1e-6) / 1000
    else:
        new["max"] = math.ceil(hi * 1000 - 1e-6) / 1000
    return new, trace(spread, chapter, key, new)


def _reference_files(scale: str, folder: str | Path | None = None) -> Iterator[tuple[Path, dict]]:
    """Every chapter reference of ``scale`` in ``folder`` (default: ``tests/references``): path,
    content."""
    for path in sorted(Path(folder or REFERENCES_DIR).glob(f"*.{scale}.json")):
        if not path.name.startswith("spread."):
            yield path, json.loads(path.read_text())


def rederive_references(scale: str, folder: str | Path | None = None) -> list[str]:
    """Rewrite every reference of ``scale`` from its spread; return the problems (untraceable
    checks)."""
    spread = load_spread(scale, folder)
    problems = []
    for path, reference in _reference_files(scale, folder):
        chapter = reference["chapter"]
        for key, specs in reference["checks"].items():
            listed = specs if isinstance(specs, list) else [specs]
            derived = []
            for spec in listed:
                new, found = derived_check(spread, chapter, key, spec)
                derived.append(new)
                problems += found
            reference["checks"][key] = derived if isinstance(specs, list) else derived[0]
        path.write_text(_reference_json(reference))
    return problems


def _reference_json(reference: dict) -> str:
    """A reference file, one check per line."""
    lines = [
        "{",
        f'  "chapter": {json.dumps(reference["chapter"])},',
        f'  "scale": {json.dumps(reference["scale"])},',
    ]
    if "about" in reference:
        lines.append(f'  "about": {json.dumps(reference["about"])},')
    lines.append('  "checks": {')
    items = list(reference["checks"].items())
    for i, (key, specs) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(specs, list):
            inner = ",\n".join(f"      {json.dumps(s)}" for s in specs)
            lines.append(f"    {json.dumps(key)}: [\n{inner}\n    ]{comma}")
        else:
            lines.append(f"    {json.dumps(key)}: {json.dumps(specs)}{comma}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def untraceable(scale: str, folder: str | Path | None = None) -> list[str]:
    """Every check of ``scale``'s references that the spread does not support."""
    spread = load_spread(scale, folder)
    problems = []
    for _, reference in _reference_files(scale, folder):
        for key, spec in _specs(reference):
            problems += trace(spread, reference["chapter"], key, spec)
    return problems


# ----------------------------------------------------------------------------- command line


# Over 50 lines: mostly argparse's three commands and their options, a few lines each.
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.tools.regression", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="run the chapters and print their numbers against the references"
    )
    report.add_argument(
        "--results", metavar="DIR", help="check the results files in DIR instead of running"
    )
    spread = commands.add_parser(
        "derive", help="run the chapters with several seeds and write the spread file"
    )
    spread.add_argument("--seeds", type=int, nargs="+", default=list(range(MIN_SEEDS)))
    spread.add_argument(
        "--no-local-data", action="store_true", help="unset MEDMNIST_DIR and NATURAL_IMAGES_DIR"
    )
    references = commands.add_parser(
        "references", help="re-derive the reference checks from the spread file"
    )
    for command in (report, spread, references):
        command.add_argument("--scale", default="smoke", choices=SCALES)
    for command in (report, spread):
        command.add_argument(
            "--chapters", nargs="+", metavar="NAME", help="only these (default: all in the toc)"
        )
    args = parser.parse_args(argv)

    if args.command == "references":
        problems = rederive_references(args.scale)
        print(
            "\n".join(problems)
            if problems
            else f"every {args.scale} reference is derived from the spread"
        )
        return 1 if problems else 0
    names = _select(args.chapters, toc_chapters())
    if args.command == "derive":
        derive(args.scale, args.seeds, chapters=names, no_local_data=args.no_local_data)
        return 0
    try:
        for name in names:  # before anything runs: every chapter needs a reference
            load_reference(name, args.scale)
        if args.results:
            rows = check_results(args.results, names, args.scale)
        else:
            with tempfile.TemporaryDirectory(prefix="medattack-regress-") as work:
                run_chapters(args.scale, names, Path(work))
                rows = check_results(Path(work) / "book" / "chapters", names, args.scale)
    except ChapterFailed as failure:
        print(failure.report, file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(
            f"Error: {error}. References exist for: "
            f"{', '.join(sorted({p.name.split('.')[1] for p in REFERENCES_DIR.glob('*.*.json')}))}"
            ".",
            file=sys.stderr,
        )
        return 1
    print(format_table(rows))
    return 1 if any(row.status == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
