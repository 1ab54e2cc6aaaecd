"""Recording a chapter's key numbers and checking them against references."""

import json

import numpy as np
import pytest

from helpers import costs
from helpers.records import Recorder, check_against_reference, load_reference, load_results


@pytest.fixture
def records_env(tmp_path, monkeypatch):
    folder = tmp_path / "records"
    monkeypatch.setenv("COURSE_RECORDS_DIR", str(folder))
    return folder


def test_file_written_where_the_env_var_points(records_env):
    rec = Recorder("01_transfer_learning", "smoke")
    assert rec.path == records_env / "01_transfer_learning.results.json"
    written = load_results(rec.path)
    assert written.pop("peak_memory_mib") > 0 and written.pop("peak_child_memory_mib") >= 0
    assert written == {
        "chapter": "01_transfer_learning",
        "scale": "smoke",
        "values": {},
        "passes": {},
    }
    rec.log("pneumonia/small_cnn/test_accuracy", 0.875)
    assert load_results(rec.path)["values"] == {"pneumonia/small_cnn/test_accuracy": 0.875}


def test_the_file_holds_the_image_passes_counted_since_the_recorder_was_made(records_env):
    # before: not this chapter's
    costs.count(type("M", (), {"name": "vgg16_imagenet"})(), "forward", 99)
    rec = Recorder("02_uap_nontargeted", "smoke")
    model = type("M", (), {"name": "resnet50_imagenet"})()
    costs.count(model, "forward", 30)
    costs.count(model, "backward", 10)
    rec.log("x", 1)
    assert load_results(rec.path)["passes"] == {"resnet50": {"forward": 30, "backward": 10}}
    with pytest.raises(ValueError, match="kind"):
        costs.count(model, "sideways", 1)


def test_default_folder_is_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_RECORDS_DIR", raising=False)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    assert (
        Recorder("02_uap_nontargeted", "cpu").path
        == tmp_path / "cache" / "records" / "cpu" / "02_uap_nontargeted.results.json"
    )


def test_numpy_values_are_serialised(records_env):
    rec = Recorder("ch", "smoke")
    rec.log("a/float32", np.float32(0.5))
    rec.log("a/int64", np.int64(7))
    rec.log("a/bool", np.bool_(True))
    rec.log("a/zero_d", np.array(2.25))
    rec.log("a/str", np.str_("synthetic"))
    values = json.loads(rec.path.read_text())["values"]
    assert values == {
        "a/float32": 0.5,
        "a/int64": 7,
        "a/bool": True,
        "a/zero_d": 2.25,
        "a/str": "synthetic",
    }
    assert type(values["a/int64"]) is int and type(values["a/bool"]) is bool
    assert rec.values == values


def test_last_value_wins_and_nothing_is_dropped(records_env):
    rec = Recorder("ch", "smoke")
    rec.log("x", 1)
    rec.log("y", "a")
    rec.log("x", 2)
    assert load_results(rec.path)["values"] == {"x": 2, "y": "a"}


@pytest.mark.parametrize("bad", [[1, 2], None, {"a": 1}, np.zeros(3)])
def test_unrecordable_values_raise(records_env, bad):
    with pytest.raises(TypeError):
        Recorder("ch", "smoke").log("k", bad)


REFERENCE = {
    "chapter": "01_transfer_learning",
    "scale": "smoke",
    "checks": {
        "acc": {"min": 0.6},
        "loss": {"max": 1.0},
        "frac": {"min": 0.2, "max": 0.4},
        "auc": {"value": 0.9, "abs_tol": 0.05},
        "data": {"equals": "synthetic"},
        "real_acc": {"min": 0.8, "when": {"real_data": True}},
    },
}


def _results(**values):
    base = {
        "acc": 0.7,
        "loss": 0.3,
        "frac": 0.3,
        "auc": 0.93,
        "data": "synthetic",
        "real_data": False,
    }
    return {"chapter": "01_transfer_learning", "scale": "smoke", "values": {**base, **values}}


def test_passing_results_give_no_failures():
    assert check_against_reference(_results(), REFERENCE) == []
    assert check_against_reference(_results()["values"], REFERENCE) == []  # bare values work too


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"acc": 0.5}, "acc = 0.5, expected >= 0.6"),
        ({"loss": 1.5}, "loss = 1.5, expected <= 1.0"),
        ({"frac": 0.1}, "frac = 0.1, expected >= 0.2"),
        ({"frac": 0.5}, "frac = 0.5, expected <= 0.4"),
        ({"auc": 0.8}, "auc = 0.8, expected 0.9 ± 0.05"),
        ({"data": "medmnist"}, "data = 'medmnist', expected 'synthetic'"),
        ({"acc": "high"}, "acc = 'high', expected a number"),
        ({"acc": True}, "acc = True, expected a number"),
        ({"acc": float("nan")}, "acc = nan, expected a number"),
    ],
)
def test_each_kind_of_failure(values, fragment):
    failures = check_against_reference(_results(**values), REFERENCE)
    assert len(failures) == 1 and fragment in failures[0], failures


def test_missing_key_is_a_failure():
    results = _results()
    del results["values"]["auc"]
    assert check_against_reference(results, REFERENCE) == ["auc: missing from the results"]


def test_when_condition():
    # Not applicable without real data: neither a low value nor a missing key matters.
    assert check_against_reference(_results(real_acc=0.1), REFERENCE) == []
    assert check_against_reference(_results(), REFERENCE) == []
    # Applicable with real data.
    assert check_against_reference(_results(real_data=True, real_acc=0.85), REFERENCE) == []
    assert check_against_reference(_results(real_data=True, real_acc=0.5), REFERENCE) == [
        "real_acc = 0.5, expected >= 0.8"
    ]
    assert check_against_reference(_results(real_data=True), REFERENCE) == [
        "real_acc: missing from the results"
    ]


def test_when_condition_on_an_absent_key_is_a_failure():
    results = _results()
    del results["values"]["real_data"]
    failures = check_against_reference(results, REFERENCE)
    assert failures == ["real_acc: its condition key(s) ['real_data'] are missing from the results"]


def test_scale_mismatch_and_invalid_specs_are_reported():
    results = {**_results(), "scale": "cpu"}
    assert any("scale 'cpu'" in f for f in check_against_reference(results, REFERENCE))
    bad = {"checks": {"acc": {"minimum": 0.5}, "loss": {"max": 1, "tol": 2}, "auc": 0.9}}
    failures = check_against_reference(_results(), bad)
    assert len(failures) == 3 and all("invalid check" in f for f in failures)


def test_load_reference(tmp_path):
    (tmp_path / "01_transfer_learning.smoke.json").write_text(json.dumps(REFERENCE))
    assert load_reference("01_transfer_learning", "smoke", tmp_path) == REFERENCE
    with pytest.raises(FileNotFoundError, match="scale 'gpu'"):
        load_reference("01_transfer_learning", "gpu", tmp_path)


def test_the_file_holds_the_peak_memory_of_the_largest_child_process(records_env):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "block = b'x' * (300 * 2**20)"], check=True)
    written = load_results(Recorder("01_transfer_learning", "smoke").path)
    assert written["peak_child_memory_mib"] >= 300  # MiB: a trainer in its own process, say
    assert written["peak_memory_mib"] > 0
