"""Paper 000's training protocol and the cache of trained models."""

import json
import shutil
import sys
import urllib.error

import keras
import numpy as np
import pytest

from helpers import cache, data, training
from helpers.models import WeightsUnavailableError, build_model, predict_labels, predict_proba
from helpers.scales import get_preset
from helpers.training import augmenter, fit, get_or_train, learning_rate_at, model_key

# A tiny smoke preset: 300 training images, 2 epochs of the small CNN.
TINY = get_preset(
    "smoke", epochs=2, max_train=300, train_per_class=150, test_per_class=50, max_test=100
)


def tiny_splits(seed=0):
    return data.load_for_scale("pneumonia", TINY, seed=seed, source="synthetic", verbose=False)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """(splits, TrainedModel): the small CNN trained once on TINY into a module cache."""
    cache = tmp_path_factory.mktemp("tiny-models")
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the per-test cache exists
        patch.setenv("COURSE_CACHE_DIR", str(cache / "course-cache"))
        splits = tiny_splits()
        return splits, get_or_train(splits, "small_cnn", TINY, seed=0, cache=cache, verbose=False)


def same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


# --------------------------------------------------------------------------- schedule


def test_learning_rate_schedule_of_paper_000():
    rates = [learning_rate_at(e, 50) for e in range(50)]
    assert rates[:40] == [1e-3] * 40  # epochs 1-40
    assert rates[40:45] == [1e-4] * 5  # epochs 41-45 (index 40 is epoch 41)
    assert rates[45:] == [1e-5] * 5  # epochs 46-50
    assert learning_rate_at(39, 50) == 1e-3 and learning_rate_at(40, 50) == 1e-4


def test_learning_rate_schedule_scales_with_the_base_and_the_epochs():
    assert [learning_rate_at(e, 10, base=0.1) for e in range(10)] == [0.1] * 8 + [0.01, 0.001]
    # smoke: 6 epochs
    assert [learning_rate_at(e, 6) for e in range(6)] == [1e-3] * 4 + [1e-4, 1e-5]


@pytest.mark.parametrize("epochs", range(1, 13))
def test_learning_rate_schedule_for_few_epochs(epochs):
    rates = [learning_rate_at(e, epochs) for e in range(epochs)]
    assert rates[0] == 1e-3  # never start (or, for one epoch, train only) at 1e-5
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert set(rates) <= {1e-3, 1e-4, 1e-5}
    assert rates.count(1e-3) >= 0.8 * epochs - 1  # most of the training at the base rate


def test_one_epoch_trains_at_the_base_rate():
    assert learning_rate_at(0, 1) == 1e-3 and learning_rate_at(0, 1, base=0.01) == 0.01


# -------------------------------------------------------------------------- fit, augmentation, keys


@pytest.mark.parametrize("train", [np.zeros((4, 28, 28, 1)), None, "splits"])
def test_fit_rejects_what_is_not_a_dataset(train):
    model = build_model("small_cnn", (28, 28, 1), 2, weights=None)
    with pytest.raises(ValueError, match="train must be a helpers.data.MedDataset"):
        fit(model, train, epochs=1)


def test_fit_needs_at_least_one_epoch():
    model = build_model("small_cnn", (28, 28, 1), 2, weights=None)
    train = data.load("pneumonia", "train", source="synthetic", synthetic_count=8, verbose=False)
    with pytest.raises(ValueError, match="epochs=0"):
        fit(model, train, epochs=0)


def test_augmenter_keeps_shape_and_range_and_moves_pixels():
    x = data.load("derma", "val", source="synthetic", synthetic_count=8, verbose=False).images
    aug = augmenter(seed=0)
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert np.abs(out - x).mean() > 1e-3  # rotated/shifted
    assert np.abs(out - x).mean() < 0.2  # by a few degrees / pixels only
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)


def test_training_pipeline_batches_and_keeps_range():
    train = data.load("pneumonia", "train", source="synthetic", synthetic_count=70, verbose=False)
    batches = list(training.make_pipeline(train, 32, shuffle=True, augment=True, seed=0))
    assert [len(x) for x, _ in batches] == [32, 32, 6]
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert sorted(labels.tolist()) == sorted(train.labels.tolist())
    assert labels.tolist() != train.labels.tolist()  # shuffled


