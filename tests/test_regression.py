"""The regression report, and references traceable to a measured seed spread."""

from __future__ import annotations

import json
import statistics

import pytest

from helpers.records import REFERENCES_DIR
from helpers.tools import regression
from helpers.tools.pipeline import toc_chapters

REFERENCE = {
    "chapter": "02_uap_nontargeted",
    "scale": "smoke",
    "checks": {
        "n": {"equals": 800},
        "rate": {"value": 0.20, "abs_tol": 0.05, "images": 200},
        "gap": {"min": 0.05, "claim": "UAP beats random"},
        "random": {"max": 0.03},
        "real_only": {"min": 0.5, "when": {"data": "real"}},
    },
}


def results(**values):
    base = {
        "n": 800,
        "rate": 0.22,
        "gap": 0.1,
        "random": 0.01,
        "real_only": 0.1,
        "data": "SYNTHETIC",
    }
    return {"chapter": "02_uap_nontargeted", "scale": "smoke", "values": {**base, **values}}


def test_report_has_one_row_per_check_with_status_and_value():
    rows = regression.report_rows(results(), REFERENCE)
    table = {row.key: row for row in rows}
    assert [row.key for row in rows] == ["n", "rate", "gap", "random", "real_only"]
    assert (
        table["rate"].check == "0.200 ± 0.050"
        and table["rate"].value == "0.22"
        and table["rate"].status == "ok"
    )
    assert table["gap"].check == ">= 0.050" and table["gap"].claim == "UAP beats random"
    assert "ok    (UAP beats random)" in regression.format_table(rows)
    assert table["random"].check == "<= 0.030" and table["n"].check == "= 800"
    assert table["real_only"].status == "n/a" and "data = real" in table["real_only"].detail


def test_failures_are_marked_and_counted():
    rows = regression.report_rows(
        results(rate=0.3, gap=-0.01, real_only=0.1, data="real"), REFERENCE
    )
    failed = {row.key for row in rows if row.status == "FAIL"}
    assert failed == {"rate", "gap", "real_only"}
    text = regression.format_table(rows)
    assert "2 passed, 3 failed, 0 not applicable" in text
    assert "-> rate = 0.3, expected 0.2 ± 0.05" in text


def test_a_missing_number_fails():
    values = results()["values"]
    del values["rate"]
    rows = regression.report_rows({"values": values}, REFERENCE)
    assert [r.status for r in rows if r.key == "rate"] == ["FAIL"]


