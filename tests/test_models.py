"""Model building, preprocessing inside the model, offline ImageNet weights, ART wrapping."""

import importlib
import urllib.error

import keras
import numpy as np
import pytest

from helpers import models
from helpers.data import get_info
from helpers.models import (
    ARCHITECTURES,
    BackbonePreprocess,
    GreyToRGB,
    WeightsUnavailableError,
    build_model,
    check_images,
    is_multilabel,
    model_for,
    predict_labels,
    predict_proba,
    to_art_classifier,
)
from helpers.training import load_trained, save_trained

RNG = np.random.default_rng(0)


def images(n=6, size=28, channels=1):
    return RNG.uniform(0, 1, size=(n, size, size, channels)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_mobilenet():
    """MobileNetV2 from random initialisation on 28 px greyscale images (resized to 32 inside)."""
    return build_model("mobilenet_v2", (28, 28, 1), 3, weights=None)


@pytest.fixture
def no_weight_downloads(monkeypatch, tmp_path):
    """Keras finds no cached weights and every weight download fails as it does offline."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    attempts = []

    def urlretrieve(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", urlretrieve)
    # empty weights cache
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    return attempts


# --------------------------------------------------------------------------- build_model


@pytest.mark.parametrize("shape, classes", [((28, 28, 1), 2), ((28, 28, 3), 7), ((64, 64, 1), 4)])
def test_small_cnn_softmax_head(shape, classes):
    model = build_model("small_cnn", shape, classes, weights=None)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, classes)
    out = predict_proba(model, images(5, shape[0], shape[2]))
    assert out.shape == (5, classes)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(out >= 0) and not is_multilabel(model)


def test_binary_dataset_gets_two_softmax_units():
    model = model_for(get_info("pneumonia"), "small_cnn", 28)
    assert model.output_shape == (None, 2)
    assert model.get_layer("head").activation.__name__ == "softmax"


def test_multilabel_head_is_sigmoid():
    model = model_for(get_info("chest"), "small_cnn", 28)
    assert is_multilabel(model) and model.output_shape == (None, 14)
    out = predict_proba(model, images(4))
    assert np.all((out > 0) & (out < 1))
    assert np.all(np.abs(out.sum(axis=1) - 1.0) > 0.5)  # 14 independent probabilities


def test_small_cnn_ignores_imagenet_weights_and_is_seeded():
    a = build_model("small_cnn", (28, 28, 1), 2, weights="imagenet", seed=3)
    b = build_model("small_cnn", (28, 28, 1), 2, weights=None, seed=3)
    c = build_model("small_cnn", (28, 28, 1), 2, weights=None, seed=4)
    assert a.name == "small_cnn_scratch" and a.medattack_weights is None
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="n_classes=1"):
        build_model("small_cnn", (28, 28, 1), 1, weights=None)


def test_unknown_architecture_names_architecture():
    with pytest.raises(ValueError, match="architecture='alexnet'") as error:
        build_model("alexnet", (28, 28, 1), 2)
    assert "inception_v3" in str(error.value)


def test_architecture_names_are_normalised():
    assert models.get_architecture("Inception-V3").name == "inception_v3"


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 2), (28, 32, 1), (28, 28, 1, 1)])
def test_bad_input_shape_is_rejected(shape):
    with pytest.raises(ValueError, match="input_shape="):
        build_model("small_cnn", shape, 2, weights=None)


@pytest.mark.parametrize("weights", ["random", "ImageNet", "/tmp/weights.h5"])
def test_weights_must_be_imagenet_or_none(weights):
    with pytest.raises(ValueError, match="weights="):
        build_model("small_cnn", (28, 28, 1), 2, weights=weights)


def test_paper_architectures_use_their_papers_input_sizes():
    assert (
        ARCHITECTURES["inception_v3"].paper_input == 299
        and ARCHITECTURES["inception_v3"].min_input == 75
    )
    assert ARCHITECTURES["vgg16"].paper_input == 224
    assert (
        ARCHITECTURES["small_cnn"].optimizer == "adam" and ARCHITECTURES["vgg16"].optimizer == "sgd"
    )


# --------------------------------------------------------------------------- backbones


def test_backbone_converts_grey_and_resizes_inside(tiny_mobilenet):
    model = tiny_mobilenet
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["image", "grey_to_rgb", "resize", "preprocess"] and names[-1] == "head"
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 3)
    assert model.get_layer("grey_to_rgb").output.shape[1:] == (28, 28, 3)
    # raised to MobileNetV2's minimum
    assert model.get_layer("resize").output.shape[1:] == (32, 32, 3)
    assert model.get_layer("preprocess").mode == "tf"
    out = predict_proba(model, images(2))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert model.name == "mobilenet_v2_scratch"


def test_rgb_backbone_at_its_own_size_needs_no_conversion_or_resize():
    model = build_model("vgg16", (32, 32, 3), 2, weights=None)
    names = [layer.name for layer in model.layers]
    assert "grey_to_rgb" not in names and "resize" not in names
    assert model.get_layer("preprocess").mode == "caffe"
    assert predict_proba(model, images(2, 32, 3)).shape == (2, 2)


def test_grey_to_rgb_repeats_the_channel():
    x = images(2)
    out = np.asarray(GreyToRGB()(x))
    assert out.shape == (2, 28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], x[..., 0])


KERAS_MODULES = {
    "inception_v3": "inception_v3",
    "vgg16": "vgg16",
    "vgg19": "vgg19",
    "resnet50": "resnet50",
    "inception_resnet_v2": "inception_resnet_v2",
    "densenet121": "densenet",
    "densenet169": "densenet",
    "mobilenet_v2": "mobilenet_v2",
}


@pytest.mark.parametrize("architecture", sorted(KERAS_MODULES))
def test_backbone_preprocess_matches_keras_preprocess_input(architecture):
    arch = ARCHITECTURES[architecture]
    module = importlib.import_module(f"keras.applications.{KERAS_MODULES[architecture]}")
    x = RNG.uniform(0, 1, size=(3, 8, 8, 3)).astype(np.float32)
    expected = module.preprocess_input(x.copy() * 255.0)
    got = np.asarray(BackbonePreprocess(arch.preprocess)(x))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


def test_backbone_preprocess_modes_by_hand():
    x = np.array([[[[0.0, 0.5, 1.0]]]], dtype=np.float32)  # one RGB pixel
    np.testing.assert_allclose(BackbonePreprocess("tf")(x), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    np.testing.assert_allclose(
        BackbonePreprocess("caffe")(x),
        [[[[255 - 103.939, 127.5 - 116.779, 0 - 123.68]]]],
        atol=1e-4,
    )
    np.testing.assert_allclose(
        BackbonePreprocess("torch")(x),
        [[[[-0.485 / 0.229, 0.044 / 0.224, 0.594 / 0.225]]]],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="mode="):
        BackbonePreprocess("keras")


def test_imagenet_weights_offline_raise_a_helpful_error(no_weight_downloads):
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("mobilenet_v2", (28, 28, 1), 2, weights="imagenet")
    message = str(error.value)
    assert "MobileNetV2" in message and "URL fetch failure" in message
    assert "weights=None" in message and "internet" in message and ".keras" in message
    assert len(no_weight_downloads) == 1 and "mobilenet_v2" in no_weight_downloads[0]


def test_other_backbone_errors_are_not_disguised_as_offline(monkeypatch):
    def broken(**kwargs):
        raise ValueError("input_shape is too small")

    monkeypatch.setattr(keras.applications, "MobileNetV2", broken)
    with pytest.raises(ValueError, match="too small"):
        build_model("mobilenet_v2", (28, 28, 1), 2, weights="imagenet")


# --------------------------------------------------------------------------- save / load


def test_save_and_load_keep_predictions(tiny_mobilenet, tmp_path):
    folder = tmp_path / "models" / "tiny"
    save_trained(tiny_mobilenet, folder, {"key": "tiny", "saved": "now"}, {"loss": [0.5]})
    assert sorted(p.name for p in folder.iterdir()) == ["history.json", "meta.json", "model.keras"]
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]  # no staging folder left
    loaded = load_trained(folder, verbose=False)
    assert loaded.from_cache and loaded.key == "tiny" and loaded.history == {"loss": [0.5]}
    assert isinstance(loaded.model.get_layer("grey_to_rgb"), GreyToRGB)
    assert isinstance(loaded.model.get_layer("preprocess"), BackbonePreprocess)
    assert loaded.model.get_layer("preprocess").mode == "tf"
    x = images(4)
    np.testing.assert_array_equal(predict_proba(loaded.model, x), predict_proba(tiny_mobilenet, x))


def test_load_trained_rejects_a_folder_without_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras"):
        load_trained(tmp_path)


# --------------------------------------------------------------------------- inputs and predictions


@pytest.fixture(scope="module")
def small_cnn():
    return build_model("small_cnn", (28, 28, 1), 2, weights=None)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros((4, 28, 28)), "shape"),
        (np.zeros((4, 32, 32, 1)), "shape"),
        (np.zeros((4, 28, 28, 3)), "shape"),
        (np.full((4, 28, 28, 1), 255.0), r"\[0, 1\]"),
        (np.full((4, 28, 28, 1), -0.1), r"\[0, 1\]"),
    ],
)
def test_check_images_rejects_with_a_clear_message(small_cnn, bad, fragment):
    with pytest.raises(ValueError, match=fragment) as error:
        check_images(bad, small_cnn, name="x_test")
    assert "x_test" in str(error.value)


def test_check_images_message_suggests_dividing_by_255(small_cnn):
    with pytest.raises(ValueError, match="255"):
        check_images(np.full((1, 28, 28, 1), 200, dtype=np.uint8), small_cnn)


def test_check_images_accepts_valid_batches(small_cnn):
    x = check_images(np.ones((2, 28, 28, 1), dtype=np.float64), small_cnn)
    assert x.dtype == np.float32 and x.shape == (2, 28, 28, 1)
    assert check_images(np.zeros((0, 28, 28, 1)), small_cnn).shape == (0, 28, 28, 1)


def pixel_model(activation):
    """2x2 images -> 3 outputs: output k is driven by pixel k alone (weights set by hand)."""
    inputs = keras.Input((2, 2, 1))
    x = keras.layers.Flatten()(inputs)
    head = keras.layers.Dense(3, activation=activation, name="head")
    model = keras.Model(inputs, head(x))
    kernel = np.zeros((4, 3), np.float32)
    kernel[0, 0] = kernel[1, 1] = kernel[2, 2] = 10.0
    head.set_weights([kernel, np.full(3, -5.0, np.float32)])  # sigmoid(10 p - 5) > 0.5 iff p > 0.5
    return model


def test_predict_labels_single_label_is_the_argmax():
    x = np.array([[0.9, 0.1, 0.2, 0.0], [0.1, 0.2, 0.8, 0.0], [0.1, 0.7, 0.3, 1.0]], np.float32)
    labels = predict_labels(pixel_model("softmax"), x.reshape(3, 2, 2, 1), batch_size=2)
    np.testing.assert_array_equal(labels, [0, 2, 1])


def test_predict_labels_multilabel_thresholds_each_finding():
    x = np.array([[0.9, 0.1, 0.6, 0.0], [0.1, 0.2, 0.3, 1.0], [0.7, 0.7, 0.7, 0.0]], np.float32)
    model = pixel_model("sigmoid")
    assert is_multilabel(model)
    labels = predict_labels(model, x.reshape(3, 2, 2, 1))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(
        predict_labels(model, x.reshape(3, 2, 2, 1), threshold=0.9),
        [[1, 0, 0], [0, 0, 0], [0, 0, 0]],
    )


def test_predict_proba_of_an_empty_batch(small_cnn):
    assert predict_proba(small_cnn, np.zeros((0, 28, 28, 1), np.float32)).shape == (0, 2)


def test_predict_proba_traces_once_for_every_batch_size_and_matches_the_eager_model(small_cnn):
    x = images(37)
    whole = predict_proba(small_cnn, x, batch_size=37)
    for batch_size in (1, 5, 16):
        np.testing.assert_allclose(
            predict_proba(small_cnn, x, batch_size=batch_size), whole, atol=1e-6
        )
    assert models.compiled_forward(small_cnn).experimental_get_tracing_count() == 1
    np.testing.assert_allclose(whole, np.asarray(small_cnn(x, training=False)), atol=1e-6)


def test_the_compiled_forward_cache_does_not_keep_a_model_alive():
    import gc
    import weakref

    model = build_model("small_cnn", (28, 28, 1), 2, weights=None)
    predict_proba(model, images(3))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_art_classifier_wraps_the_model(small_cnn):
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = to_art_classifier(small_cnn, get_info("pneumonia"))
    assert isinstance(classifier, TensorFlowV2Classifier)
    assert classifier.nb_classes == 2 and tuple(classifier.input_shape) == (28, 28, 1)
    assert tuple(classifier.clip_values) == (0.0, 1.0)
    x = images(5)
    np.testing.assert_allclose(classifier.predict(x), predict_proba(small_cnn, x), atol=1e-6)


def test_art_classifier_for_multilabel_models():
    model = model_for(get_info("chest"), "small_cnn", 28)
    classifier = to_art_classifier(model, get_info("chest"))
    assert classifier.nb_classes == 14
    with pytest.raises(ValueError, match="multi-label"):
        to_art_classifier(model, get_info("pneumonia"))


def test_art_classifier_rejects_a_single_label_model_for_multilabel_data(small_cnn):
    with pytest.raises(ValueError, match="single-label"):
        to_art_classifier(small_cnn, get_info("chest"))


def test_keras_models_dir_follows_keras_home(monkeypatch, tmp_path):
    from helpers.models import keras_models_dir

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_models_dir() == tmp_path / "models"
    monkeypatch.delenv("KERAS_HOME")
    assert keras_models_dir().parts[-2:] == (".keras", "models")
