"""Shared fixtures: an isolated course cache per test, the real MedMNIST folder, a smoke model.

* Every test runs with ``COURSE_CACHE_DIR`` pointing at its own tmp folder and without
  ``MEDMNIST_DIR`` (mark a test ``@pytest.mark.keep_medmnist_dir`` to keep the variable as
  the Makefile set it), so no test reads or writes the reader's cache or data.
* ``real_medmnist_dir``: the folder holding the real ``pneumoniamnist.npz``, or None.
  Tests that need it call ``pytest.skip`` when it is None: the suite passes on a fresh
  machine without it.
* ``smoke_pneumonia_model``: the small CNN trained once per session on pneumonia at the
  ``smoke`` scale (real data when available, else synthetic). Treat it as read-only.
* ``built_book``: every chapter executed at ``smoke`` into a temporary copy of the book, and the
  HTML built, once per session (test_book.py and test_browser.py share it). Treat it as read-only.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: MEDMNIST_DIR as the session started (the Makefile exports it), before any test clears it.
ORIGINAL_MEDMNIST_DIR = os.environ.get("MEDMNIST_DIR")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "keep_medmnist_dir: keep the MEDMNIST_DIR environment variable for this test"
    )


@pytest.fixture(autouse=True)
def isolated_course_cache(request, tmp_path, monkeypatch):
    """A fresh course cache per test; no MEDMNIST_DIR unless the test opts in."""
    cache = tmp_path / "course-cache"
    monkeypatch.setenv("COURSE_CACHE_DIR", str(cache))
    if request.node.get_closest_marker("keep_medmnist_dir") is None:
        monkeypatch.delenv("MEDMNIST_DIR", raising=False)
    return cache


def _find_real_medmnist_dir() -> Path | None:
    candidates = [
        Path(entry.strip())
        for entry in (ORIGINAL_MEDMNIST_DIR or "").split(os.pathsep)
        if entry.strip()
    ]
    candidates.append(REPO.parent / "shared" / "data" / "medmnist")
    for folder in candidates:
        if (folder / "pneumoniamnist.npz").is_file():
            return folder.resolve()
    return None


@pytest.fixture(scope="session")
def real_medmnist_dir() -> Path | None:
    """The folder with the real pneumoniamnist.npz ($MEDMNIST_DIR, else ../shared/data/medmnist), or
    None."""
    return _find_real_medmnist_dir()


@pytest.fixture(scope="session")
def smoke_pneumonia_model(tmp_path_factory, real_medmnist_dir):
    """(splits, TrainedModel): the small CNN trained on pneumonia at the ``smoke`` scale.

    Trained once per session into a session tmp cache, on the real data when
    ``real_medmnist_dir`` is available, else on the synthetic stand-in
    (``splits["train"].synthetic`` tells which). ``splits`` are the smoke scale's sampled
    train/val/test :class:`~helpers.data.MedDataset`. Shared by many tests: do not train,
    compile or otherwise modify the model.
    """
    from helpers import data, scales, training

    cache = tmp_path_factory.mktemp("smoke-session-cache")
    preset = scales.get_preset("smoke")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setenv("COURSE_CACHE_DIR", str(cache))
        patch.delenv("MEDMNIST_DIR", raising=False)
        warnings.filterwarnings("ignore", message=".*MD5.*")  # the shared copy is re-packaged
        splits = data.load_for_scale(
            "pneumonia",
            preset,
            seed=0,
            root=real_medmnist_dir,
            source="real" if real_medmnist_dir else "synthetic",
            verbose=False,
        )
        trained = training.get_or_train(
            splits, "small_cnn", preset, seed=0, cache=cache / "models", verbose=False
        )
    return splits, trained


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, real_medmnist_dir):
    """Execute every chapter at smoke into a temporary copy of the book and build the HTML.

    The chapter uses the real PneumoniaMNIST file when it is available, as `make book` does.
    Returns :func:`helpers.tools.pipeline.run`'s summary (``book_dir``, ``notebooks``,
    ``results``, ...).
    """
    from helpers import config
    from helpers.tools.pipeline import run, toc_chapters

    work = tmp_path_factory.mktemp("book")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.ENV_CACHE_DIR, str(work / "cache"))  # train from scratch, hermetically
        if real_medmnist_dir is not None:
            patch.setenv(config.ENV_MEDMNIST_DIR, str(real_medmnist_dir))
        else:
            patch.delenv(config.ENV_MEDMNIST_DIR, raising=False)
        return run("smoke", work / "book", chapters=toc_chapters())