def test_training_reads_the_images_a_batch_at_a_time(monkeypatch):
    """Paper scale in bounded memory: fitting never holds more than a batch of float images."""
    train = data.load("pneumonia", "train", source="synthetic", synthetic_count=150, verbose=False)
    train = data.oversample(train, seed=0)  # oversampled by index: no pixel copied
    assert len(train.stored) == 150 < len(train)
    val = data.load("pneumonia", "val", source="synthetic", synthetic_count=300, verbose=False)
    read, take = [], data.MedDataset.take

    def spy(self, positions):
        read.append(len(np.asarray(positions).reshape(-1)))
        return take(self, positions)

    monkeypatch.setattr(data.MedDataset, "take", spy)
    model = build_model("small_cnn", (28, 28, 1), 2, weights=None)
    training.fit(model, train, val, epochs=2, batch_size=16)
    assert read and max(read) <= 256  # training batches of 16, validation of 256
    assert sum(read) == 2 * (len(train) + len(val))  # every image read once per epoch, none more


@pytest.mark.parametrize("name", ["pneumonia", "chest"])
def test_fit_traces_the_training_step_once(name):
    """The optimizer's and the metrics' variables exist before Keras traces the training step:
    a variable created while tracing would make TensorFlow trace the whole step a second time."""
    train = data.load(name, "train", source="synthetic", synthetic_count=40, verbose=False)
    model = build_model(
        "small_cnn",
        (28, 28, 1),
        train.info.n_classes,
        multilabel=train.info.multilabel,
        weights=None,
    )
    traces, step = [], model.train_step

    def counted(batch):
        traces.append(1)  # runs only while TensorFlow traces the step
        return step(batch)

    object.__setattr__(model, "train_step", counted)
    training.fit(model, train, epochs=2, batch_size=16)
    assert len(traces) == 1


def test_model_key_format():
    assert (
        model_key("pneumonia", "real", 28, "small_cnn", None, "smoke", 0)
        == "pneumonia-real-28px-small_cnn-scratch-smoke-seed0"
    )
    assert (
        model_key("oct", "synthetic", 64, "inception_v3", "imagenet", "gpu", 3)
        == "oct-synthetic-64px-inception_v3-imagenet-gpu-seed3"
    )


def test_model_key_tells_overridden_training_settings_apart():
    def key(preset):
        return model_key("pneumonia", "real", 28, "small_cnn", None, preset, 0)

    for scale in ("smoke", "cpu", "gpu", "paper"):  # the shipped presets keep their keys
        assert (
            key(get_preset(scale))
            == key(scale)
            == f"pneumonia-real-28px-small_cnn-scratch-{scale}-seed0"
        )
    # attack settings: same model
    assert key(get_preset("cpu", uap_eps=0.02, eval_images=10)) == key("cpu")
    assert key(get_preset("cpu", epochs=25)) == key("cpu")  # the preset's own value
    longer, shorter = key(get_preset("cpu", epochs=50)), key(get_preset("cpu", epochs=5))
    assert len({longer, shorter, key("cpu")}) == 3
    assert longer.startswith("pneumonia-real-28px-small_cnn-scratch-cpu-") and longer.endswith(
        "-seed0"
    )
    assert key(get_preset("cpu", epochs=50)) == longer  # repeatable
    for field, value in [
        ("backbone_epochs", 9),
        ("batch_size", 8),
        ("backbone_input", 96),
        ("train_per_class", 10),
        ("test_per_class", 10),
        ("max_train", 10),
        ("max_test", 10),
        ("image_size", 64),
    ]:
        assert key(get_preset("cpu", **{field: value})) not in (key("cpu"), longer), field


# ----------------------------------------------------------------------- the cache before the build


def small_model():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


@pytest.fixture
def offline_builds(monkeypatch):
    """training.model_for raises WeightsUnavailableError for ImageNet weights; returns the weights
    asked for."""
    asked = []

    def model_for(info, architecture, size, weights=None, *args, **kwargs):
        asked.append(weights)
        if weights is not None:
            raise WeightsUnavailableError("Could not download the ImageNet weights (test)")
        return small_model()

    monkeypatch.setattr(training, "model_for", model_for)
    return asked