def test_command_line_report_on_results_already_there(tmp_path, capsys):
    reference_dir = tmp_path / "refs"
    reference_dir.mkdir()
    (reference_dir / "02_uap_nontargeted.smoke.json").write_text(json.dumps(REFERENCE))
    (tmp_path / "02_uap_nontargeted.results.json").write_text(json.dumps(results()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("helpers.records.REFERENCES_DIR", reference_dir)
        assert regression.main(["report", "--results", str(tmp_path), "--chapters", "02"]) == 0
        assert "4 passed, 0 failed, 1 not applicable" in capsys.readouterr().out
        (tmp_path / "02_uap_nontargeted.results.json").write_text(json.dumps(results(random=0.2)))
        assert regression.main(["report", "--results", str(tmp_path), "--chapters", "02"]) == 1
        assert "FAIL" in capsys.readouterr().out


# --------------------------------------------------------------------------- the spread


def spread_of(per_configuration: dict[str, list[dict]]) -> dict:
    return {
        "scale": "smoke",
        "configurations": {
            name: {"runs": {"02_uap_nontargeted": runs}} for name, runs in per_configuration.items()
        },
    }


RATES = [0.18, 0.20, 0.22, 0.21, 0.19]


def test_a_value_check_must_cover_three_standard_deviations_of_the_seeds():
    spread = spread_of({"a": [{"rate": r} for r in RATES]})
    sd = statistics.stdev(RATES)
    wide = {"value": 0.2, "abs_tol": 3 * sd + 1e-6, "images": 200}
    narrow = {"value": 0.2, "abs_tol": 2 * sd, "images": 200}
    assert regression.trace(spread, "02_uap_nontargeted", "rate", wide) == []
    assert "does not cover" in regression.trace(spread, "02_uap_nontargeted", "rate", narrow)[0]
    derived, problems = regression.derived_check(spread, "02_uap_nontargeted", "rate", narrow)
    assert not problems and derived["abs_tol"] >= 3 * sd and derived["value"] == pytest.approx(0.2)


def test_the_tolerance_is_never_below_one_image_and_few_images_are_not_checked():
    spread = spread_of({"a": [{"rate": 0.5} for _ in range(5)]})  # no spread at all
    derived, problems = regression.derived_check(
        spread, "02_uap_nontargeted", "rate", {"value": 0.5, "abs_tol": 0, "images": 20}
    )
    assert not problems and derived["abs_tol"] == 0.05  # one image of 20
    few = regression.trace(
        spread, "02_uap_nontargeted", "rate", {"value": 0.5, "abs_tol": 0.4, "images": 3}
    )
    assert any("fewer" in p or "< 10" in p for p in few)


def test_a_spread_too_wide_to_tell_a_change_from_noise_is_not_checked():
    spread = spread_of({"a": [{"rate": r} for r in (0.1, 0.6, 0.3, 0.9, 0.0)]})
    _, problems = regression.derived_check(
        spread, "02_uap_nontargeted", "rate", {"value": 0, "abs_tol": 0, "images": 10}
    )
    assert problems and "too wide" in problems[0]


def test_claims_need_a_positive_margin_that_the_spread_supports():
    supported = spread_of({"a": [{"gap": g} for g in (0.10, 0.12, 0.11, 0.13, 0.12)]})
    check, problems = regression.derived_check(
        supported, "02_uap_nontargeted", "gap", {"min": 0.5, "claim": "x"}
    )
    assert not problems and 0 < check["min"] <= 0.10
    unsupported = spread_of({"a": [{"gap": g} for g in (0.0, 0.1, 0.02, 0.15, 0.01)]})
    _, problems = regression.derived_check(
        unsupported, "02_uap_nontargeted", "gap", {"min": 0.05, "claim": "x"}
    )
    assert problems and "margin" in problems[0]


def test_a_check_holds_in_every_configuration_where_it_applies():
    spread = spread_of(
        {
            "real": [{"rate": r, "data": "real"} for r in RATES],
            "synthetic": [{"rate": r + 0.3, "data": "SYNTHETIC"} for r in RATES],
        }
    )
    everywhere, _ = regression.derived_check(
        spread, "02_uap_nontargeted", "rate", {"value": 0, "abs_tol": 0}
    )
    assert (
        everywhere["value"] - everywhere["abs_tol"] <= 0.18
        and everywhere["value"] + everywhere["abs_tol"] >= 0.52
    )
    real, _ = regression.derived_check(
        spread, "02_uap_nontargeted", "rate", {"value": 0, "abs_tol": 0, "when": {"data": "real"}}
    )
    assert real["value"] + real["abs_tol"] < 0.3
    missing = regression.trace(
        spread, "02_uap_nontargeted", "rate", {"min": 0, "when": {"data": "other"}}
    )
    assert "no seed" in missing[0]


def test_fewer_than_five_seeds_are_not_a_spread():
    spread = spread_of({"a": [{"rate": r} for r in RATES[:3]]})
    assert "only 3 seed" in regression.trace(spread, "02_uap_nontargeted", "rate", {"min": 0})[0]
    with pytest.raises(ValueError, match="at least 5"):
        regression.derive("smoke", [0, 1, 2])


def test_rederiving_rewrites_the_reference_files(tmp_path):
    reference = {
        "chapter": "02_uap_nontargeted",
        "scale": "smoke",
        "checks": {
            "rate": {"value": 0.9, "abs_tol": 0.001, "images": 200},
            "n": {"equals": 800},
            "gap": [{"min": 0.3, "claim": "x", "when": {"data": "real"}}],
        },
    }
    (tmp_path / "02_uap_nontargeted.smoke.json").write_text(json.dumps(reference))
    runs = [{"rate": r, "gap": 0.1 + r, "data": "real", "n": 800} for r in RATES]
    (tmp_path / "spread.smoke.json").write_text(json.dumps(spread_of({"a": runs})))
    assert regression.untraceable("smoke", tmp_path)
    assert regression.rederive_references("smoke", tmp_path) == []
    assert regression.untraceable("smoke", tmp_path) == []
    rewritten = json.loads((tmp_path / "02_uap_nontargeted.smoke.json").read_text())
    assert (
        rewritten["checks"]["n"] == {"equals": 800}
        and rewritten["checks"]["gap"][0]["claim"] == "x"
    )


# ------------------------------------------------------------------------- the committed references


def test_every_reference_of_the_smoke_scale_is_traceable_to_the_committed_spread():
    spread = regression.load_spread("smoke")
    assert spread.get("configurations"), "tests/references/spread.smoke.json is missing"
    for entry in spread["configurations"].values():
        assert len(set(entry["seeds"])) >= regression.MIN_SEEDS
        assert {"date", "machine", "versions"} <= entry.keys() and "tensorflow" in entry["versions"]
        assert set(entry["runs"]) == set(toc_chapters())
    assert regression.untraceable("smoke") == []


def test_every_chapter_has_a_reference_and_no_rate_over_fewer_than_ten_images_is_checked():
    for chapter in toc_chapters():
        reference = json.loads((REFERENCES_DIR / f"{chapter}.smoke.json").read_text())
        for key, spec in regression._specs(reference):
            if "equals" not in spec and key.rsplit("/", 1)[-1].endswith(
                ("rate", "accuracy", "baseline")
            ):
                assert spec.get("images", 0) >= regression.MIN_IMAGES, (
                    f"{chapter}: {key} needs 'images' >= 10"
                )


def test_deriving_some_chapters_again_keeps_the_others(tmp_path, monkeypatch):
    def fake_run(scale, chapters, work, *, seed=None, cache=None):
        work.mkdir(parents=True, exist_ok=True)
        paths = {}
        for chapter in chapters:
            paths[chapter] = work / f"{chapter}.results.json"
            paths[chapter].write_text(
                json.dumps({"values": {"seed": seed, "chapter": chapter, "run": fake_run.run}})
            )
        return paths

    monkeypatch.setattr(regression, "run_chapters", fake_run)
    monkeypatch.delenv("MEDMNIST_DIR", raising=False)
    monkeypatch.delenv("NATURAL_IMAGES_DIR", raising=False)
    fake_run.run = 1
    regression.derive(
        "smoke", [0, 1, 2, 3, 4], chapters=["a", "b"], folder=tmp_path, work=tmp_path / "w1"
    )
    fake_run.run = 2
    regression.derive(
        "smoke", [0, 1, 2, 3, 4], chapters=["b"], folder=tmp_path, work=tmp_path / "w2"
    )
    entry = regression.load_spread("smoke", tmp_path)["configurations"]["no-local-data"]
    assert [v["run"] for v in entry["runs"]["a"]] == [1] * 5 and [
        v["run"] for v in entry["runs"]["b"]
    ] == [2] * 5
    assert [v["seed"] for v in entry["runs"]["a"]] == [0, 1, 2, 3, 4]
    assert entry["stats"]["a"]["run"]["mean"] == 1 and entry["stats"]["b"]["run"]["mean"] == 2
