"""Universal adversarial perturbations: norms, projections, controls, bad inputs, and the attack
itself.

The attack's rules (accept/reject, batches, stop_at, warm starts) and the cache are checked by
hand on a tiny model whose prediction depends only on the mean brightness. The behaviour tests
use the smoke pneumonia model (real PneumoniaMNIST when available, else the synthetic
stand-in). The model trained on the synthetic stand-in is more robust to small perturbations,
so there the UAP is 8 % of the mean image norm instead of 4 %; the course's own claims at 4 %
are checked on the real data only (``test_course_claims_on_real_pneumonia``).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest
from toy_models import brightness_model, flat

from helpers import uap
from helpers.models import build_model

EPS = 0.01  # FGSM step strength: at 100 images and 3 passes the UAP fills its ball
I_MAX = 3
N_IMAGES = 100  # training images the UAP is computed from


def as_images(*vectors):
    """Flat vectors -> a batch of (1, n, 1) 'images'."""
    return np.array([np.asarray(v, dtype=np.float64).reshape(1, -1, 1) for v in vectors])


# --------------------------------------------------------------------------- hand-computed


def test_lp_norms_by_hand():
    images = as_images([3.0, 4.0], [0.0, -2.0])
    np.testing.assert_allclose(uap.lp_norms(images, 2), [5.0, 2.0])
    np.testing.assert_allclose(uap.lp_norms(images, np.inf), [4.0, 2.0])
    np.testing.assert_allclose(uap.lp_norms(images, "inf"), [4.0, 2.0])


def test_xi_from_zeta_by_hand():
    images = as_images([3.0, 4.0], [0.0, -2.0])
    assert uap.xi_from_zeta(images, 0.1, 2) == pytest.approx(0.1 * (5.0 + 2.0) / 2)
    assert uap.xi_from_zeta(images, 0.1, np.inf) == pytest.approx(0.1 * (4.0 + 2.0) / 2)


def test_l2_projection_scales_onto_the_sphere_and_keeps_direction():
    v = np.array([3.0, 4.0], np.float32).reshape(1, 2, 1)
    projected = uap.project(v, 1.0, 2)
    np.testing.assert_allclose(projected.ravel(), [0.6, 0.8], rtol=1e-6)
    assert np.linalg.norm(projected) == pytest.approx(1.0, rel=1e-6)


def test_l2_projection_is_identity_inside_the_ball():
    v = np.array([3.0, 4.0], np.float32).reshape(1, 2, 1)
    np.testing.assert_array_equal(uap.project(v, 10.0, 2), v)
    np.testing.assert_array_equal(uap.project(np.zeros_like(v), 1.0, 2), np.zeros_like(v))


def test_linf_projection_clips_each_pixel():
    v = np.array([-0.5, 2.0, -3.0, 0.25], np.float32).reshape(2, 2, 1)
    np.testing.assert_array_equal(uap.project(v, 1.0, np.inf).ravel(), [-0.5, 1.0, -1.0, 0.25])


def test_random_perturbation_l2_has_norm_xi_exactly():
    rho = uap.random_perturbation((28, 28, 1), 0.7, 2, seed=3)
    assert rho.shape == (28, 28, 1) and rho.dtype == np.float32
    assert np.linalg.norm(rho.astype(np.float64)) == pytest.approx(0.7, rel=1e-5)


def test_random_perturbation_linf_is_uniform_in_the_ball_as_the_papers_control():
    rho = uap.random_perturbation((64, 64, 3), 0.05, np.inf, seed=3)
    assert rho.dtype == np.float32 and np.abs(rho).max() <= 0.05
    counts, _ = np.histogram(rho, bins=10, range=(-0.05, 0.05))  # uniform: every tenth about 10 %
    assert np.all(np.abs(counts / rho.size - 0.1) < 0.01)
    # mean square xi^2 / 3: sqrt(3) less L2 energy than the +-xi vertices
    vertices = uap.random_perturbation((64, 64, 3), 0.05, np.inf, seed=3, inf_kind="vertices")
    np.testing.assert_allclose(np.abs(vertices), 0.05, rtol=1e-6)
    assert np.linalg.norm(vertices) / np.linalg.norm(rho) == pytest.approx(np.sqrt(3), rel=0.02)
    with pytest.raises(ValueError, match="inf_kind="):
        uap.random_perturbation((4, 4, 1), 0.05, np.inf, inf_kind="gaussian")


@pytest.mark.parametrize("norm", [2, np.inf])
def test_random_perturbation_seeded(norm):
    a = uap.random_perturbation((8, 8, 1), 0.5, norm, seed=1)
    np.testing.assert_array_equal(a, uap.random_perturbation((8, 8, 1), 0.5, norm, seed=1))
    assert not np.array_equal(a, uap.random_perturbation((8, 8, 1), 0.5, norm, seed=2))


def test_apply_clips_to_unit_interval():
    images = np.array([0.2, 0.9, 0.5, 0.0], np.float32).reshape(1, 2, 2, 1)
    rho = np.array([0.5, 0.3, -0.7, 0.1], np.float32).reshape(2, 2, 1)
    out = uap.apply(images, rho)
    np.testing.assert_allclose(out.ravel(), [0.7, 1.0, 0.0, 0.1], atol=1e-7)
    assert out.dtype == np.float32


def test_parse_norm_spellings():
    assert uap.parse_norm("2") == uap.parse_norm("L2") == uap.parse_norm(2) == 2
    assert uap.parse_norm("inf") == uap.parse_norm("Linf") == uap.parse_norm(np.inf) == np.inf
    assert uap.norm_name(np.inf) == "inf" and uap.norm_name("l2") == "2"


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def untrained():
    """An untrained small CNN: enough for the checks that run before any attack."""
    return build_model("small_cnn", (28, 28, 1), 2, weights=None)


@pytest.fixture(scope="module")
def few_images():
    return np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"zeta": 0.0}, "zeta"),
        ({"zeta": -0.04}, "zeta"),
        ({"zeta": float("nan")}, "zeta"),
        ({"zeta": 0.04, "xi": 0.5}, "zeta"),
        ({}, "zeta"),
        ({"xi": 0.0}, "xi"),
        ({"zeta": 0.04, "norm": 1}, "norm"),
        ({"zeta": 0.04, "norm": "l7"}, "norm"),
        ({"zeta": 0.04, "target": 2}, "target"),
        ({"zeta": 0.04, "target": -1}, "target"),
        ({"zeta": 0.04, "target": 1.0}, "target"),
        ({"zeta": 0.04, "target": "1"}, "target"),
        ({"zeta": 0.04, "eps": 0.0}, "eps"),
        ({"zeta": 0.04, "eps": -0.01}, "eps"),
        ({"zeta": 0.04, "eps": float("nan")}, "eps"),
        ({"zeta": 0.04, "i_max": 0}, "i_max"),
        ({"zeta": 0.04, "mode": "fast"}, "mode"),
        ({"zeta": 0.04, "batch_size": 0}, "batch_size"),
        ({"zeta": 0.04, "init": np.zeros((5, 5, 1), np.float32)}, "init"),
    ],
)
def test_bad_arguments_name_the_parameter(untrained, few_images, kwargs, word):
    with pytest.raises(ValueError, match=word):
        uap.universal_perturbation(untrained, few_images, progress=False, **kwargs)


@pytest.mark.parametrize(
    "images, word",
    [
        (np.full((4, 28, 28, 1), 255.0, np.float32), r"\[0, 1\]"),
        (np.full((4, 28, 28, 1), -0.1, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 32, 32, 1), np.float32), "shape"),
        (np.zeros((4, 28, 28, 3), np.float32), "shape"),
        (np.zeros((28, 28, 1), np.float32), "shape"),
    ],
)
def test_bad_images(untrained, images, word):
    with pytest.raises(ValueError, match=f"images.*{word}"):
        uap.universal_perturbation(untrained, images, zeta=0.04, progress=False)


def test_empty_images(untrained):
    with pytest.raises(ValueError, match="images is empty"):
        uap.universal_perturbation(
            untrained, np.zeros((0, 28, 28, 1), np.float32), zeta=0.04, progress=False
        )


def test_bad_eval_images(untrained, few_images):
    with pytest.raises(ValueError, match="eval_images"):
        uap.universal_perturbation(
            untrained, few_images, zeta=0.04, eval_images=few_images[..., 0], progress=False
        )


def test_logit_model_is_refused(few_images):
    """A last layer without softmax (logits) would give wrong FGSM gradients: refused, naming the
    fix."""
    model = build_model("small_cnn", (28, 28, 1), 2, weights=None)
    model.layers[-1].activation = keras.activations.linear
    with pytest.raises(ValueError, match="must end in a softmax with one unit per class"):
        uap.universal_perturbation(model, few_images, zeta=0.04, progress=False)


def test_multilabel_model_is_refused(few_images):
    model = build_model("small_cnn", (28, 28, 1), 3, multilabel=True, weights=None)
    with pytest.raises(ValueError, match="multi-label"):
        uap.universal_perturbation(model, few_images, zeta=0.04, progress=False)


def test_xi_from_zeta_refuses_bad_zeta(few_images):
    for zeta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="zeta"):
            uap.xi_from_zeta(few_images, zeta, 2)


def test_unknown_norm_everywhere(few_images):
    for call in (
        lambda: uap.lp_norms(few_images, 1),
        lambda: uap.project(few_images[0], 1.0, "l1"),
        lambda: uap.random_perturbation((2, 2, 1), 1.0, 3),
    ):
        with pytest.raises(ValueError, match="norm"):
            call()


# --------------------------------------------------------------------------- the attack, by hand

# Brightness 0.45 (A), 0.38 (B), 0.70 (C), 0.10 (D); threshold 0.5, eps = 0.1, p = inf, xi = 0.15.
# A: one step up reaches 0.55 and flips it.  B: needs rho >= 0.1 first (0.48 + 0.1 = 0.58 flips).
# C (class 1) and D never flip: a step from 0.70 + rho down stays >= 0.6, D stays <= 0.35.
HAND = flat(0.45, 0.38, 0.70, 0.10)
HAND_SETTINGS = dict(xi=0.15, norm=np.inf, eps=0.1, progress=False)


def test_faithful_accept_reject_rule_by_hand():
    """One faithful pass: the outcome depends only on whether A is visited before B.

    A before B: A's step is kept (rho = 0.1), then B's (rho = 0.2, projected to 0.15);
    A and B fooled.
    B before A: B's step fails at rho = 0 and is rejected; A's is kept (rho = 0.1); only A fooled.
    """
    model = brightness_model()
    outcomes = set()
    for seed in range(8):
        result = uap.universal_perturbation(
            model, HAND, i_max=1, mode="faithful", seed=seed, **HAND_SETTINGS
        )
        level = float(result.perturbation.mean())
        np.testing.assert_allclose(result.perturbation, level, atol=1e-6)  # every pixel moved alike
        if abs(level - 0.15) < 1e-6:
            assert result.rates == pytest.approx([0.5])
        else:
            assert level == pytest.approx(0.1, abs=1e-6) and result.rates == pytest.approx([0.25])
        outcomes.add(round(level, 4))
    assert outcomes == {0.1, 0.15}, "both orders of A and B should occur among eight seeds"


def test_batched_pass_sums_accepted_steps_by_hand():
    """One batch of all four at rho = 0: only A's step flips, so rho = 0.1; a second pass adds
    B's."""
    model = brightness_model()
    first = uap.universal_perturbation(model, HAND, i_max=1, mode="batched", **HAND_SETTINGS)
    np.testing.assert_allclose(first.perturbation, 0.1, atol=1e-6)
    assert first.rates == pytest.approx([0.25])
    second = uap.universal_perturbation(model, HAND, i_max=2, mode="batched", **HAND_SETTINGS)
    np.testing.assert_allclose(second.perturbation, 0.15, atol=1e-6)
    assert second.rates == pytest.approx([0.25, 0.5])


