"""Classifiers that take MedMNIST images exactly as stored.

The model's input is the dataset's image, e.g. 28x28x1 in [0, 1]. Grey -> RGB, resizing to
the backbone's input size and the backbone's own ``preprocess_input`` are layers inside the
model, so that an attack perturbs the stored image space, as in the papers. The new head
has one softmax unit per class (two units for binary tasks: ART's attacks need them) or one
sigmoid per finding for multi-label data.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from . import costs


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded (offline?)."""


@dataclass(frozen=True)
class Architecture:
    name: str
    constructor: str | None  # keras.applications attribute, None for the small CNN
    # "tf" ([-1, 1]), "caffe" (BGR, mean-subtracted), "torch" (ImageNet z-score)
    preprocess: str | None
    min_input: int  # smallest side keras.applications accepts
    paper_input: int  # side used in the papers
    optimizer: str = "sgd"  # paper 000: SGD, momentum 0.9, learning rate 1e-3


ARCHITECTURES = {
    "inception_v3": Architecture("inception_v3", "InceptionV3", "tf", 75, 299),
    "vgg16": Architecture("vgg16", "VGG16", "caffe", 32, 224),
    "vgg19": Architecture("vgg19", "VGG19", "caffe", 32, 224),
    "resnet50": Architecture("resnet50", "ResNet50", "caffe", 32, 224),
    "inception_resnet_v2": Architecture("inception_resnet_v2", "InceptionResNetV2", "tf", 75, 299),
    "densenet121": Architecture("densenet121", "DenseNet121", "torch", 32, 224),
    "densenet169": Architecture("densenet169", "DenseNet169", "torch", 32, 224),
    "mobilenet_v2": Architecture("mobilenet_v2", "MobileNetV2", "tf", 32, 224),
    # Trained from scratch rather than fine-tuned: plain SGD barely moves it in a few epochs
    # (multi-label heads especially), so it uses Adam with the same learning-rate schedule.
    "small_cnn": Architecture("small_cnn", None, None, 8, 28, optimizer="adam"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def get_architecture(name: str) -> Architecture:
    key = str(name).lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise ValueError(
            f"architecture={name!r} is unknown; choose one of {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[key]


@keras.saving.register_keras_serializable(package="medattack")
class GreyToRGB(layers.Layer):
    """(N, H, W, 1) -> (N, H, W, 3) by repeating the grey channel."""

    def call(self, inputs):
        return keras.ops.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="medattack")
class BackbonePreprocess(layers.Layer):
    """Images in [0, 1] -> what an ImageNet backbone expects (its ``preprocess_input``).

    ``mode``: "tf" scales to [-1, 1]; "caffe" converts RGB to BGR in [0, 255] and subtracts
    the ImageNet mean; "torch" standardises with the ImageNet mean and std.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe", "torch"):
            raise ValueError(f"mode={mode!r}; choose 'tf', 'caffe' or 'torch'.")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "tf":
            return inputs * 2.0 - 1.0
        if self.mode == "caffe":
            bgr = keras.ops.flip(inputs, axis=-1) * 255.0
            return bgr - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=inputs.dtype)
        mean = keras.ops.convert_to_tensor(IMAGENET_MEAN, dtype=inputs.dtype)
        std = keras.ops.convert_to_tensor(IMAGENET_STD, dtype=inputs.dtype)
        return (inputs - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def small_cnn_body(x):
    """Three conv-pool blocks and a dense layer: learns 28 px MedMNIST in seconds on a CPU."""
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return layers.Dropout(0.3)(x)


def _backbone(arch: Architecture, side: int, weights: str | None):
    constructor = getattr(keras.applications, arch.constructor)
    try:
        return constructor(
            include_top=False, weights=weights, input_shape=(side, side, 3), pooling="avg"
        )
    except Exception as error:  # keras wraps the URL error in a plain Exception
        if weights is None or not _looks_like_download_error(error):
            raise
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights of {arch.constructor} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}).\n  Connect to the "
            f"internet once (Keras caches them in {keras_models_dir()}), or copy the weights file "
            "there, or build the model with weights=None to train from random initialisation."
        ) from None


def fetch_imagenet_weights(architecture: str, side: int) -> None:
    """Make sure the ImageNet weights of ``architecture`` are at hand (Keras's cache, else
    downloaded).

    Raises :class:`WeightsUnavailableError` when they cannot be had. ``side``: the backbone's input.
    """
    arch = get_architecture(architecture)
    if arch.constructor is not None:
        _backbone(arch, side, "imagenet")


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights: ``$KERAS_HOME/models`` (default
    ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _looks_like_download_error(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(
        word in text
        for word in ("url", "fetch", "connection", "name or service", "http", "download")
    )


def build_model(
    architecture: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    multilabel: bool = False,
    weights: str | None = "imagenet",
    backbone_input: int | None = None,
    seed: int = 0,
) -> keras.Model:
    """A classifier for images of ``input_shape`` (H, W, C) in [0, 1].

    Args:
        architecture: a key of :data:`ARCHITECTURES`.
        n_classes: classes (softmax, at least 2 units) or findings (sigmoid, multi-label).
        weights: "imagenet" or None (random initialisation); ignored by ``small_cnn``.
        backbone_input: side (px) the image is resized to inside the model; default: the
            stored size, raised to the backbone's minimum.
        seed: seeds the new head's (and a random backbone's) initial weights.
    """
    arch = get_architecture(architecture)
    _check_input_shape(input_shape)
    if n_classes < 2:
        raise ValueError(
            f"n_classes={n_classes}: use at least 2 softmax units (a binary task has 2), "
            f"never a single sigmoid unit."
        )
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights={weights!r}; choose 'imagenet' or None.")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if arch.constructor is None:
        features = small_cnn_body(inputs)
        weights = None
    else:
        features = _backbone_features(arch, inputs, weights, backbone_input)
    activation = "sigmoid" if multilabel else "softmax"
    outputs = layers.Dense(n_classes, activation=activation, name="head")(features)
    model = keras.Model(inputs, outputs, name=f"{arch.name}_{'imagenet' if weights else 'scratch'}")
    model.medattack_weights = weights
    return model


def _backbone_features(arch: Architecture, inputs, weights, backbone_input):
    side = max(int(backbone_input or inputs.shape[1]), arch.min_input)
    x = GreyToRGB(name="grey_to_rgb")(inputs) if inputs.shape[-1] == 1 else inputs
    if side != inputs.shape[1]:
        x = layers.Resizing(side, side, interpolation="bilinear", name="resize")(x)
    x = BackbonePreprocess(arch.preprocess, name="preprocess")(x)
    return _backbone(arch, side, weights)(x)


def _check_input_shape(input_shape) -> None:
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3) or input_shape[0] != input_shape[1]:
        raise ValueError(
            f"input_shape={tuple(input_shape)}: expected (H, W, C) with H == W and C = 1 or 3."
        )


def model_for(
    info,
    architecture: str,
    size: int,
    weights: str | None = "imagenet",
    backbone_input: int | None = None,
    seed: int = 0,
) -> keras.Model:
    """:func:`build_model` for a :class:`~helpers.data.DatasetInfo` at ``size`` px."""
    return build_model(
        architecture,
        (size, size, info.channels),
        info.n_classes,
        multilabel=info.multilabel,
        weights=weights,
        backbone_input=backbone_input,
        seed=seed,
    )


def check_images(images, model: keras.Model, name: str = "images") -> np.ndarray:
    """Validate a batch for ``model``: float (N, H, W, C) in [0, 1] of the model's input shape."""
    images = np.asarray(images)
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(
            f"{name} has shape {images.shape}; the model expects "
            f"(N, {', '.join(map(str, expected))})."
        )
    if images.size and not np.isfinite(images).all():
        bad = int(np.sum((~np.isfinite(images)).reshape(len(images), -1).any(axis=1)))
        raise ValueError(
            f"{name} holds NaN or infinite values ({bad} of {len(images)} images); give finite "
            f"floats in [0, 1] (check the preprocessing that produced them)."
        )
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(
            f"{name} has values in [{images.min():.3g}, {images.max():.3g}]; expected floats in "
            f"[0, 1] (divide uint8 images by 255)."
        )
    return images.astype(np.float32, copy=False)


_FORWARD = weakref.WeakKeyDictionary()


def compiled_forward(model: keras.Model):
    """The model's inference pass as one compiled function for any batch size:
    (N, H, W, C) -> (N, K).

    Traced once per model. A compiled call frees each layer's output as soon as the next layers have
    used it; an eager call keeps far more (for 32 images at 299 px, DenseNet169 peaked at 13.5 GiB
    eagerly and at 2.4 GiB compiled). The cache refers to the model weakly: it does not keep it
    alive.
    """
    if model not in _FORWARD:
        owner = weakref.ref(model)
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        _FORWARD[model] = tf.function(lambda x: owner()(x, training=False), input_signature=[spec])
    return _FORWARD[model]


def predict_proba(model: keras.Model, images, batch_size: int = 256) -> np.ndarray:
    """Model outputs (N, K) for images (N, H, W, C), computed in batches by
    :func:`compiled_forward`.

    ``images`` may also be a :class:`~helpers.data.MedDataset`: it is then read a batch at a time.
    """
    if hasattr(images, "batches"):
        batches = (check_images(batch, model) for batch in images.batches(batch_size))
    else:
        images = check_images(images, model)
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    forward = compiled_forward(model)
    outputs = [forward(batch).numpy() for batch in batches]
    costs.count(model, "forward", sum(len(output) for output in outputs))
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)


