"""The helper's faithful UAP against ART 1.20's ``UniversalPerturbation`` and
``TargetedUniversalPerturbation`` (attacker "fgsm"), on the same model, images and settings.

On the real PneumoniaMNIST smoke model, each side visits the images in its own random order:
ART draws it with Python's ``random.sample`` (seeded with ``random.seed``), the helper with
NumPy. The order changes the rates by a few points from seed to seed, so R_f (R_s) on the test
images is averaged over three seeds on each side, and the averages must agree within 3
percentage points. ART's classifier wraps a compiled call of the same Keras model: ART's own
code runs unchanged, only faster (its loss gradient otherwise runs eagerly, ~30 ms per image
on two CPU cores).

Without the real file the test runs on the synthetic stand-in's model (at 8 % instead of 4 %).
There the outcome of a non-targeted UAP is bimodal in the order of the images (R_f about 0.26
for most orders, 0.53 for some), so three independent orders per side prove nothing; ART is
then given the helper's order of every pass, and the averages must agree just the same.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import uap
from helpers.models import to_art_classifier

pytestmark = pytest.mark.slow

N_IMAGES = 100
I_MAX = 3
EPS = 0.01
SEEDS = (0, 1, 2)
TOLERANCE = 0.03  # 3 percentage points of the mean R_f / R_s on the test images


class CompiledCall:
    """``model(x, training=False)`` compiled once; what ART's classifier calls."""

    def __init__(self, model):
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, x, training=False):
        return self._call(x)


@pytest.fixture(scope="module")
def setup(smoke_pneumonia_model):
    from art.estimators.classification import TensorFlowV2Classifier

    splits, trained = smoke_pneumonia_model
    model = trained.model
    classifier = TensorFlowV2Classifier(
        model=CompiledCall(model),
        nb_classes=int(model.output_shape[-1]),
        input_shape=tuple(model.input_shape[1:]),
        loss_object=keras.losses.CategoricalCrossentropy(),
        clip_values=(0.0, 1.0),
    )
    synthetic = splits["train"].synthetic
    zeta = 0.08 if synthetic else 0.04
    return (
        model,
        classifier,
        splits["train"].images[:N_IMAGES],
        splits["test"].images,
        zeta,
        synthetic,
    )


def test_compiled_art_classifier_is_the_course_classifier(setup):
    """The speed-up changes nothing: same predictions and loss gradients as
    ``to_art_classifier``."""
    model, fast, images, _, _, _ = setup
    plain = to_art_classifier(model)
    x = images[:4]
    y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]
    np.testing.assert_allclose(fast.predict(x), plain.predict(x), atol=1e-6)
    np.testing.assert_allclose(fast.loss_gradient(x, y), plain.loss_gradient(x, y), atol=1e-6)


def helper_orders(n: int, seed: int) -> list:
    """The image order of each pass of ``uap.universal_perturbation(..., seed=seed)``."""
    rng = np.random.default_rng(seed)
    return [list(rng.permutation(n)) for _ in range(I_MAX)]


def run_art(classifier, images, xi, norm, target, seed, orders=None):
    """ART's UAP (or targeted UAP) with its own image order, drawn by ``random`` seeded with
    ``seed``, or, if ``orders`` is given, with those orders (one per pass) in place of
    ``random.sample``'s."""
    import random

    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation

    state, sample = random.getstate(), random.sample
    random.seed(seed)
    if orders is not None:
        passes = iter(orders)
        random.sample = lambda population, k: next(passes)
    try:
        if target is None:
            attack = UniversalPerturbation(
                classifier,
                attacker="fgsm",
                attacker_params={"eps": EPS},
                delta=1e-6,
                max_iter=I_MAX,
                eps=float(xi),
                norm=norm,
                verbose=False,
            )
            attack.generate(images)
        else:
            attack = TargetedUniversalPerturbation(
                classifier,
                attacker="fgsm",
                attacker_params={"eps": EPS, "targeted": True},
                delta=1e-6,
                max_iter=I_MAX,
                eps=float(xi),
                norm=norm,
            )
            one_hot = np.eye(classifier.nb_classes, dtype=np.float32)[np.full(len(images), target)]
            attack.generate(images, y=one_hot)
    finally:
        random.setstate(state)
        random.sample = sample
    return attack.noise[0]


@pytest.mark.parametrize("norm", [2, np.inf], ids=["p2", "pinf"])
@pytest.mark.parametrize("target", [None, 0, 1], ids=["non-targeted", "to-class-0", "to-class-1"])
def test_faithful_mode_agrees_with_art_over_three_seeds(setup, norm, target):
    model, classifier, images, test, zeta, synthetic = setup
    xi = uap.xi_from_zeta(images, zeta, norm)
    key = "fooling_rate" if target is None else "success_rate"
    rates = {"helper": [], "ART": []}
    for seed in SEEDS:
        ours = uap.universal_perturbation(
            model,
            images,
            xi=xi,
            norm=norm,
            eps=EPS,
            i_max=I_MAX,
            target=target,
            mode="faithful",
            seed=seed,
            progress=False,
        ).perturbation
        theirs = run_art(
            classifier,
            images,
            xi,
            norm,
            target,
            seed,
            orders=helper_orders(len(images), seed) if synthetic else None,
        )
        assert theirs.shape == ours.shape
        for side, rho in (("helper", ours), ("ART", theirs)):
            assert uap.lp_norms(rho[None], norm)[0] <= xi * (1 + 1e-5)
            rates[side].append(uap.evaluate(model, test, rho, target=target)[key])
    mean = {side: float(np.mean(values)) for side, values in rates.items()}
    assert abs(mean["helper"] - mean["ART"]) <= TOLERANCE, (
        f"{key} on the test images, mean over seeds {SEEDS}: helper {mean['helper']:.3f} "
        f"({', '.join(f'{r:.3f}' for r in rates['helper'])}), ART {mean['ART']:.3f} "
        f"({', '.join(f'{r:.3f}' for r in rates['ART'])})"
    )