def test_targeted_pass_skips_images_already_in_the_target_by_hand():
    """Targeted to class 1, one batch at rho = 0: A's step reaches the target and is kept, B's does
    not; C, already in class 1, takes no step (a step on it would add another 0.1). R_s = A, C of
    four."""
    result = uap.universal_perturbation(
        brightness_model(), HAND, i_max=1, mode="batched", target=1, **HAND_SETTINGS
    )
    np.testing.assert_allclose(result.perturbation, 0.1, atol=1e-6)
    assert result.rates == pytest.approx([0.5])


@pytest.mark.parametrize("stop_at, passes", [(0.5, 2), (0.25, 1), (0.6, 5), (None, 5)])
def test_stop_at_stops_after_the_pass_that_reaches_it(stop_at, passes):
    """Batched: R_f is 0.25 after pass 1 and 0.5 from pass 2 on (never more)."""
    result = uap.universal_perturbation(
        brightness_model(), HAND, i_max=5, mode="batched", stop_at=stop_at, **HAND_SETTINGS
    )
    assert result.passes == passes and result.rates == pytest.approx(
        [0.25, 0.5, 0.5, 0.5, 0.5][:passes]
    )


# a uniform 0.15 on 16 pixels: L2 norm 0.6
@pytest.mark.parametrize("norm, xi", [(np.inf, 0.15), (2, 0.6)])
def test_init_warm_start_continues_from_init(norm, xi):
    """B, C, D alone: from rho = 0 nothing flips; from rho = 0.1, B's step is kept (rho -> 0.15)."""
    model, images = brightness_model(), HAND[1:]
    settings = dict(xi=xi, norm=norm, eps=0.1, i_max=1, mode="faithful", progress=False)
    cold = uap.universal_perturbation(model, images, **settings)
    assert np.all(cold.perturbation == 0) and cold.rates == [0.0]
    warm = uap.universal_perturbation(
        model, images, init=np.full((4, 4, 1), 0.1, np.float32), **settings
    )
    np.testing.assert_allclose(warm.perturbation, 0.15, atol=1e-6)
    assert warm.rates == pytest.approx([1 / 3])


