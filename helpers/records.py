"""Key numbers of a chapter run, and checks of them against reference ranges.

A chapter records the numbers its text relies on::

    rec = Recorder("01_transfer_learning", SCALE)
    rec.log("pneumonia/small_cnn/test_accuracy", accuracy)

Every ``log`` rewrites ``<records dir>/<chapter>.results.json``::

    {"chapter": "01_transfer_learning", "scale": "smoke",
     "values": {"pneumonia/small_cnn/test_accuracy": 0.87}}

The records dir is ``$COURSE_RECORDS_DIR`` if set (the book pipeline sets it so
that the file lands next to the executed notebook), else ``<cache>/records/<scale>``, so that
a run at one scale never replaces the numbers of another.

The regression tests compare such a file with ``tests/references/<chapter>.<scale>.json``::

    {"chapter": "01_transfer_learning", "scale": "smoke",
     "checks": {"pneumonia/small_cnn/test_accuracy": {"min": 0.6},
                "pneumonia/real_data": {"equals": true},
                "pneumonia/auc": {"value": 0.9, "abs_tol": 0.05,
                                  "when": {"pneumonia/real_data": true}}}}

A key may also map to a list of such checks, e.g. one for real and one for synthetic data.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import costs
from .cache import cache_dir
from .config import ENV_RECORDS_DIR

Value = float | int | bool | str

#: Where ``load_reference`` looks by default.
REFERENCES_DIR = Path(__file__).resolve().parents[1] / "tests" / "references"

_SPEC_KEYS = {"value", "abs_tol", "min", "max", "equals", "when", "images", "claim"}


def records_dir(scale: str = "") -> Path:
    """Folder the results files are written to (created if needed): see the module docstring."""
    folder = os.environ.get(ENV_RECORDS_DIR)
    if not folder:
        return cache_dir("records", *([scale] if scale else []))
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_plain(value: Any) -> Value:
    """Convert a (numpy) scalar to a JSON-friendly bool, int, float or str; refuse anything else."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()  # TensorFlow eager tensors
    if hasattr(value, "item") and getattr(value, "shape", ()) == ():
        value = value.item()  # numpy scalars and 0-d arrays
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"can only record a number, bool or str, not {type(value).__name__}: {value!r}")


def peak_memory_mib(children: bool = False) -> float | None:
    """Peak resident memory of this process so far (MiB), or None where the system does not say.

    ``children=True``: of the largest child process that has ended (a model trained in a process
    of its own, :mod:`helpers.own_process`); 0 if none has.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    # macOS: bytes; Linux: KiB
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class Recorder:
    """Collect a chapter's key numbers and keep ``<chapter>.results.json`` up to date.

    The file also holds the image passes through each model since the recorder was made
    (:mod:`helpers.costs`) and the kernel's peak memory (and its largest child process's), brought
    up to date after every notebook cell.
    """

    def __init__(self, chapter: str, scale: str):
        self.chapter = str(chapter)
        self.scale = str(scale)
        self.values: dict[str, Value] = {}
        self._path = records_dir(self.scale) / f"{self.chapter}.results.json"
        costs.reset()
        self._write()
        self._follow_cells()

    def _follow_cells(self) -> None:
        """In a notebook: rewrite the file after every cell, so that the pass counts stay
        current."""
        try:
            shell = get_ipython()  # noqa: F821 - defined inside IPython only
        except NameError:
            return
        callbacks = shell.events.callbacks["post_run_cell"]
        for callback in [
            c for c in callbacks if isinstance(getattr(c, "__self__", None), Recorder)
        ]:
            # a chapter re-run: one recorder at a time
            shell.events.unregister("post_run_cell", callback)
        shell.events.register("post_run_cell", self._after_cell)

    def _after_cell(self, result=None) -> None:
        self._write()

    @property
    def path(self) -> Path:
        """The results file."""
        return self._path

    def log(self, key: str, value: Any) -> Value:
        """Record ``value`` under ``key`` (a later call with the same key replaces it); return
        it."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"record keys are non-empty strings, not {key!r}")
        self.values[key] = plain = to_plain(value)
        self._write()
        return plain

    def as_dict(self) -> dict:
        """The content of the results file."""
        return {
            "chapter": self.chapter,
            "scale": self.scale,
            "values": dict(self.values),
            "passes": costs.snapshot(),
            "peak_memory_mib": peak_memory_mib(),
            "peak_child_memory_mib": peak_memory_mib(children=True),
        }

    def _write(self) -> None:
        """Atomically rewrite the results file."""
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self._path)

    def __repr__(self) -> str:
        return (
            f"Recorder({self.chapter!r}, {self.scale!r}: {len(self.values)} values -> {self._path})"
        )