@pytest.fixture
def fits(monkeypatch):
    """training.fit records its calls instead of training."""
    calls = []

    def fake_fit(model, train, *args, **kwargs):
        calls.append(kwargs.get("epochs"))
        return {"loss": [0.5]}

    monkeypatch.setattr(training, "fit", fake_fit)
    return calls


def synthetic_splits():
    return {
        "train": data.load(
            "pneumonia", "train", source="synthetic", synthetic_count=32, verbose=False
        )
    }


def save_as(cache, key, meta=None):
    training.save_trained(small_model(), cache / key, {"key": key, **(meta or {})}, {"loss": [0.1]})


@pytest.mark.parametrize("scale", ["gpu", "cpu"])
def test_cached_imagenet_model_is_loaded_without_building(scale, tmp_path, offline_builds, fits):
    splits, cache = synthetic_splits(), tmp_path / "models"
    key = model_key("pneumonia", "synthetic", 28, "mobilenet_v2", "imagenet", scale, 0)
    save_as(cache, key, {"weights": "imagenet"})
    trained = get_or_train(splits, "mobilenet_v2", scale, cache=cache, verbose=False)
    assert trained.from_cache and trained.key == key and trained.meta["weights"] == "imagenet"
    assert offline_builds == [] and fits == []  # nothing built, downloaded or trained
    assert sorted(p.name for p in cache.iterdir()) == [key]


def test_offline_fallback_trains_once_under_the_scratch_key_then_loads_it(
    tmp_path, offline_builds, fits, capsys
):
    splits, cache = synthetic_splits(), tmp_path / "models"
    first = get_or_train(splits, "mobilenet_v2", "cpu", cache=cache)
    assert "RANDOM INITIALISATION" in capsys.readouterr().out
    assert (
        first.key == "pneumonia-synthetic-28px-mobilenet_v2-scratch-cpu-seed0"
        and not first.from_cache
    )
    assert offline_builds == ["imagenet", None] and fits == [get_preset("cpu").backbone_epochs]
    again = get_or_train(splits, "mobilenet_v2", "cpu", cache=cache, verbose=False)
    assert again.from_cache and again.key == first.key
    assert fits == [get_preset("cpu").backbone_epochs]  # not trained again
    assert sorted(p.name for p in cache.iterdir()) == [first.key]


def test_strict_scale_offline_without_a_cached_model_raises(tmp_path, offline_builds, fits):
    with pytest.raises(WeightsUnavailableError, match="ImageNet"):
        get_or_train(
            synthetic_splits(), "mobilenet_v2", get_preset("gpu"), cache=tmp_path / "models"
        )
    assert fits == [] and not (tmp_path / "models").exists()


def test_get_or_train_takes_a_scale_name(tmp_path, fits):
    cache = tmp_path / "models"
    save_as(cache, "pneumonia-synthetic-28px-small_cnn-scratch-smoke-seed0")
    trained = get_or_train(synthetic_splits(), "small_cnn", "smoke", cache=cache, verbose=False)
    assert trained.from_cache and fits == []


@pytest.mark.parametrize(
    "preset, splits, parameter",
    [
        ("tiny", None, "preset="),
        (28, None, "preset="),
        ("smoke", "pneumonia", "splits must"),
        ("smoke", {"test": None}, "splits must"),
    ],
)
def test_get_or_train_rejects_bad_arguments(preset, splits, parameter, tmp_path, fits):
    with pytest.raises(ValueError, match=parameter):
        get_or_train(
            synthetic_splits() if splits is None else splits, "small_cnn", preset, cache=tmp_path
        )
    assert fits == [] and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the model cache


@pytest.mark.slow
def test_get_or_train_trains_and_saves_under_its_key(trained_tiny):
    splits, trained = trained_tiny
    assert not trained.from_cache
    assert trained.key == model_key("pneumonia", "synthetic", 28, "small_cnn", None, TINY, 0)
    # TINY overrides smoke
    assert trained.key.startswith("pneumonia-synthetic-28px-small_cnn-scratch-smoke-")
    assert trained.key != "pneumonia-synthetic-28px-small_cnn-scratch-smoke-seed0"
    assert trained.path.name == trained.key
    assert sorted(p.name for p in trained.path.iterdir()) == [
        "history.json",
        "meta.json",
        "model.keras",
    ]
    meta = trained.meta
    assert (meta["data"], meta["architecture"], meta["epochs"], meta["train_images"]) == (
        "SYNTHETIC",
        "small_cnn",
        2,
        len(splits["train"]),
    )
    assert len(trained.history["loss"]) == 2 and "val_accuracy" in trained.history
    assert trained.history["learning_rate"] == pytest.approx([1e-3, 1e-5])


