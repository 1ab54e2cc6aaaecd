"""Rehearsals: every chapter executed with the gpu (and paper) scale's shapes and code paths on a
CPU.

A rehearsal (``REHEARSAL = True``, see :mod:`helpers.scales`) keeps the scale's architectures,
image size, backbone input, UAP mode, pixel victim and every branch its chapters take, with tiny
budgets, random-initialised backbones and synthetic data. The gpu rehearsal runs in CI; the paper
rehearsal (seven backbones, 224 px resized to 299 px) takes hours on two cores (chapter 1 alone, 28
trainings each in a process of its own, 51 minutes from an empty cache), so it runs only when asked
for:
``RUN_PAPER_REHEARSAL=1 pytest tests/test_rehearsal.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from helpers import config, timing
from helpers.scales import get_preset
from helpers.tools.pipeline import run, toc_chapters

CHAPTERS = toc_chapters()
SCALES = [
    "gpu",
    pytest.param(
        "paper",
        marks=pytest.mark.skipif(
            not os.environ.get("RUN_PAPER_REHEARSAL"),
            reason="hours on two cores: set RUN_PAPER_REHEARSAL=1 to run it",
        ),
    ),
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=SCALES)
def rehearsal(request, tmp_path_factory):
    """Every chapter of the scale's rehearsal, the first alone, then two at a time, in a fresh
    cache."""
    work = tmp_path_factory.mktemp(f"rehearsal-{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.ENV_CACHE_DIR, str(work / "cache"))
        summary = run(
            request.param,
            work / "book",
            chapters=CHAPTERS,
            build=False,
            parameters={"REHEARSAL": True},
            jobs=2,
        )
    summary["preset"] = get_preset(request.param, rehearsal=True)
    summary["values"] = {
        name: json.loads(Path(path).read_text()) for name, path in summary["results"].items()
    }
    return summary


def outputs_of(summary, chapter) -> str:
    """All text a chapter printed or displayed."""
    notebook = nbformat.read(summary["notebooks"][chapter], as_version=4)
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", (
                f"{chapter}: {output.get('ename')}: {output.get('evalue')}"
            )
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_every_chapter_runs_and_says_it_is_a_rehearsal(rehearsal):
    assert list(rehearsal["notebooks"]) == CHAPTERS
    for chapter in CHAPTERS:
        text = outputs_of(rehearsal, chapter)
        assert "REHEARSAL of this scale" in text and "SYNTHETIC STAND-IN" in text, chapter
        assert rehearsal["values"][chapter]["scale"] == rehearsal["preset"].label


def test_every_architecture_of_the_scale_is_trained_and_attacked(rehearsal):
    preset = rehearsal["preset"]
    values = rehearsal["values"]["01_transfer_learning"]["values"]
    for name in ("derma", "oct", "pneumonia"):
        for arch in preset.architectures:
            assert f"{name}/{arch}/test_accuracy" in values
    for chapter in ("02_uap_nontargeted", "03_uap_targeted", "04_natural_image_uaps"):
        assert set(rehearsal["values"][chapter]["passes"]) == set(preset.architectures), chapter
    for chapter in ("05_pixel_attacks", "06_multilabel_pixel_attacks"):
        assert preset.pixel_victim in rehearsal["values"][chapter]["passes"], chapter


def test_chapter_4_compares_pretrained_and_from_scratch_backbones_as_table_2(rehearsal):
    text = outputs_of(rehearsal, "04_natural_image_uaps")
    backbone = rehearsal["preset"].architectures[0]
    assert f"{backbone}, ImageNet" in text and f"{backbone}, random initialisation" in text
    assert "needs an ImageNet-pretrained backbone" not in text


def test_the_counted_passes_agree_with_the_arithmetic_of_the_preset(rehearsal):
    folder = Path(next(iter(rehearsal["results"].values()))).parent
    # chapters 2-7 side by side
    assert timing.check_against_counts(folder, rehearsal["preset"], parallel=True) == []
