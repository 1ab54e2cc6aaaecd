"""helpers.timing: the building blocks against the counts of the real helpers, the chapters'
formulas, the check against a run's results files and the T4 cost model.

``COURSE_REHEARSAL_RESULTS=<book>/chapters`` also checks a finished rehearsal's results files
(``python -m helpers.tools.pipeline --scale gpu --rehearsal``, all chapters in one fresh cache).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from toy_models import brightness_model, flat

from helpers import costs, data, pixel, timing, training, uap
from helpers.scales import get_preset

REHEARSAL = get_preset("gpu", rehearsal=True)


def counted(action) -> dict:
    """The passes ``action()`` adds, as {"forward": n, "backward": n} (one model)."""
    costs.reset()
    action()
    (passes,) = costs.snapshot().values()
    costs.reset()
    return passes


def as_passes(work: timing.Work) -> dict:
    return {"forward": work.forward, "backward": work.backward}


# --------------------------------------------------------------------------- building blocks


def test_uap_passes_by_hand():
    # N = 10 attack images, i = 3 passes, E = 4 evaluation images:
    # forward N + E (clean) + i (3N + N + E), backward i N
    work = timing.uap_passes("resnet50", 10, 3, eval_images=4)
    assert (work.forward, work.backward) == (10 + 4 + 3 * (3 * 10 + 10 + 4), 3 * 10)


@pytest.mark.parametrize("mode", ["faithful", "batched"])
def test_uap_passes_equal_what_universal_perturbation_counts(mode):
    images, evaluation = flat(*np.linspace(0.1, 0.9, 6)), flat(0.2, 0.4, 0.6)
    model = brightness_model()
    passes = counted(
        lambda: uap.universal_perturbation(
            model,
            images,
            xi=0.05,
            eps=0.01,
            i_max=2,
            mode=mode,
            eval_images=evaluation,
            progress=False,
        )
    )
    assert passes == as_passes(timing.uap_passes("toy", 6, 2, eval_images=3))


def test_pixel_passes_equal_what_the_attacks_count_without_early_stop():
    images, model = flat(0.3, 0.45, 0.6), brightness_model()
    attack = counted(
        lambda: pixel.pixel_attack(
            model, images, pixels=1, population=5, generations=3, early_stop=None, progress=False
        )
    )
    control = counted(lambda: pixel.random_pixels(model, images, pixels=2, tries=7))
    assert attack == as_passes(timing.pixel_attack_passes("toy", 3, 5, 3))
    assert control == as_passes(timing.random_pixel_passes("toy", 3, 7))
    assert timing.pixel_attack_passes("toy", 3, 5, 3).bound


def test_training_passes_equal_what_fit_counts():
    info = data.get_info("pneumonia")
    train = data.MedDataset(info, "train", flat(*np.linspace(0, 1, 10)), np.arange(10) % 2)
    val = data.MedDataset(info, "val", flat(0.2, 0.8, 0.5), np.array([0, 1, 0]))
    passes = counted(lambda: training.fit(brightness_model(), train, val, epochs=2, batch_size=4))
    sizes = timing.SplitSizes(train=10, val=3, test=0, distinct=10)
    assert passes == as_passes(timing.training("toy", 2, sizes)) == {"forward": 26, "backward": 20}


def test_retraining_passes_by_hand():
    preset = get_preset(
        "smoke",
        uap_images=5,
        eval_images=4,
        uap_i_max=2,
        retrain_rounds=2,
        retrain_uaps=3,
        retrain_epochs=1,
    )
    sizes = timing.SplitSizes(train=20, val=6, test=9, distinct=20)
    uap_forward = 5 + 2 * 4 * 5  # one UAP: N + i (4N)
    per_round = (1 + 3) * uap_forward + 2 * 4 + (20 + 6)  # fresh + 3 UAPs, evaluation, one epoch
    work = timing.retraining_passes("small_cnn", preset, sizes)
    assert work.forward == uap_forward + 2 * 4 + 2 * per_round
    assert work.backward == (1 + 2 * 4) * 2 * 5 + 2 * 20


def test_retraining_passes_equal_what_adversarial_retraining_counts(tmp_path):
    info = data.get_info("pneumonia")
    means = np.linspace(0.05, 0.95, 12)
    splits = {
        split: data.MedDataset(info, split, flat(*means[:n]), (np.arange(n) % 2).astype(np.int64))
        for split, n in (("train", 12), ("val", 4), ("test", 6))
    }
    trained = training.TrainedModel(brightness_model(), "toy", tmp_path, {})
    preset = get_preset(
        "smoke",
        uap_images=5,
        eval_images=4,
        uap_i_max=1,
        retrain_rounds=1,
        retrain_uaps=2,
        retrain_epochs=1,
    )
    passes = counted(lambda: retrain_run(trained, splits, preset, tmp_path))
    sizes = timing.SplitSizes(train=12, val=4, test=6, distinct=12)
    assert passes == as_passes(timing.retraining_passes("toy", preset, sizes))


def retrain_run(trained, splits, preset, folder):
    from helpers import retrain

    return retrain.adversarial_retraining(
        trained,
        splits,
        zeta=0.04,
        eps=0.01,
        rounds=preset.retrain_rounds,
        uaps_per_round=preset.retrain_uaps,
        epochs=preset.retrain_epochs,
        attack_images=preset.uap_images,
        i_max=preset.uap_i_max,
        eval_images=preset.eval_images,
        mode="batched",
        cache=folder / "runs",
        progress=False,
    )


# --------------------------------------------------------------------------- the chapters


def test_chapter_1_by_hand():
    sizes = timing.split_sizes(REHEARSAL)
    # one epoch, then accuracy
    per_arch = sum((s.train + s.val) + s.test + s.train for s in sizes.values())
    passes = timing.chapter_passes("01_transfer_learning", REHEARSAL)
    assert passes["resnet50"] == {
        "forward": per_arch,
        "backward": sum(s.train for s in sizes.values()),
    }
    assert passes["inception_v3"]["forward"] == per_arch + sizes["chest"].test  # AUC per finding


def test_a_cached_uap_is_counted_once():
    # Chapter 2 asks for the main model's p = 2 UAP at the paper's zeta four times (Fig. 1D-F, Table
    # 1, the modes, transferability) and for every other model's twice (Table 1, transferability).
    # Per dataset, with the rehearsal's zeta grid (0.01, 0.02), that is: Fig. 1 (2 norms x 2 zetas),
    # Fig. 1D-F, Table 1 (main p = inf, two other models x 2 norms) and the other mode.
    work = timing.chapter_work("02_uap_nontargeted", REHEARSAL)
    keys = [w.key for w in work if w.key and w.key[0] == "uap"]
    assert len(keys) == len(set(keys))
    assert len(keys) == 3 * (2 * 2 + 1 + (1 + 2 * 2) + 1)


def test_shared_cache_counts_less_never_more():
    for chapter in timing.CHAPTERS:
        alone = timing.chapter_passes(chapter, REHEARSAL)
        shared = timing.chapter_passes(chapter, REHEARSAL, shared_cache=True)
        for arch, kinds in shared.items():
            assert all(kinds[k] <= alone[arch][k] for k in kinds), chapter


def test_unknown_chapter_is_refused():
    with pytest.raises(ValueError, match="02_uap_nontargeted"):
        timing.chapter_passes("02", REHEARSAL)


def test_official_sizes_by_hand():
    sizes = timing.official_sizes(
        get_preset("gpu", train_per_class=1960, test_per_class=840, max_train=8000, max_test=3000)
    )
    # 900 per class; 234 + 270
    assert sizes["pneumonia"] == timing.SplitSizes(1800, 524, 504, 1800, (234, 270))
    assert (sizes["oct"].train, sizes["oct"].test) == (4 * 1960, 1000)
    assert (sizes["derma"].train, sizes["chest"].train) == (8000, 8000)  # max_train


@pytest.mark.filterwarnings("ignore:.*MD5 differs")
def test_official_sizes_match_the_real_file(real_medmnist_dir):
    if real_medmnist_dir is None:
        pytest.skip("the real pneumoniamnist.npz is not available")
    preset = get_preset("smoke")
    splits = data.load_for_scale(
        "pneumonia", preset, root=real_medmnist_dir, source="real", verbose=False
    )
    assert timing.official_sizes(preset)["pneumonia"] == timing._sizes_of(splits)


# --------------------------------------------------------------------------- the check


def write_results(folder, chapter: str, passes: dict) -> None:
    (folder / f"{chapter}.results.json").write_text(
        json.dumps({"chapter": chapter, "passes": passes})
    )


def test_check_against_counts(tmp_path):
    least, most = timing.passes_range("05_pixel_attacks", REHEARSAL, shared_cache=True)
    write_results(
        tmp_path, "01_transfer_learning", timing.chapter_passes("01_transfer_learning", REHEARSAL)
    )
    write_results(tmp_path, "05_pixel_attacks", least)  # every attack stopped at once: allowed
    assert timing.check_against_counts(tmp_path, REHEARSAL) == []
    too_many = {"resnet50": {"forward": most["resnet50"]["forward"] + 1, "backward": 0}}
    write_results(tmp_path, "05_pixel_attacks", too_many)
    (message,) = timing.check_against_counts(tmp_path, REHEARSAL)
    assert (
        message.startswith("05_pixel_attacks resnet50 forward: counted")
        and "(difference +1)" in message
    )


def test_chapters_run_side_by_side_may_redo_what_an_earlier_one_had_not_saved_yet(tmp_path):
    chapter = "04_natural_image_uaps"  # reuses chapter 2's UAPs when run after it
    shared = timing.chapter_passes(chapter, REHEARSAL, shared_cache=True)
    alone = timing.chapter_passes(chapter, REHEARSAL, shared_cache=False)
    assert alone != shared
    write_results(tmp_path, chapter, alone)
    assert timing.check_against_counts(tmp_path, REHEARSAL) != []  # in order: it must reuse them
    assert timing.check_against_counts(tmp_path, REHEARSAL, parallel=True) == []


def test_a_finished_rehearsal_agrees():
    folder = os.environ.get("COURSE_REHEARSAL_RESULTS")
    if not folder:
        pytest.skip("set COURSE_REHEARSAL_RESULTS to a gpu rehearsal's <book>/chapters folder")
    assert timing.check_against_counts(folder, REHEARSAL) == []


# --------------------------------------------------------------------------- the T4


def test_resnet50_at_224_px_takes_2_41_ms_and_a_backward_pass_twice_that():
    assert (
        timing.forward_ms("resnet50", 224)
        == pytest.approx(1000 / 414.66)
        == pytest.approx(2.41, abs=0.005)
    )
    preset = get_preset("gpu", backbone_input=224)
    forward = timing.passes_minutes({"resnet50": {"forward": 60_000, "backward": 0}}, preset)
    backward = timing.passes_minutes({"resnet50": {"forward": 0, "backward": 60_000}}, preset)
    assert forward == pytest.approx(60_000 * 2.4116 / 60_000, rel=1e-4)
    assert backward == pytest.approx(2 * forward)


def test_costs_scale_with_the_flops():
    # ResNet-50 at 128 px: about (128 / 224)^2 of its 224 px cost
    # (the pooling edges change it a little)
    ratio = timing.forward_ms("resnet50", 128) / timing.forward_ms("resnet50", 224)
    assert ratio == pytest.approx((128 / 224) ** 2, rel=0.05)
    assert timing.forward_ms("small_cnn", 28) < 0.01 * timing.forward_ms("resnet50", 224)


def test_readme_table_has_every_chapter():
    table = timing.readme_table("gpu", rehearsal=True)
    assert table.startswith("| chapter | inception_v3 | resnet50 | vgg16 | T4 minutes |")
    assert all(f"| {chapter} |" in table for chapter in timing.CHAPTERS)


@pytest.mark.slow
@pytest.mark.parametrize("scale, column, unit", [("gpu", 3, 1.0), ("paper", 4, 60.0)])
def test_the_readmes_gpu_and_paper_times_are_the_arithmetic(scale, column, unit):
    """The README's run-time table: T4 minutes (gpu) and hours (paper) as timing.predicted_minutes
    gives them."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [
        line
        for line in readme.splitlines()
        if re.match(r"\| \d\. .*\(\[notebook\]\(chapters/", line)
    ]
    assert len(rows) == len(timing.CHAPTERS)
    preset = get_preset(scale)
    sizes = timing.official_sizes(preset)
    for chapter, row in zip(timing.CHAPTERS, rows):
        assert f"chapters/{chapter}.ipynb" in row
        shown = float(re.search(r"[\d.]+", row.split("|")[column + 1]).group())
        predicted = timing.predicted_minutes(chapter, preset, sizes) / unit
        assert shown == pytest.approx(predicted, abs=0.051 if unit == 1 else 0.51), (
            chapter,
            shown,
            predicted,
        )