@pytest.mark.slow
def test_second_call_loads_from_the_cache_without_training(trained_tiny, monkeypatch):
    splits, trained = trained_tiny

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(training, "fit", no_training)
    again = get_or_train(
        splits, "small_cnn", TINY, seed=0, cache=trained.path.parent, verbose=False
    )
    assert again.from_cache and again.key == trained.key and again.path == trained.path
    assert again.meta == trained.meta
    x = splits["test"].images
    np.testing.assert_array_equal(predict_proba(again.model, x), predict_proba(trained.model, x))


@pytest.mark.slow
def test_retrain_keeps_the_old_model(trained_tiny, tmp_path):
    splits, trained = trained_tiny
    cache = tmp_path / "models"
    shutil.copytree(trained.path, cache / trained.key)
    old_model = (cache / trained.key / "model.keras").read_bytes()
    again = get_or_train(
        splits, "small_cnn", TINY, seed=0, cache=cache, retrain=True, verbose=False
    )
    assert not again.from_cache and again.path == cache / trained.key
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 2 and folders[0] == trained.key
    assert folders[1].startswith(trained.key + ".old-")
    assert (cache / folders[1] / "model.keras").read_bytes() == old_model  # nothing lost
    assert (cache / trained.key / "model.keras").is_file()


@pytest.mark.slow
def test_training_is_deterministic(trained_tiny, tmp_path):
    splits, trained = trained_tiny
    twin = get_or_train(
        tiny_splits(), "small_cnn", TINY, seed=0, cache=tmp_path / "other", verbose=False
    )
    assert not twin.from_cache
    assert same_weights(twin.model, trained.model)
    x = splits["test"].images
    np.testing.assert_array_equal(predict_proba(twin.model, x), predict_proba(trained.model, x))
    assert twin.history["loss"] == trained.history["loss"]


