"""Course-wide settings: repository URL, cache folder, environment variables."""
from __future__ import annotations

import os
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


def save_npz_once(path, what: str, **arrays) -> Path:
    """Write ``arrays`` to the npz file ``path`` atomically; an existing file is never overwritten.

    ``what`` names the content in the error ("UAP", "attack"). Returns the path.
    """
    import numpy as np

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; a saved {what} is never overwritten (delete it to recompute).")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part.npz")
    np.savez(partial, **arrays)
    partial.replace(path)
    return path
