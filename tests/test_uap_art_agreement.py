"""The helper's faithful UAP against ART 1.20's ``UniversalPerturbation`` and
``TargetedUniversalPerturbation`` (attacker "fgsm"), on the same model, images and settings.

Both visit the images in the same order: ART draws its order with ``random.sample``; here it
is given the helper's order for the same seed, so that any difference left comes from the
algorithms themselves, not from which image happens to be visited first. (With independent
orders the rates also agree within a point on this model, but need several seeds to show it.)
ART's classifier wraps a compiled call of the same Keras model: ART's own code runs unchanged,
only faster (its loss gradient otherwise runs eagerly, ~30 ms per image on two CPU cores).

Runs on the real PneumoniaMNIST smoke model when the file is available, else on the
synthetic stand-in's model (at 8 % instead of 4 %, where its UAP grows as large).
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
SEED = 0
TOLERANCE = 0.03   # 3 percentage points of R_f / R_s on the test images


class CompiledCall:
    """``model(x, training=False)`` compiled once; what ART's classifier calls."""

    def __init__(self, model):
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, x, training=False):
        return self._call(x)


class HelperOrder:
    """Stands in for the ``random`` module inside ART's UAP modules: the helper's pass orders."""

    def __init__(self, seed: int, n: int):
        self.rng, self.n, self.calls = np.random.default_rng(seed), n, 0

    def sample(self, population, k):
        assert list(population) == list(range(self.n)) and k == self.n, "ART's UAP changed how it draws its order"
        self.calls += 1
        return [int(i) for i in self.rng.permutation(k)]


@pytest.fixture(scope="module")
def setup(smoke_pneumonia_model):
    from art.estimators.classification import TensorFlowV2Classifier

    splits, trained = smoke_pneumonia_model
    model = trained.model
    classifier = TensorFlowV2Classifier(model=CompiledCall(model), nb_classes=int(model.output_shape[-1]),
                                        input_shape=tuple(model.input_shape[1:]),
                                        loss_object=keras.losses.CategoricalCrossentropy(), clip_values=(0.0, 1.0))
    zeta = 0.08 if splits["train"].synthetic else 0.04
    return model, classifier, splits["train"].images[:N_IMAGES], splits["test"].images, zeta


def test_compiled_art_classifier_is_the_course_classifier(setup):
    """The speed-up changes nothing: same predictions and loss gradients as ``to_art_classifier``."""
    model, fast, images, _, _ = setup
    plain = to_art_classifier(model)
    x = images[:4]
    y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]
    np.testing.assert_allclose(fast.predict(x), plain.predict(x), atol=1e-6)
    np.testing.assert_allclose(fast.loss_gradient(x, y), plain.loss_gradient(x, y), atol=1e-6)


def run_art(classifier, images, xi, norm, target, seed):
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation
    import art.attacks.evasion.targeted_universal_perturbation as targeted_module
    import art.attacks.evasion.universal_perturbation as untargeted_module

    order = HelperOrder(seed, len(images))
    if target is None:
        attack = UniversalPerturbation(classifier, attacker="fgsm", attacker_params={"eps": EPS}, delta=1e-6,
                                       max_iter=I_MAX, eps=float(xi), norm=norm, verbose=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(untargeted_module, "random", order)
            attack.generate(images)
    else:
        attack = TargetedUniversalPerturbation(classifier, attacker="fgsm",
                                               attacker_params={"eps": EPS, "targeted": True}, delta=1e-6,
                                               max_iter=I_MAX, eps=float(xi), norm=norm)
        one_hot = np.eye(classifier.nb_classes, dtype=np.float32)[np.full(len(images), target)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(targeted_module, "random", order)
            attack.generate(images, y=one_hot)
    assert order.calls == I_MAX, f"ART made {order.calls} passes, expected {I_MAX}"
    return attack.noise[0]


@pytest.mark.parametrize("norm", [2, np.inf], ids=["p2", "pinf"])
@pytest.mark.parametrize("target", [None, 0, 1], ids=["non-targeted", "to-class-0", "to-class-1"])
def test_faithful_mode_agrees_with_art(setup, norm, target):
    model, classifier, images, test, zeta = setup
    xi = uap.xi_from_zeta(images, zeta, norm)
    ours = uap.universal_perturbation(model, images, xi=xi, norm=norm, eps=EPS, i_max=I_MAX, target=target,
                                      mode="faithful", seed=SEED, progress=False)
    theirs = run_art(classifier, images, xi, norm, target, SEED)
    assert theirs.shape == ours.perturbation.shape
    for rho in (ours.perturbation, theirs):
        assert uap.lp_norms(rho[None], norm)[0] <= xi * (1 + 1e-5)
    key = "fooling_rate" if target is None else "success_rate"
    rate_ours = uap.evaluate(model, test, ours.perturbation, target=target)[key]
    rate_art = uap.evaluate(model, test, theirs, target=target)[key]
    differing = int(np.sum(np.abs(ours.perturbation - theirs) > 1e-4))
    assert abs(rate_ours - rate_art) <= TOLERANCE, (
        f"{key} on the test images: helper {rate_ours:.3f}, ART {rate_art:.3f} "
        f"({differing} of {theirs.size} pixels differ by more than 1e-4)")
