"""Tiny Keras models whose decisions are arithmetic, shared by the UAP tests."""

from __future__ import annotations

import keras
import numpy as np


def brightness_model(threshold: float = 0.5) -> keras.Model:
    """4x4 grey images; class 1 when the mean pixel exceeds ``threshold``, else class 0.

    Its loss gradient is the same for every pixel, so an FGSM sign step of strength eps moves
    every pixel, and the mean, by exactly +-eps: which steps flip which image is arithmetic.
    """
    inputs = keras.Input((4, 4, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    bias = keras.initializers.Constant([40.0 * threshold, -40.0 * threshold])
    logits = keras.layers.Dense(
        2, kernel_initializer=keras.initializers.Constant([[-40.0, 40.0]]), bias_initializer=bias
    )(mean)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def flat(*means) -> np.ndarray:
    """Constant 4x4 images of the given brightness, (N, 4, 4, 1)."""
    return np.stack([np.full((4, 4, 1), m, np.float32) for m in means])
