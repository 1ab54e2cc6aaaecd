"""Adversarial retraining: the half-perturbed training set, bad inputs, the round cache and
resuming.

The runs use the smoke pneumonia model on a few images (160 training, 40 attack, 80 test images),
two UAPs per round, one pass per UAP and one fine-tuning epoch: the procedure, not its effect, is
under test here (the effect is checked at the cpu scale in ``test_cpu_scale.py``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import retrain, uap

SETTINGS = dict(
    zeta=0.04,
    norm=2,
    target=1,
    eps=0.01,
    uaps_per_round=2,
    epochs=1,
    attack_images=40,
    i_max=1,
    eval_images=80,
    seed=0,
    progress=False,
)
NUMBERS = [
    "round",
    "rate",
    "clean test accuracy",
    "adversarial test accuracy",
    "dominant class",
    "dominant share",
    "baseline",
]


# --------------------------------------------------------------------------- the retraining set


def constant_uaps(count: int, shape=(4, 4, 1)) -> list:
    """UAP k adds 0.1 (k + 1) to every pixel, so the difference tells which UAP an image got."""
    return [np.full(shape, 0.1 * (k + 1), np.float32) for k in range(count)]


@pytest.mark.parametrize("n", [10, 11, 60])
def test_half_clean_and_half_with_one_uap_each(n):
    images = np.random.default_rng(1).uniform(0.0, 0.5, (n, 4, 4, 1)).astype(np.float32)
    out, chosen = retrain.perturbed_training_set(images, constant_uaps(3), seed=0)
    assert out.shape == images.shape and chosen.shape == (n,)
    assert np.sum(chosen >= 0) == n // 2 and np.sum(chosen == -1) == n - n // 2
    for i in range(n):
        added = out[i] - images[i]
        # one constant UAP, not a mixture
        np.testing.assert_allclose(added, added.flat[0], atol=1e-6)
        by_hand = int(round(added.flat[0] / 0.1)) - 1  # 0.0 -> -1 (clean), 0.1 -> 0, ...
        assert by_hand == chosen[i]
    if n == 60:
        assert set(chosen[chosen >= 0]) == {0, 1, 2}  # each UAP is used


def test_perturbed_images_are_clipped_to_the_pixel_range():
    images = np.full((4, 4, 4, 1), 0.95, np.float32)
    out, chosen = retrain.perturbed_training_set(
        images, [np.full((4, 4, 1), 0.3, np.float32)], seed=0
    )
    assert (
        out.max() == 1.0 and np.all(out[chosen == 0] == 1.0) and np.all(out[chosen == -1] == 0.95)
    )


def test_same_seed_same_set_and_another_seed_another():
    images = np.random.default_rng(2).uniform(0.0, 0.5, (40, 4, 4, 1)).astype(np.float32)
    first = retrain.perturbed_training_set(images, constant_uaps(4), seed=3)
    again = retrain.perturbed_training_set(images, constant_uaps(4), seed=3)
    other = retrain.perturbed_training_set(images, constant_uaps(4), seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_retraining_set_keeps_every_label_and_the_order(smoke_pneumonia_model):
    splits, _ = smoke_pneumonia_model
    train = splits["train"].subset(np.arange(30))
    shape = train.images.shape[1:]
    mixed, chosen = retrain.retraining_set(train, [np.full(shape, 0.05, np.float32)], seed=0)
    np.testing.assert_array_equal(mixed.labels, train.labels)
    np.testing.assert_array_equal(mixed.images[chosen == -1], train.images[chosen == -1])
    np.testing.assert_allclose(
        mixed.images[chosen == 0], np.clip(train.images[chosen == 0] + 0.05, 0, 1)
    )
    assert mixed.info == train.info and np.sum(chosen == 0) == 15


def test_retraining_set_adds_the_uaps_as_images_are_read_and_matches_the_array_version():
    from helpers import data

    train = data.oversample(
        data.load("derma", "train", source="synthetic", synthetic_count=140, verbose=False)
    )
    uaps = [np.full(train.shape, 0.1 * (k + 1), np.float32) for k in range(3)]
    mixed, chosen = retrain.retraining_set(train, uaps, seed=5)
    assert mixed.stored is train.stored  # no second copy of the training set
    expected, expected_chosen = retrain.perturbed_training_set(train.images, uaps, seed=5)
    np.testing.assert_array_equal(chosen, expected_chosen)
    np.testing.assert_array_equal(mixed.images, expected)
    part = np.array([7, 3, 100])
    np.testing.assert_array_equal(mixed.subset(part).images, expected[part])
    with pytest.raises(ValueError, match="already carries UAPs"):
        retrain.retraining_set(mixed, uaps)


@pytest.mark.parametrize(
    "images, perturbations, fragment",
    [
        (np.zeros((4, 4, 4, 1)), [], "perturbations is empty"),
        (np.zeros((4, 4, 4, 1)), [np.zeros((5, 5, 1))], "perturbations have shape"),
        (np.zeros((4, 4, 1)), [np.zeros((4, 1))], "images has shape"),
        (np.zeros((0, 4, 4, 1)), [np.zeros((4, 4, 1))], "images has shape"),
    ],
)
def test_bad_retraining_set_inputs_are_refused(images, perturbations, fragment):
    with pytest.raises(ValueError, match=fragment):
        retrain.perturbed_training_set(images, perturbations)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"rounds": 0}, "rounds=0"),
        ({"rounds": 1.5}, "rounds=1.5"),
        ({"uaps_per_round": 0}, "uaps_per_round=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"attack_images": 0}, "attack_images=0"),
        ({"i_max": 0}, "i_max=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"eval_images": 0}, "eval_images=0"),
        ({"zeta": 0.0}, "zeta=0.0"),
        ({"zeta": float("nan")}, "zeta=nan"),
        ({"eps": -0.01}, "eps=-0.01"),
        ({"target": 2}, r"target=2.*\[0, 2\)"),
        ({"target": True}, "target=True"),
        ({"norm": "l3"}, "norm='l3'"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ],
)
def test_bad_settings_are_refused_before_any_work(
    smoke_pneumonia_model, tmp_path, change, fragment
):
    splits, trained = smoke_pneumonia_model
    with pytest.raises(ValueError, match=fragment):
        retrain.adversarial_retraining(trained, splits, cache=tmp_path, **{**SETTINGS, **change})
    assert not any(tmp_path.iterdir())


def test_a_bare_model_is_refused(smoke_pneumonia_model, tmp_path):
    splits, trained = smoke_pneumonia_model
    with pytest.raises(ValueError, match="trained=Functional: pass the TrainedModel"):
        retrain.adversarial_retraining(trained.model, splits, cache=tmp_path, **SETTINGS)


def test_missing_test_split_is_refused(smoke_pneumonia_model, tmp_path):
    splits, trained = smoke_pneumonia_model
    with pytest.raises(ValueError, match="splits has no 'test' split"):
        retrain.adversarial_retraining(
            trained, {"train": splits["train"]}, cache=tmp_path, **SETTINGS
        )


# --------------------------------------------------------------------------- rounds and their cache


@pytest.fixture(scope="module")
def small(smoke_pneumonia_model):
    """(splits, trained): the smoke model with 160 of its training images and no validation
    split."""
    splits, trained = smoke_pneumonia_model
    train = splits["train"].subset(np.random.default_rng(0).permutation(len(splits["train"]))[:160])
    return {"train": train, "test": splits["test"]}, trained


def _digest(model) -> str:
    return hashlib.sha1(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()


@pytest.fixture(scope="module")
def weights_before(smoke_pneumonia_model) -> str:
    """A digest of the smoke model's weights before this module's runs."""
    return _digest(smoke_pneumonia_model[1].model)


class Counted:
    """Counts the UAPs made and the fine-tunings run by ``adversarial_retraining`` inside a
    ``with``.

    Also keeps the model each UAP was made against (``uap_models``) and the model and training
    set of each fine-tuning (``fit_models``, ``fit_sets``).
    """

    def __enter__(self):
        self.uaps = self.fits = 0
        self.uap_models, self.fit_models, self.fit_sets = [], [], []
        self.patch = pytest.MonkeyPatch()
        real_uap, real_fit = uap.universal_perturbation, retrain.fit

        def counted_uap(model, *args, **kwargs):
            self.uaps += 1
            self.uap_models.append(model)
            return real_uap(model, *args, **kwargs)

        def counted_fit(model, train, *args, **kwargs):
            self.fits += 1
            self.fit_models.append(model)
            self.fit_sets.append(train)
            return real_fit(model, train, *args, **kwargs)

        self.patch.setattr(uap, "universal_perturbation", counted_uap)
        self.patch.setattr(retrain, "fit", counted_fit)
        return self

    def __exit__(self, *exc):
        self.patch.undo()


def fingerprints(folder: Path) -> dict:
    """Every file under ``folder``: (modification time in ns, SHA-1 of its content)."""
    return {
        path.relative_to(folder): (
            path.stat().st_mtime_ns,
            hashlib.sha1(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def straight(small, weights_before, tmp_path_factory):
    """Two rounds in one go, in a fresh cache."""
    splits, trained = small
    with Counted() as count:
        run = retrain.adversarial_retraining(
            trained, splits, rounds=2, cache=tmp_path_factory.mktemp("straight"), **SETTINGS
        )
    return run, count


@pytest.fixture(scope="module")
def resumed(small, tmp_path_factory):
    """One round, then two (resuming), then two again (everything reloaded), in another fresh
    cache."""
    splits, trained = small
    cache = tmp_path_factory.mktemp("resumed")
    runs, counts, prints = [], [], []
    for rounds in (1, 2, 2):
        with Counted() as count:
            runs.append(
                retrain.adversarial_retraining(
                    trained, splits, rounds=rounds, cache=cache, **SETTINGS
                )
            )
        counts.append(count)
        prints.append(fingerprints(runs[-1].folder))
    return runs, counts, prints


@pytest.mark.slow
def test_a_run_records_every_round_and_saves_it(straight):
    run, count = straight
    assert list(run.table["round"]) == [0, 1, 2] and run.resumed_rounds == []
    assert (
        run.table["rate"].between(0, 1).all()
        and run.table["clean test accuracy"].between(0, 1).all()
    )
    assert run.last_adv_pred.shape == run.eval_labels.shape == (SETTINGS["eval_images"],)
    assert len(run.adv_preds) == 3 and run.adv_preds[-1] is run.last_adv_pred
    assert count.fits == 2 and count.uaps == 3 + 2 * SETTINGS["uaps_per_round"]
    names = sorted(p.name for p in run.folder.iterdir())
    assert names == ["round0", "round1", "round2"]
    assert not (run.folder / "round0" / "model").exists()  # round 0 is the original model
    assert (run.folder / "round2" / "model" / "model.keras").is_file()


@pytest.mark.slow
def test_each_round_attacks_the_current_model_and_fine_tunes_on_the_half_perturbed_set(
    small, straight
):
    splits, trained = small
    _, count = straight
    k = SETTINGS["uaps_per_round"]
    first, second = count.fit_models
    # round 0: the fresh UAP; round 1: k UAPs, fine-tuning, fresh UAP; round 2: the same
    assert all(m is trained.model for m in count.uap_models[: 1 + k])
    assert count.uap_models[1 + k] is first and all(
        m is first for m in count.uap_models[2 + k : 2 + 2 * k]
    )
    assert count.uap_models[-1] is second and first is not trained.model
    for mixed in count.fit_sets:
        changed = np.any(mixed.images != splits["train"].images, axis=(1, 2, 3))
        # half the images carry a UAP, the rest are clean
        assert 0 < changed.sum() <= len(changed) // 2
        np.testing.assert_array_equal(mixed.labels, splits["train"].labels)


@pytest.mark.slow
def test_the_original_model_is_left_alone(small, straight, weights_before):
    _, trained = small
    run, _ = straight
    assert run.model is not trained.model
    assert _digest(trained.model) == weights_before


@pytest.mark.slow
def test_same_seed_gives_the_same_numbers_in_a_fresh_cache(straight, resumed):
    run, _ = straight
    first, second, _ = resumed[0]
    np.testing.assert_array_equal(first.table[NUMBERS], run.table[NUMBERS].iloc[:2])
    np.testing.assert_array_equal(second.table[NUMBERS], run.table[NUMBERS])
    np.testing.assert_array_equal(second.last_adv_pred, run.last_adv_pred)


@pytest.mark.slow
def test_resuming_reloads_finished_rounds_and_computes_only_the_new_one(resumed):
    (first, second, third), (c1, c2, c3), _ = resumed
    assert first.resumed_rounds == [] and (c1.fits, c1.uaps) == (1, 2 + SETTINGS["uaps_per_round"])
    assert second.resumed_rounds == [0, 1] and (c2.fits, c2.uaps) == (
        1,
        1 + SETTINGS["uaps_per_round"],
    )
    assert third.resumed_rounds == [0, 1, 2] and (c3.fits, c3.uaps) == (0, 0)
    np.testing.assert_array_equal(second.table[NUMBERS].iloc[:2], first.table[NUMBERS])
    np.testing.assert_array_equal(third.table.to_numpy(), second.table.to_numpy())
    for ours, theirs in zip(third.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # the last round's model, reloaded


@pytest.mark.slow
def test_resuming_overwrites_nothing(resumed):
    _, _, (after_one, after_two, after_three) = resumed
    assert {path for path in after_one if path.parts[0] == "round2"} == set()
    assert {path: after_two[path] for path in after_one} == after_one  # same mtimes, same bytes
    assert after_three == after_two


@pytest.mark.slow
def test_a_killed_run_resumes_after_its_last_finished_round(small, straight, tmp_path, monkeypatch):
    splits, trained = small
    done, _ = straight
    folder = tmp_path / done.folder.name
    shutil.copytree(done.folder, folder)  # a run that had finished rounds 0 and 1 ...
    shutil.rmtree(folder / "round2")
    monkeypatch.setattr(retrain.json, "dumps", _killed)  # ... and is killed while saving round 2
    with pytest.raises(KeyboardInterrupt):
        retrain.adversarial_retraining(trained, splits, rounds=2, cache=tmp_path, **SETTINGS)
    monkeypatch.undo()
    # only a staging folder
    assert not (folder / "round2").exists() and len(list(folder.glob(".round2-*"))) == 1
    kept = fingerprints(folder)

    with Counted() as count:
        run = retrain.adversarial_retraining(trained, splits, rounds=2, cache=tmp_path, **SETTINGS)
    assert run.resumed_rounds == [0, 1] and count.fits == 1
    np.testing.assert_array_equal(run.table[NUMBERS], done.table[NUMBERS])
    assert {path: fingerprints(folder)[path] for path in kept} == kept


@pytest.mark.slow
def test_a_partly_written_round_folder_is_moved_aside_not_overwritten(small, straight, tmp_path):
    splits, trained = small
    done, _ = straight
    folder = tmp_path / done.folder.name
    shutil.copytree(done.folder, folder)
    (folder / "round2" / "round.json").unlink()  # round 2 without its last file: not finished
    partial = fingerprints(folder / "round2")
    run = retrain.adversarial_retraining(trained, splits, rounds=2, cache=tmp_path, **SETTINGS)
    assert run.resumed_rounds == [0, 1] and (folder / "round2" / "round.json").is_file()
    aside = [p for p in folder.iterdir() if p.name.startswith("round2.incomplete-")]
    assert len(aside) == 1 and fingerprints(aside[0]) == partial
    np.testing.assert_array_equal(run.table[NUMBERS], done.table[NUMBERS])


def _killed(*args, **kwargs):
    raise KeyboardInterrupt("the run is killed")


@pytest.mark.slow
def test_a_run_in_its_own_process_gives_the_same_numbers_and_counts_its_passes(
    small, straight, tmp_path
):
    from helpers import costs

    splits, trained = small
    run, _ = straight
    costs.reset()
    child = retrain.adversarial_retraining(
        trained, splits, rounds=2, cache=tmp_path, own_process=True, **SETTINGS
    )
    np.testing.assert_array_equal(child.table[NUMBERS], run.table[NUMBERS])
    np.testing.assert_array_equal(child.last_adv_pred, run.last_adv_pred)
    assert child.resumed_rounds == []  # computed by the child, not found in the cache
    passes = costs.snapshot()[costs.architecture_of(trained.model)]
    assert passes["backward"] > len(splits["train"])  # the child's fine-tuning, counted here
