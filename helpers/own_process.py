"""Run a step whose result the course caches in a Python process of its own.

TensorFlow keeps about 0.25 GiB of host memory after every ``fit`` of a new model and never gives it
back (keras-team/keras#17458): chapter 1 trains 28 models at ``paper`` scale, chapter 7 fine-tunes
30 copies, and one kernel doing all of it runs out of memory. A process that ends gives back
everything. So at ``paper`` (the preset's ``fit_in_own_process``) a training or a retraining run is
done by :func:`call` in a child process, which saves its result in the course cache; the chapter's
kernel then calls the same function again, which finds the result there and loads it.

The child reads the stored images of :class:`~helpers.data.MedDataset` arguments from ``.npy``
files (memory-mapped, not copied) and :class:`~helpers.training.TrainedModel` arguments from their
cache folder; its output appears in the notebook and its image passes are added to
:mod:`helpers.costs`. Same seed, same numbers as in the kernel. Used by chapters 1, 4 and 7.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import costs
from .cache import cache_dir
from .data import MedDataset


@dataclass(frozen=True)
class _StoredImages:
    """A MedDataset whose stored images wait in ``<job>/<name>.npy``."""

    name: str
    dataset: MedDataset  # without its stored images


def call(function, *args, **kwargs) -> None:
    """``function(*args, **kwargs)`` in a child Python process; raises if the child fails.

    ``function`` must be a module-level function of the course's helpers that saves its result in
    the cache (its return value is dropped). Output of the child (progress bars, prints, a
    traceback) is echoed here; TensorFlow's native log lines only when the child fails.
    """
    with tempfile.TemporaryDirectory(prefix=".own-process-", dir=cache_dir()) as job:
        job = Path(job)
        arguments = _encode({"args": list(args), "kwargs": kwargs}, job, itertools.count())
        with open(job / "call.pkl", "wb") as file:
            pickle.dump({"function": (function.__module__, function.__name__), **arguments}, file)
        _run([sys.executable, "-m", "helpers.own_process", str(job)], function.__name__, job)
        costs.add(json.loads((job / "passes.json").read_text()))


def _encode(value, job: Path, numbers):
    """``value`` with each MedDataset's stored images moved to ``<job>/images<n>.npy``, n from the
    iterator ``numbers`` (a TrainedModel pickles as its cache folder)."""
    if isinstance(value, MedDataset):
        name = f"images{next(numbers)}"
        np.save(job / f"{name}.npy", value.stored)
        return _StoredImages(name, replace(value, stored=None))
    if isinstance(value, dict):
        return {key: _encode(item, job, numbers) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(item, job, numbers) for item in value)
    return value


def _decode(value, job: Path):
    if isinstance(value, _StoredImages):
        return replace(value.dataset, stored=np.load(job / f"{value.name}.npy", mmap_mode="r"))
    if isinstance(value, dict):
        return {key: _decode(item, job) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(item, job) for item in value)
    return value


def _run(command: list[str], name: str, job: Path) -> None:
    """Run ``command`` with this package importable, echoing its Python output; raise if it fails.

    The child inherits ``TF_FORCE_GPU_ALLOW_GROWTH``, set when the helpers were imported, so it can
    share a GPU with this process. TensorFlow writes its native log lines to the file descriptor,
    not ``sys.stderr``: they go to ``<job>/native.log``.
    """
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    log = job / "native.log"
    with open(log, "wb") as native_log:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=native_log, env=env)
        tail = b""
        while chunk := child.stdout.read1(4096):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            tail = (tail + chunk)[-3000:]
    if child.wait() != 0:
        native = log.read_bytes()[-1500:].decode(errors="replace")
        raise RuntimeError(
            f"{name} in a process of its own failed (exit code {child.returncode}). Its last "
            f"output:\n{tail.decode(errors='replace')}\nIts last log lines:\n{native}\nTo see the "
            f"error in this process instead, pass own_process=False to {name}."
        )


def _main(job: Path) -> None:
    """The child's side of :func:`call`."""
    with open(job / "call.pkl", "rb") as file:
        spec = pickle.load(file)
    module, name = spec["function"]
    function = getattr(importlib.import_module(module), name)
    costs.reset()
    function(*_decode(spec["args"], job), **_decode(spec["kwargs"], job))
    (job / "passes.json").write_text(json.dumps(costs.snapshot()))


if __name__ == "__main__":  # python -m helpers.own_process JOB_FOLDER (written by call)
    if len(sys.argv) != 2:
        sys.exit("usage: python -m helpers.own_process JOB_FOLDER (written by own_process.call)")
    sys.stderr = sys.stdout  # progress bars and tracebacks to the parent; native logs stay apart
    from helpers.own_process import _main as main  # the module's classes, not __main__'s copies

    main(Path(sys.argv[1]))
