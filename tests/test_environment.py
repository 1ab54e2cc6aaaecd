"""The first code cell of every chapter: versions printed, unusable environments refused in one
sentence."""

from __future__ import annotations

import pytest

from helpers import environment, models


def test_versions_are_printed_with_the_gpu(capsys):
    found = environment.check("smoke")
    out = capsys.readouterr().out
    for name in ("python", "tensorflow", "keras", "adversarial-robustness-toolbox", "numpy"):
        assert f"{name} {found['versions'][name]}" in out
    assert "GPU: " in out and environment.unsupported(found["versions"]) == []


def test_unsupported_versions_give_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(
        environment,
        "versions",
        lambda: {
            "python": "3.11.7",
            "tensorflow": "2.12.0",
            "keras": "2.12.0",
            "numpy": "1.26.4",
            "adversarial-robustness-toolbox": "missing",
        },
    )
    with pytest.raises(environment.UnsupportedEnvironment) as error:
        environment.check("smoke", verbose=False)
    message = str(error.value)
    assert "tensorflow 2.12.0 (supported: 2.16 to below 2.22)" in message
    assert "adversarial-robustness-toolbox missing" in message and "requirements.txt" in message
    assert "\n" not in message


@pytest.mark.parametrize("scale", ["gpu", "paper"])
def test_gpu_scales_refuse_to_start_without_a_gpu(monkeypatch, scale):
    monkeypatch.setattr(environment, "gpus", lambda: [])
    with pytest.raises(
        environment.UnsupportedEnvironment, match=f"SCALE='{scale}' needs a GPU"
    ) as error:
        environment.check(scale, verbose=False)
    assert "T4 GPU" in str(error.value) and "\n" not in str(error.value)


def test_gpu_scales_refuse_to_start_without_imagenet_weights(monkeypatch):
    monkeypatch.setattr(environment, "gpus", lambda: ["Tesla T4"])

    def offline(architecture, side):
        raise models.WeightsUnavailableError(
            "Could not download the ImageNet weights of InceptionV3 (URLError).\n..."
        )

    monkeypatch.setattr(models, "fetch_imagenet_weights", offline)
    with pytest.raises(
        environment.UnsupportedEnvironment, match="ImageNet weights of inception_v3"
    ) as error:
        environment.check("gpu", verbose=False)
    assert "internet" in str(error.value)


def test_cpu_scales_run_without_a_gpu(monkeypatch):
    monkeypatch.setattr(environment, "gpus", lambda: [])
    assert environment.check("cpu", verbose=False)["gpus"] == []
    with pytest.raises(ValueError, match="SCALE="):
        environment.check("huge", verbose=False)


def test_supported_ranges_match_requirements_txt():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    low, high = environment.SUPPORTED["tensorflow"]
    assert f"tensorflow>={low},<{high}" in text
    assert "adversarial-robustness-toolbox==1.20.*" in text and "numpy>=2.0" in text


def test_chapter_links_and_install_cells_are_rewritten_from_one_setting(tmp_path):
    import json

    from helpers import config

    old = {
        "cells": [
            {
                "cell_type": "markdown",
                "metadata": {},
                "source": [
                    "# 9. A chapter\n",
                    "\n",
                    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://example.org/x)\n",
                ],
            },
            {
                "cell_type": "code",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "source": [
                    '!pip install -q "medattack-helpers @ git+https://github.com/medattack-course/medattack@main"'
                ],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "09_a_chapter.ipynb"
    path.write_text(json.dumps(old))
    assert config.write_chapter_links(tmp_path) == [path]
    cells = json.loads(path.read_text())["cells"]
    assert config.colab_link("09_a_chapter") in "".join(
        cells[0]["source"]
    ) and "colab-badge" not in str(cells[0])
    assert "".join(cells[1]["source"]) == config.install_cell()
    assert config.write_chapter_links(tmp_path) == []  # nothing left to change


@pytest.mark.parametrize("scale", ["gpu", "paper"])
def test_a_rehearsal_runs_on_the_cpu_without_imagenet_weights(monkeypatch, capsys, scale):
    from helpers.scales import get_preset

    monkeypatch.setattr(environment, "gpus", lambda: [])

    def never(architecture, side):
        raise AssertionError("a rehearsal must not fetch ImageNet weights")

    monkeypatch.setattr(models, "fetch_imagenet_weights", never)
    assert environment.check(get_preset(scale, rehearsal=True))["gpus"] == []
    assert f"rehearsal of scale '{scale}'" in capsys.readouterr().out


@pytest.mark.parametrize("given, expected", [(None, "true"), ("false", "false")])
def test_importing_the_helpers_lets_tensorflow_grow_into_the_gpu_unless_told_otherwise(
    given, expected
):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_FORCE_GPU_ALLOW_GROWTH"}
    if given is not None:
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = given
    code = "import helpers, os; print(os.environ['TF_FORCE_GPU_ALLOW_GROWTH'])"
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ran.stdout.strip() == expected  # a trainer in its own process can share the GPU