@pytest.mark.parametrize("norm", [2, np.inf])
def test_init_outside_the_ball_is_projected_first(norm):
    xi = 0.05
    init = uap.random_perturbation((4, 4, 1), 3 * xi, norm, seed=5)
    # no step can flip these
    result = uap.universal_perturbation(
        brightness_model(),
        flat(0.1, 0.9),
        xi=xi,
        norm=norm,
        eps=0.01,
        i_max=1,
        init=init,
        mode="faithful",
        progress=False,
    )
    np.testing.assert_allclose(result.perturbation, uap.project(init, xi, norm), atol=1e-6)
    assert uap.lp_norms(result.perturbation[None], norm)[0] == pytest.approx(xi, rel=1e-4)


# --------------------------------------------------------------------------- the cache


def uap_key(**changes):
    """The cache key of a UAP with one setting, argument or digest changed."""
    settings = dict(zeta=0.04, norm=2, eps=0.01, i_max=3, target=None, mode="batched", seed=0)
    settings.update({k: v for k, v in changes.items() if k in settings or k in OTHER_SETTINGS})
    digests = {"w": "b" * 12, "x": "a" * 12, "i": None, "e": None}
    digests.update({k: v for k, v in changes.items() if k in digests})
    return uap.UAPSettings(**settings).key(
        "model-key",
        100,
        changes.get("xi", 0.5),
        source=changes.get("source", "train"),
        digests=digests,
    )


