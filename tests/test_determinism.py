"""Same seed, same machine: a chapter's results file is identical, bit for bit (its peak memory
aside)."""

from __future__ import annotations

import json

import pytest

from helpers import config
from helpers.tools.regression import run_chapters

pytestmark = [pytest.mark.slow, pytest.mark.book]
CHAPTER = "06_multilabel_pixel_attacks"  # trains a model, draws images and runs the pixel attacks


def test_a_chapter_run_twice_from_scratch_records_identical_numbers(tmp_path, monkeypatch):
    monkeypatch.delenv(config.ENV_MEDMNIST_DIR, raising=False)
    texts = []
    for run in ("first", "second"):  # each with a new, empty cache: nothing is reloaded
        results = run_chapters("smoke", [CHAPTER], tmp_path / run)
        written = json.loads(results[CHAPTER].read_text())
        # the entries a machine's state may change
        assert written.pop("peak_memory_mib") > 0 and written.pop("peak_child_memory_mib") >= 0
        texts.append(json.dumps(written, sort_keys=True))
    assert texts[0] == texts[1]
    assert '"chest/pixels1/success_rate"' in texts[0] and '"passes"' in texts[0]
