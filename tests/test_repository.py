"""The repository's own files: the two environments agree, the README's commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _names(lines) -> dict[str, str]:
    specs = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~ ]", line, maxsplit=1)[0].lower()
            specs[name] = line.replace(" ", "")
    return specs


def test_requirements_and_environment_name_the_same_packages():
    pip = _names((REPO / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _names(pip_section) == pip


def test_no_torch_and_no_medmnist_package():
    pip = _names((REPO / "requirements.txt").read_text().splitlines())
    assert not {"torch", "torchvision", "medmnist"} & set(pip)
    assert "jupyter-book" in pip and "<2" in pip["jupyter-book"]


def test_readme_documents_the_two_commands():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("book", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.MULTILINE)


def test_code_is_formatted_and_linted():
    """``ruff format`` keeps the code and the chapters at 100 columns; ``ruff check`` finds no
    unused or undefined names, unsorted imports or imports after code (pyproject.toml)."""
    paths = ["helpers", "tests", "chapters", "benchmarks"]
    for command in (["format", "--check"], ["check"]):
        ran = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert ran.returncode == 0, (
            f"`ruff {' '.join(command)}` failed; run `ruff format {' '.join(paths)}` and wrap "
            f"what it cannot:\n{ran.stdout}{ran.stderr}"
        )