OTHER_SETTINGS = ("step_norm", "batch_size", "stop_at")


@pytest.mark.parametrize(
    "change",
    [
        {"zeta": 0.02},
        {"norm": np.inf},
        {"eps": 0.02},
        {"i_max": 4},
        {"target": 1},
        {"mode": "faithful"},
        {"seed": 1},
        {"source": "natural"},
        {"xi": 0.51},
        {"x": "c" * 12},
        {"w": "d" * 12},
        {"step_norm": 2},
        {"batch_size": 64},
        {"stop_at": 0.9},
        {"i": "e" * 12},
        {"e": "f" * 12},
    ],
    ids=lambda change: next(iter(change)),
)
def test_uap_key_changes_with_every_setting(change):
    base = uap_key()
    assert base.startswith("model-key--uap-nt-p2-zeta0.04-")
    assert base.endswith(f"--w{'b' * 12}-x{'a' * 12}")  # readable settings first, digests last
    assert uap_key(**change) != base


def test_settings_are_checked_once_and_accepted_as_keywords():
    settings = uap.UAPSettings(zeta=0.04, norm=np.inf, eps=0.01)
    assert (settings.norm, settings.step_norm, settings.kind) == ("inf", "inf", "nt")
    with pytest.raises(ValueError, match="exactly one of zeta"):
        uap.UAPSettings()
    with pytest.raises(ValueError, match="stop_at=1.5"):
        uap.UAPSettings(zeta=0.04, stop_at=1.5)
    with pytest.raises(ValueError, match="unknown setting.*epsilon.*the settings of UAPSettings"):
        uap.universal_perturbation(None, None, zeta=0.04, epsilon=0.1)
    with pytest.raises(ValueError, match="settings is a dict"):
        uap.universal_perturbation(None, None, {"zeta": 0.04})


