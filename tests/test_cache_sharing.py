"""One course cache shared by processes that run at once: the first writer wins, nobody fails."""

from __future__ import annotations

import json
import multiprocessing
import time

import numpy as np
import pytest

from helpers.cache import save_npz_once


def _write_at(path: str, value: float, start: float) -> bool:
    """A writer in its own process: wait for the common start time, then save."""
    time.sleep(max(0.0, start - time.time()))
    return save_npz_once(path, values=np.full(100_000, value))


def test_two_processes_writing_one_entry_both_finish_and_the_file_is_one_of_theirs(tmp_path):
    path = tmp_path / "uaps" / "entry.npz"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        for attempt in range(5):  # several races, each on a new entry
            target = path.with_name(f"entry{attempt}.npz")
            start = time.time() + 1.5
            written = pool.starmap(
                _write_at, [(str(target), 1.0, start), (str(target), 2.0, start)]
            )
            assert sorted(written) == [False, True]  # exactly one wrote it, the other used it
            with np.load(target) as saved:
                assert np.all(saved["values"] == (1.0 if written[0] else 2.0))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no partial files left


def test_an_existing_entry_is_never_overwritten(tmp_path):
    path = tmp_path / "entry.npz"
    assert save_npz_once(path, values=np.zeros(3)) is True
    assert save_npz_once(path, values=np.ones(3)) is False
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["values"], np.zeros(3))


@pytest.mark.slow
def test_a_model_saved_meanwhile_by_another_process_is_kept(tmp_path):
    import keras

    from helpers import training

    first = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    second = keras.models.clone_model(first)
    folder = tmp_path / "key"
    assert training.save_trained(
        first, folder, {"key": "key", "who": "first"}, {}, keep_existing=True
    )
    assert not training.save_trained(
        second, folder, {"key": "key", "who": "second"}, {}, keep_existing=True
    )
    assert json.loads((folder / "meta.json").read_text())["who"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no staging folder, no copy
    # trained again on purpose
    training.save_trained(second, folder, {"key": "key", "who": "second"}, {})
    assert json.loads((folder / "meta.json").read_text())["who"] == "second"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("key.old-")]) == 1