@pytest.mark.slow
def test_offline_imagenet_falls_back_to_random_initialisation(monkeypatch, tmp_path, capsys):
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def urlretrieve(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", urlretrieve)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    train = data.load("pneumonia", "train", source="synthetic", synthetic_count=32, verbose=False)
    splits = {"train": train}
    strict = get_preset(
        "cpu", epochs=1, backbone_epochs=1, backbone_input=32, offline_fallback=False
    )
    with pytest.raises(WeightsUnavailableError, match="MobileNetV2"):
        get_or_train(splits, "mobilenet_v2", strict, cache=tmp_path / "models", verbose=False)
    assert not (tmp_path / "models").exists()

    compile_for = training.compile_for

    def compile_eagerly(model, *args, **kwargs):  # tracing MobileNetV2's train step takes ~20 s
        compile_for(model, *args, **kwargs)
        model.run_eagerly = True

    monkeypatch.setattr(training, "compile_for", compile_eagerly)
    lenient = get_preset("cpu", epochs=1, backbone_epochs=1, backbone_input=32)
    assert lenient.weights == "imagenet" and lenient.offline_fallback
    capsys.readouterr()
    trained = get_or_train(splits, "mobilenet_v2", lenient, cache=tmp_path / "models")
    out = capsys.readouterr().out
    assert "RANDOM INITIALISATION" in out and "Could not download the ImageNet weights" in out
    assert trained.key == model_key("pneumonia", "synthetic", 28, "mobilenet_v2", None, lenient, 0)
    assert trained.meta["weights"] == "none (random initialisation)"
    assert not trained.from_cache and len(trained.history["loss"]) == 1
    # the saved model, without the optimizer state
    assert getattr(trained.model, "optimizer", None) is None
    assert trained.model.get_layer("resize").output.shape[1:3] == (32, 32)
    assert (tmp_path / "models" / trained.key / "model.keras").is_file()
    assert predict_labels(trained.model, train.images[:4]).shape == (4,)
    monkeypatch.setattr(
        training, "fit", lambda *args, **kwargs: pytest.fail("trained again offline")
    )
    again = get_or_train(splits, "mobilenet_v2", lenient, cache=tmp_path / "models", verbose=False)
    # offline again: the random-init model reloaded
    assert again.from_cache and again.key == trained.key


# --------------------------------------------------------------------------- acceptance (real data)


@pytest.mark.slow
def test_smoke_model_reaches_80_percent_on_real_pneumonia(real_medmnist_dir, request):
    if real_medmnist_dir is None:
        pytest.skip("no real pneumoniamnist.npz (set MEDMNIST_DIR)")
    splits, trained = request.getfixturevalue("smoke_pneumonia_model")  # trained only when needed
    test = splits["test"]
    assert not test.synthetic and trained.key == "pneumonia-real-28px-small_cnn-scratch-smoke-seed0"
    # the smoke scale's balanced subset
    np.testing.assert_array_equal(test.class_counts(), [150, 150])
    accuracy = float((predict_labels(trained.model, test.images) == test.labels).mean())
    assert accuracy >= 0.80, f"smoke-scale test accuracy {accuracy:.3f} < 0.80"


@pytest.mark.slow
def test_saving_twice_in_the_same_second_keeps_both_old_models(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    folder = tmp_path / "key"
    for round_ in range(3):
        training.save_trained(model, folder, {"key": "key", "round": round_}, {"loss": [1.0]})
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert len(kept) == 3 and "key" in kept  # nothing lost
    assert json.loads((folder / "meta.json").read_text())["round"] == 2


@pytest.mark.slow
def test_a_rehearsal_trains_random_backbones_on_synthetic_data_under_the_scales_label(
    monkeypatch, tmp_path
):
    from helpers import models

    real_backbone = models._backbone

    def no_download(arch, side, weights):
        assert weights is None, "a rehearsal must not download ImageNet weights"
        return real_backbone(arch, side, weights)

    monkeypatch.setattr(models, "_backbone", no_download)
    monkeypatch.setenv("MEDMNIST_DIR", str(tmp_path))  # even with a data folder: synthetic data
    preset = get_preset("gpu", rehearsal=True)
    splits = data.load_for_scale("pneumonia", preset, verbose=False)
    assert (
        splits["train"].synthetic
        and splits["train"].size == 64
        and len(splits["train"]) <= preset.max_train
    )
    trained = get_or_train(splits, "mobilenet_v2", preset, verbose=False)
    assert (
        trained.meta["weights"] == "imagenet"
        and "random initialisation" in trained.meta["rehearsal"]
    )
    assert (
        "-gpu-rehearsal-" in trained.key
        and trained.model.get_layer("resize").output.shape[1] == 128
    )


@pytest.mark.slow
def test_training_in_its_own_process_gives_the_same_model_and_counts_its_passes(
    trained_tiny, tmp_path, capfd
):
    from helpers import costs

    splits, trained = trained_tiny
    costs.reset()
    child = get_or_train(
        splits, "small_cnn", TINY, seed=0, cache=tmp_path / "own", verbose=False, own_process=True
    )
    assert not child.from_cache and child.key == trained.key
    assert same_weights(child.model, trained.model)  # same seed, same model
    assert child.history["loss"] == pytest.approx(trained.history["loss"])
    epochs = TINY.epochs
    assert costs.snapshot()["small_cnn"] == {
        "forward": epochs * (len(splits["train"]) + len(splits["val"])),
        "backward": epochs * len(splits["train"]),
    }
    shown = capfd.readouterr().out
    assert "small_cnn" in shown  # the child's progress bar is shown here ...
    assert "absl::InitializeLog" not in shown and "cudart_stub" not in shown  # ... not TF's logs
    assert [p.name for p in (tmp_path / "own").iterdir()] == [trained.key]
    assert not list(cache.cache_dir().glob(".own-process-*"))  # no job folder left


def test_training_in_its_own_process_reports_the_childs_error(tmp_path, monkeypatch):
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'ValueError: something the child could not do'\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(failing))
    with pytest.raises(RuntimeError, match="(?s)exit code 3.*could not do.*own_process=False"):
        get_or_train(
            tiny_splits(), "small_cnn", TINY, cache=tmp_path / "m", verbose=False, own_process=True
        )
    assert not (tmp_path / "m").exists()  # no model
    assert not list(cache.cache_dir().glob(".own-process-*"))  # no job folder left