def test_cached_uap_tells_apart_attack_sets_of_the_same_size(tmp_path):
    """Two attack sets of four images: A's step fools in the first, nothing flips in the second."""
    model = brightness_model()
    # xi = 0.35 x 0.4 = 0.14
    settings = dict(
        zeta=0.35,
        norm=np.inf,
        eps=0.1,
        i_max=1,
        source="natural4",
        cache=tmp_path,
        progress=False,
        norm_images=flat(0.4, 0.4),
        mode="batched",
    )
    with_a = uap.cached_uap(model, "model-key", HAND, **settings)
    without_a = uap.cached_uap(model, "model-key", flat(0.38, 0.38, 0.70, 0.10), **settings)
    assert with_a.xi == without_a.xi == pytest.approx(0.14)
    np.testing.assert_allclose(with_a.perturbation, 0.1, atol=1e-6)
    assert np.all(without_a.perturbation == 0)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_cached_uap_recomputes_for_changed_weights_and_reloads_otherwise(tmp_path, monkeypatch):
    model = brightness_model(0.5)
    settings = dict(
        zeta=0.4, norm=np.inf, eps=0.1, i_max=1, cache=tmp_path, progress=False, mode="batched"
    )
    first = uap.cached_uap(model, "model-key", HAND, **settings)
    np.testing.assert_allclose(first.perturbation, 0.1, atol=1e-6)
    # same key, new weights: no step flips at 0.58
    model.set_weights(brightness_model(0.58).get_weights())
    second = uap.cached_uap(model, "model-key", HAND, **settings)
    assert np.all(second.perturbation == 0) and len(list(tmp_path.glob("*.npz"))) == 2

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached UAP was recomputed")

    monkeypatch.setattr(uap, "universal_perturbation", no_recompute)
    again = uap.cached_uap(model, "model-key", HAND, **settings)
    np.testing.assert_array_equal(again.perturbation, second.perturbation)


# -------------------------------------------------------------------- the attack on a trained model


@dataclass
class Setting:
    model: object
    images: np.ndarray  # the UAP's training images
    test: np.ndarray  # held-out test images
    real: bool
    zeta: float


@pytest.fixture(scope="module")
def setting(smoke_pneumonia_model):
    splits, trained = smoke_pneumonia_model
    real = not splits["train"].synthetic
    return Setting(
        trained.model,
        splits["train"].images[:N_IMAGES],
        splits["test"].images,
        real,
        0.04 if real else 0.08,
    )


@pytest.fixture(scope="module")
def non_targeted(setting):
    """Non-targeted p = 2 UAP (batched mode), rates also recorded on the test images."""
    return uap.universal_perturbation(
        setting.model,
        setting.images,
        zeta=setting.zeta,
        norm=2,
        eps=EPS,
        i_max=I_MAX,
        seed=0,
        eval_images=setting.test,
        progress=False,
    )


