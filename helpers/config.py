"""Course-wide settings: repository URL, release, environment variables.

The cache folder and how entries are written: :mod:`helpers.cache`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

#: Where the course lives; the chapters' "Open in Colab" links and install cells point here.
REPO_URL = "https://github.com/medattack-course/medattack"
#: The release the chapters' Colab links open and their install cells install: one place sets it, so
#: a Colab lab keeps working after main moves on. Tag the release, then set it here and run
#: ``python -m helpers.config`` to rewrite the chapters' first two cells.
REPO_REF = "v0.2.0"

#: Environment variables a reader (or the pipeline) may set.
ENV_CACHE_DIR = "COURSE_CACHE_DIR"  # models, UAPs, downloaded data, results
ENV_MEDMNIST_DIR = "MEDMNIST_DIR"  # folder(s) of MedMNIST npz files, ':'-separated
ENV_RECORDS_DIR = "COURSE_RECORDS_DIR"  # where chapters write their key numbers
ENV_NATURAL_DIR = "NATURAL_IMAGES_DIR"  # folder of natural photos for chapter 4 (paper 001)


def colab_url(notebook: str) -> str:
    """Colab URL of a chapter notebook, e.g. ``colab_url("01_transfer_learning")``."""
    slug = REPO_URL.removeprefix("https://github.com/")
    return (
        f"https://colab.research.google.com/github/{slug}/blob/{REPO_REF}/chapters/{notebook}.ipynb"
    )


def install_spec() -> str:
    """The pip requirement the chapters' install cells use: the helpers at :data:`REPO_REF`."""
    return f"medattack-helpers @ git+{REPO_URL}@{REPO_REF}"


def colab_link(notebook: str) -> str:
    """The chapter's Colab link as Markdown: plain text, so that it shows offline too."""
    return f"[Open this chapter in Colab]({colab_url(notebook)})"


def install_cell() -> str:
    """Source of every chapter's install cell (the first code cell)."""
    return (
        "# On Colab: install the course helpers at the release this chapter belongs to "
        "(set in one place,\n"
        "# helpers/config.py: REPO_REF). TensorFlow is already there. Elsewhere: nothing to do.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    !pip install -q "{install_spec()}"'
    )


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in __import__("sys").modules


def write_chapter_links(chapters_dir: Path | None = None) -> list[Path]:
    """Rewrite every chapter's Colab link and install cell from :data:`REPO_REF`; return the changed
    files."""
    folder = Path(chapters_dir or Path(__file__).resolve().parents[1] / "chapters")
    changed = []
    for path in sorted(folder.glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        title, install = notebook["cells"][0], notebook["cells"][1]
        old_title, old_install = "".join(title["source"]), "".join(install["source"])
        new_title = re.sub(
            r"\[(?:!\[Open In Colab\]\([^)]*\)|Open this chapter in Colab)\]\([^)]*\)",
            colab_link(path.stem),
            old_title,
        )
        if (new_title, install_cell()) != (old_title, old_install):
            title["source"] = new_title.splitlines(keepends=True)
            install["source"] = install_cell().splitlines(keepends=True)
            path.write_text(
                json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            changed.append(path)
    return changed


if __name__ == "__main__":
    for changed_path in write_chapter_links():
        print("rewrote", changed_path)