def predict_labels(
    model: keras.Model, images, batch_size: int = 256, threshold: float = 0.5
) -> np.ndarray:
    """Predicted class (N,) - or, for a sigmoid (multi-label) model, the 0/1 findings (N, L)."""
    probs = predict_proba(model, images, batch_size)
    if is_multilabel(model):
        return (probs > threshold).astype(np.uint8)
    return probs.argmax(axis=1)


def is_multilabel(model: keras.Model) -> bool:
    """True when the model's last layer is a sigmoid (one unit per finding)."""
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "sigmoid"


def to_art_classifier(model: keras.Model, info=None):
    """Wrap a model as an ART ``TensorFlowV2Classifier`` on the [0, 1] image space."""
    # ART takes seconds to import and only the comparisons with it need it
    from art.estimators.classification import TensorFlowV2Classifier

    multilabel = is_multilabel(model)
    if info is not None and info.multilabel != multilabel:
        raise ValueError(
            f"to_art_classifier: the model is {'multi-label' if multilabel else 'single-label'} "
            f"but the dataset {info.key!r} is {info.task}."
        )
    loss = (
        keras.losses.BinaryCrossentropy() if multilabel else keras.losses.CategoricalCrossentropy()
    )
    return TensorFlowV2Classifier(
        model=model,
        nb_classes=int(model.output_shape[-1]),
        input_shape=tuple(model.input_shape[1:]),
        loss_object=loss,
        clip_values=(0.0, 1.0),
    )
