"""Course-wide settings: repository URL, cache folder, environment variables."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Where the course lives; the "Open in Colab" badges and install cells point here.
REPO_URL = "https://github.com/medattack-course/medattack"
REPO_BRANCH = "main"

#: Environment variables a reader (or the pipeline) may set.
ENV_CACHE_DIR = "COURSE_CACHE_DIR"      # models, UAPs, downloaded data, results
ENV_MEDMNIST_DIR = "MEDMNIST_DIR"      # folder(s) of MedMNIST npz files, ':'-separated
ENV_RECORDS_DIR = "COURSE_RECORDS_DIR"  # where chapters write their key numbers


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course cache.

    The cache is ``$COURSE_CACHE_DIR`` if set, else ``~/.cache/medattack``.
    """
    root = Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "medattack")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def colab_url(notebook: str) -> str:
    """Colab URL of a chapter notebook, e.g. ``colab_url("01_transfer_learning")``."""
    slug = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{slug}/blob/{REPO_BRANCH}/chapters/{notebook}.ipynb"


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in __import__("sys").modules


def save_npz_once(path, **arrays) -> bool:
    """Write ``arrays`` to the npz file ``path`` atomically, unless it exists; return True if written.

    An existing file is never overwritten: when two processes compute the same entry at once,
    the first writer wins and the other one's arrays are dropped (False), so both can go on
    with the saved file. The arrays are written to a temporary file first, then linked to
    ``path`` in one step that fails if ``path`` appeared meanwhile.
    """
    import numpy as np

    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part.npz")
    os.close(fd)
    try:
        np.savez(partial, **arrays)
        return _link_once(Path(partial), path)
    finally:
        Path(partial).unlink(missing_ok=True)


def _link_once(source: Path, path: Path) -> bool:
    """Give ``source``'s content the name ``path`` unless ``path`` exists; True if it did."""
    try:
        os.link(source, path)            # atomic: fails if another writer was first
        return True
    except FileExistsError:
        return False
    except OSError:                      # a file system without hard links
        if path.exists():
            return False
        os.replace(source, path)
        return True
