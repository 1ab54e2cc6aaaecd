"""The course's acceptance numbers at the `cpu` scale, on the real PneumoniaMNIST.

Skipped on a machine without the real file. Trains the cpu-scale small CNN once (about a
minute on two cores): it must reach 85 % test accuracy, a non-targeted UAP at zeta = 4 %
(p = 2) must fool far more test images than random noise of the same norm, and UAPs targeted
to each class must lift R_s well above its baseline; a UAP made from natural photos alone
(paper 001: one pass, no medical image) must also fool far more test images than random noise;
differential evolution must find 1- and 3-pixel adversarial images, more (or as many) with 3
pixels, and more than the same number of random 3-pixel candidates without the evolution (its own
starting population);
five rounds of adversarial retraining against UAPs targeted to PNEUMONIA (paper 000, Fig. 6:
zeta = 2 %, p = 2) must keep the clean test accuracy and leave R_s lower than before (about two
minutes).
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import data, models, natural, pixel, retrain, scales, training, uap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cpu_pneumonia(tmp_path_factory, real_medmnist_dir):
    if real_medmnist_dir is None:
        pytest.skip("the real PneumoniaMNIST file is not available")
    preset = scales.get_preset("cpu")
    cache = tmp_path_factory.mktemp("cpu-cache")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setenv("COURSE_CACHE_DIR", str(cache))
        warnings.filterwarnings("ignore", message=".*MD5.*")
        splits = data.load_for_scale(
            "pneumonia", preset, seed=0, root=real_medmnist_dir, source="real", verbose=False
        )
        trained = training.get_or_train(
            splits, "small_cnn", preset, seed=0, cache=cache / "models", verbose=False
        )
    return preset, splits, trained.model


def test_cpu_model_reaches_85_percent(cpu_pneumonia):
    _, splits, model = cpu_pneumonia
    accuracy = np.mean(models.predict_labels(model, splits["test"].images) == splits["test"].labels)
    assert accuracy >= 0.85


def test_cpu_uap_fools_far_more_than_random(cpu_pneumonia):
    preset, splits, model = cpu_pneumonia
    attack = splits["train"].images[: preset.uap_images]
    result = uap.universal_perturbation(
        model, attack, zeta=0.04, norm=2, eps=preset.uap_eps, i_max=preset.uap_i_max, progress=False
    )
    test = splits["test"].images
    fooled = uap.evaluate(model, test, result.perturbation)["fooling_rate"]
    control = uap.evaluate(model, test, uap.random_perturbation(test.shape[1:], result.xi, 2))[
        "fooling_rate"
    ]
    assert fooled >= 0.10 and fooled >= 5 * max(control, 0.01)


@pytest.mark.parametrize("target", [0, 1])
def test_cpu_targeted_uap_lifts_success_above_baseline(cpu_pneumonia, target):
    preset, splits, model = cpu_pneumonia
    attack = splits["train"].images[: preset.uap_images]
    result = uap.universal_perturbation(
        model,
        attack,
        zeta=0.04,
        norm=2,
        eps=preset.uap_eps,
        i_max=preset.uap_i_max,
        target=target,
        progress=False,
    )
    scores = uap.evaluate(model, splits["test"].images, result.perturbation, target=target)
    assert scores["success_rate"] >= scores["success_baseline"] + 0.10


def _natural_photo_folder():
    """$NATURAL_IMAGES_DIR or ../shared's ImageNet samples when present; else None (scikit-image
    photos)."""
    shared = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "natural"
        / "imagenet-sample-images"
    )
    for folder in (os.environ.get(natural.ENV_NATURAL_DIR), shared):
        if folder and Path(folder).is_dir():
            return folder
    return None


def test_cpu_natural_image_uap_fools_far_more_than_random(cpu_pneumonia):
    preset, splits, model = cpu_pneumonia
    photos, _ = natural.natural_images(
        28, 1, count=preset.natural_images, folder=_natural_photo_folder()
    )
    test = splits["test"].images
    # the size of a training-image UAP at 4 %
    xi = uap.xi_from_zeta(splits["train"].images, 0.04, 2)
    result, log = natural.uap_in_chunks(
        model, photos, xi=xi, eval_images=test, chunk=preset.natural_chunk, eps=preset.uap_eps
    )
    fooled = uap.evaluate(model, test, result.perturbation)["fooling_rate"]
    control = uap.evaluate(model, test, uap.random_perturbation(test.shape[1:], xi, 2))[
        "fooling_rate"
    ]
    assert len(log) == -(-len(photos) // preset.natural_chunk)
    assert fooled >= 0.10 and fooled >= 5 * max(control, 0.01)


def test_cpu_pixel_attack_finds_adversarial_pixels_random_pixels_rarely(cpu_pneumonia):
    preset, splits, model = cpu_pneumonia
    chosen = pixel.images_per_class(model, splits["test"], preset.pixel_images_per_class, seed=0)
    images = splits["test"].images[np.concatenate(list(chosen.values()))]
    settings = dict(
        population=preset.pixel_population,
        generations=preset.pixel_generations,
        seed=0,
        progress=False,
    )
    one = pixel.pixel_attack(model, images, pixels=1, **settings)
    three = pixel.pixel_attack(model, images, pixels=3, **settings)
    control = pixel.random_pixels(model, images, pixels=3, tries=preset.pixel_population, seed=0)
    assert one.success.sum() >= 1
    assert three.success.sum() >= max(3, one.success.sum())
    # Each image's random stream makes the control exactly DE's starting population: whatever it
    # fools, DE fools at generation 0. The evolution must fool more than its random start.
    assert np.all(three.success[control.success])
    assert three.success.sum() > control.success.sum()


def test_cpu_retraining_lowers_targeted_success_and_keeps_accuracy(cpu_pneumonia, tmp_path):
    preset, splits, model = cpu_pneumonia
    key = training.model_key(
        "pneumonia", "real", preset.image_size, "small_cnn", None, preset.name, 0
    )
    target = splits["test"].info.short_names.index("PNEUMONIA")
    run = retrain.adversarial_retraining(
        training.TrainedModel(model, key, tmp_path, {}),
        splits,
        zeta=0.02,
        norm=2,
        target=target,
        eps=preset.uap_eps,
        rounds=preset.retrain_rounds,
        uaps_per_round=preset.retrain_uaps,
        epochs=preset.retrain_epochs,
        attack_images=preset.uap_images,
        i_max=preset.uap_i_max,
        eval_images=preset.eval_images,
        seed=0,
        cache=tmp_path,
        progress=False,
    )
    table = run.table
    before, after = table.iloc[0], table.iloc[-1]
    assert list(table["round"]) == list(range(preset.retrain_rounds + 1)) == [0, 1, 2, 3, 4, 5]
    assert before["rate"] > before["baseline"]  # the UAP works before retraining
    assert (table["clean test accuracy"] - before["clean test accuracy"]).abs().max() <= 0.05
    assert after["rate"] < before["rate"]