def load_results(path: str | Path) -> dict:
    """Read a ``<chapter>.results.json`` file."""
    return json.loads(Path(path).read_text())


def load_reference(chapter: str, scale: str, folder: str | Path | None = None) -> dict:
    """Read ``<folder>/<chapter>.<scale>.json`` (default folder: ``tests/references``)."""
    path = Path(folder or REFERENCES_DIR) / f"{chapter}.{scale}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no reference for chapter {chapter!r} at scale {scale!r}: {path}")
    reference = json.loads(path.read_text())
    if not isinstance(reference.get("checks"), dict):
        raise ValueError(f"{path}: a reference needs a 'checks' mapping")
    return reference


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _applies(spec: dict, values: dict) -> bool:
    """True when every ``when`` condition of ``spec`` holds in ``values`` (all condition keys
    present)."""
    return all(values[key] == expected for key, expected in spec.get("when", {}).items())


def _check_one(key: str, spec: Any, values: dict) -> str | None:
    """Return a failure message for one check, or None when it passes (or does not apply)."""
    if not isinstance(spec, dict) or not spec.keys() & {"value", "min", "max", "equals"}:
        return f"{key}: invalid check {spec!r} (needs 'value', 'min', 'max' or 'equals')"
    if unknown := spec.keys() - _SPEC_KEYS:
        return f"{key}: invalid check {spec!r} (unknown field(s) {sorted(unknown)})"
    if not isinstance(spec.get("when", {}), dict):
        return f"{key}: invalid check {spec!r} ('when' must map keys to expected values)"
    if missing := [k for k in spec.get("when", {}) if k not in values]:
        return f"{key}: its condition key(s) {missing} are missing from the results"
    if not _applies(spec, values):
        return None
    if key not in values:
        return f"{key}: missing from the results"
    got = values[key]
    if "equals" in spec:
        return None if got == spec["equals"] else f"{key} = {got!r}, expected {spec['equals']!r}"
    if not _is_number(got) or math.isnan(got):
        return f"{key} = {got!r}, expected a number"
    if "value" in spec:
        tol = spec.get("abs_tol", 0.0)
        if not abs(got - spec["value"]) <= tol:
            return f"{key} = {got!r}, expected {spec['value']!r} ± {tol!r}"
    if "min" in spec and not got >= spec["min"]:
        return f"{key} = {got!r}, expected >= {spec['min']!r}"
    if "max" in spec and not got <= spec["max"]:
        return f"{key} = {got!r}, expected <= {spec['max']!r}"
    return None


def check_against_reference(results: dict, reference: dict) -> list[str]:
    """Compare a results dict (the file's content, or just its ``values``) with a reference.

    Returns human-readable failures; an empty list means every applicable check passed.
    """
    values = results["values"] if isinstance(results.get("values"), dict) else results
    failures = []
    for field in ("chapter", "scale"):
        ours, theirs = results.get(field), reference.get(field)
        if ours is not None and theirs is not None and ours != theirs:
            failures.append(f"results are for {field} {ours!r} but the reference is for {theirs!r}")
    for key, specs in reference.get("checks", {}).items():
        for spec in specs if isinstance(specs, list) else [specs]:
            if (failure := _check_one(key, spec, values)) is not None:
                failures.append(failure)
    return failures