@pytest.fixture(scope="module")
def targeted(setting):
    """Targeted p = 2 UAPs towards each class."""
    return {
        target: uap.universal_perturbation(
            setting.model,
            setting.images,
            zeta=setting.zeta,
            norm=2,
            eps=EPS,
            i_max=I_MAX,
            target=target,
            seed=0,
            progress=False,
        )
        for target in (0, 1)
    }


def random_fooling_rate(setting, xi, norm=2, seeds=(0, 1, 2)) -> float:
    return float(
        np.mean(
            [
                uap.evaluate(
                    setting.model,
                    setting.test,
                    uap.random_perturbation(setting.images.shape[1:], xi, norm, seed=s),
                )["fooling_rate"]
                for s in seeds
            ]
        )
    )


def check_non_targeted_claim(setting, result):
    fooled = uap.evaluate(setting.model, setting.test, result.perturbation)["fooling_rate"]
    control = random_fooling_rate(setting, result.xi)
    assert fooled >= 0.10, f"R_f = {fooled:.3f} on the test images"
    assert fooled >= 5 * control, f"R_f = {fooled:.3f} vs random control {control:.3f}"


def check_targeted_claim(setting, results):
    for target, result in results.items():
        e = uap.evaluate(setting.model, setting.test, result.perturbation, target=target)
        assert e["success_rate"] >= e["success_baseline"] + 0.08, (
            f"class {target}: R_s = {e['success_rate']:.3f} vs baseline "
            f"R_s0 = {e['success_baseline']:.3f}"
        )


@pytest.mark.slow
def test_non_targeted_uap_fools_far_more_than_random(setting, non_targeted):
    assert non_targeted.xi == pytest.approx(uap.xi_from_zeta(setting.images, setting.zeta, 2))
    assert np.linalg.norm(non_targeted.perturbation.astype(np.float64)) <= non_targeted.xi + 1e-5
    assert non_targeted.perturbation.shape == setting.images.shape[1:]
    check_non_targeted_claim(setting, non_targeted)


@pytest.mark.slow
def test_targeted_uap_lifts_success_rate_for_each_class(setting, targeted):
    for result in targeted.values():
        assert np.linalg.norm(result.perturbation.astype(np.float64)) <= result.xi + 1e-5
        assert result.targeted and result.passes == I_MAX
    check_targeted_claim(setting, targeted)


@pytest.mark.slow
def test_course_claims_on_real_pneumonia(setting, non_targeted, targeted, real_medmnist_dir):
    """The course's claims at smoke scale on the real data: a 4 % (p = 2) UAP fools far more
    test images than random noise of the same norm, and a targeted UAP lifts R_s well above
    its baseline for each class."""
    if real_medmnist_dir is None or not setting.real:
        pytest.skip("needs the real pneumoniamnist.npz (set MEDMNIST_DIR)")
    assert setting.zeta == 0.04
    check_non_targeted_claim(setting, non_targeted)
    check_targeted_claim(setting, targeted)


@pytest.mark.slow
def test_same_seed_same_perturbation(setting, non_targeted):
    again = uap.universal_perturbation(
        setting.model,
        setting.images,
        zeta=setting.zeta,
        norm=2,
        eps=EPS,
        i_max=I_MAX,
        seed=0,
        progress=False,
    )
    np.testing.assert_array_equal(again.perturbation, non_targeted.perturbation)
    assert again.rates == non_targeted.rates


@pytest.mark.slow
def test_faithful_and_batched_modes_agree(setting, non_targeted):
    faithful = uap.universal_perturbation(
        setting.model,
        setting.images,
        zeta=setting.zeta,
        norm=2,
        eps=EPS,
        i_max=I_MAX,
        seed=0,
        mode="faithful",
        progress=False,
    )
    assert faithful.mode == "faithful" and faithful.passes == I_MAX
    assert np.linalg.norm(faithful.perturbation.astype(np.float64)) <= faithful.xi + 1e-5
    rates = [
        uap.evaluate(setting.model, setting.test, r.perturbation)["fooling_rate"]
        for r in (faithful, non_targeted)
    ]
    assert abs(rates[0] - rates[1]) <= 0.15, f"faithful R_f {rates[0]:.3f}, batched {rates[1]:.3f}"
    assert rates[0] > 2 * random_fooling_rate(setting, faithful.xi)


@pytest.mark.slow
def test_linf_uap_stays_in_its_ball_and_beats_random(setting):
    result = uap.universal_perturbation(
        setting.model,
        setting.images,
        zeta=setting.zeta,
        norm=np.inf,
        eps=EPS,
        i_max=I_MAX,
        seed=0,
        progress=False,
    )
    assert result.norm == "inf"
    assert np.abs(result.perturbation).max() <= result.xi + 1e-6
    fooled = uap.evaluate(setting.model, setting.test, result.perturbation)["fooling_rate"]
    assert fooled >= 0.10 and fooled >= 5 * random_fooling_rate(setting, result.xi, np.inf)


@pytest.mark.slow
def test_eval_images_give_one_rate_per_pass(setting, non_targeted):
    assert non_targeted.passes == I_MAX
    assert len(non_targeted.rates) == len(non_targeted.eval_rates) == I_MAX
    assert all(0.0 <= rate <= 1.0 for rate in non_targeted.rates + non_targeted.eval_rates)
    final = uap.evaluate(setting.model, setting.test, non_targeted.perturbation)["fooling_rate"]
    assert non_targeted.eval_rates[-1] == pytest.approx(final)
    final_train = uap.evaluate(setting.model, setting.images, non_targeted.perturbation)[
        "fooling_rate"
    ]
    assert non_targeted.rates[-1] == pytest.approx(final_train)
    assert "non-targeted" in non_targeted.describe() and "3 passes" in non_targeted.describe()


@pytest.mark.slow
def test_cached_uap_saves_reloads_and_never_overwrites(setting, tmp_path, monkeypatch):
    cache = tmp_path / "uaps"
    kwargs = dict(
        zeta=setting.zeta,
        norm=np.inf,
        eps=EPS,
        i_max=1,
        target=1,
        seed=0,
        cache=cache,
        progress=False,
        mode="batched",
    )
    first = uap.cached_uap(setting.model, "model-key", setting.images[:20], **kwargs)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("model-key--uap-t1-pinf")

    def no_recompute(*args, **kw):
        raise AssertionError("the cached UAP was recomputed")

    monkeypatch.setattr(uap, "universal_perturbation", no_recompute)
    second = uap.cached_uap(setting.model, "model-key", setting.images[:20], **kwargs)
    np.testing.assert_array_equal(second.perturbation, first.perturbation)
    assert (second.norm, second.target, second.mode, second.passes) == ("inf", 1, "batched", 1)
    assert second.xi == pytest.approx(first.xi) and second.zeta == pytest.approx(setting.zeta)
    assert second.rates == pytest.approx(first.rates)
    changed = uap.UAPResult(**{**first.__dict__, "perturbation": first.perturbation + 0.5})
    assert uap.save_uap(changed, files[0]) is False  # never overwritten
    np.testing.assert_array_equal(uap.load_uap(files[0]).perturbation, first.perturbation)


def test_save_and_load_non_targeted_without_zeta(tmp_path):
    result = uap.UAPResult(
        np.full((2, 2, 1), 0.1, np.float32),
        "2",
        0.5,
        0.01,
        None,
        "faithful",
        rates=[0.1, 0.2],
        passes=2,
    )
    uap.save_uap(result, tmp_path / "a.npz")
    loaded = uap.load_uap(tmp_path / "a.npz")
    assert loaded.target is None and loaded.zeta is None and not loaded.targeted
    assert loaded.rates == pytest.approx([0.1, 0.2]) and loaded.eval_rates == []


def test_compiled_steps_do_not_keep_a_model_alive():
    """The cache of traced UAP steps refers to models weakly: a deleted model is freed."""
    import gc
    import weakref

    model = build_model("small_cnn", (8, 8, 1), 2, weights=None, seed=0)
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
    uap.universal_perturbation(model, images, zeta=0.1, i_max=1, progress=False)
    uap.universal_perturbation(model, images, zeta=0.1, i_max=1, mode="faithful", progress=False)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
