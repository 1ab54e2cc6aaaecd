"""Universal adversarial perturbations (UAPs), non-targeted and targeted (paper 000).

A UAP is one perturbation rho, added to every image, that changes most predictions
(non-targeted) or sends most images to one class (targeted), under ||rho||_p <= xi. The
algorithm of Hirano et al. (2021), as in ART's ``UniversalPerturbation`` with an FGSM
attacker: start at rho = 0 and pass over the images in a random order; for an image not yet
fooled at x + rho (targeted: not yet in the target class), take an FGSM step of strength eps
on x + rho (kept in [0, 1]); if the step fools it (targeted: reaches the target), keep it:
rho = x_adv - x, projected onto the L_p ball of radius xi. Stop after ``i_max`` passes or once
the requested rate is reached.

Two modes behind :func:`universal_perturbation`:

* ``"faithful"``: image by image, exactly the loop above, one compiled TensorFlow loop per pass;
* ``"batched"``: the same update for a minibatch of not-yet-fooled images at once, the accepted
  steps of the batch summed before the projection - the fast mode for large sets and GPUs.

Sizes: ``xi = zeta x`` the mean L_p norm of the attack images as stored (all channels).

Introduced in chapter 2 (non-targeted UAPs).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from . import costs, metrics
from .cache import array_digest, cache_dir, save_npz_once, weights_digest
from .checks import check_choice, check_fraction, check_int, check_positive, settings_from
from .models import check_images, is_multilabel, predict_labels

ZETA_HINT = "the UAP size, a fraction of the mean image norm, e.g. 0.04"
NORMS = {"2": 2, "l2": 2, 2: 2, "inf": np.inf, "linf": np.inf, np.inf: np.inf}


def parse_norm(norm) -> float:
    """2 or np.inf from 2, "2", "inf", np.inf."""
    key = norm.lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise ValueError(f"norm={norm!r}: choose 2 or np.inf ('2' or 'inf').")
    return NORMS[key]


def norm_name(norm) -> str:
    return "2" if parse_norm(norm) == 2 else "inf"


def lp_norms(images, norm) -> np.ndarray:
    """L_p norm of every image (N,), over all pixels and channels."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return (
        np.abs(flat).max(axis=1) if parse_norm(norm) == np.inf else np.sqrt((flat**2).sum(axis=1))
    )


def xi_from_zeta(images, zeta: float, norm) -> float:
    """xi = zeta x mean L_p norm of ``images`` (paper 000: zeta = 2-6 %)."""
    zeta = check_positive("zeta", zeta, ZETA_HINT)
    return float(zeta * lp_norms(images, norm).mean())


def project(perturbation: np.ndarray, xi: float, norm) -> np.ndarray:
    """Projection onto the L_p ball of radius ``xi`` (scaling for p = 2, clipping for p = inf)."""
    if parse_norm(norm) == np.inf:
        return np.clip(perturbation, -xi, xi)
    size = np.sqrt(np.sum(np.square(perturbation, dtype=np.float64)))
    return perturbation * min(1.0, xi / size) if size > 0 else perturbation


INF_CONTROLS = ("uniform", "vertices")


def random_perturbation(
    shape, xi: float, norm, seed: int = 0, inf_kind: str = "uniform"
) -> np.ndarray:
    """Random control of size ``xi``, shape (H, W, C).

    p = 2: uniform on the L2 sphere of radius xi (a normalised Gaussian vector).
    p = inf: ``inf_kind="uniform"`` draws every pixel uniformly from [-xi, xi], as paper 000's
    authors do (ART's ``random_sphere``); ``"vertices"`` sets every pixel to +xi or -xi (the
    largest random perturbation the ball allows: sqrt(3) times the L2 energy of the uniform one).
    """
    if inf_kind not in INF_CONTROLS:
        raise ValueError(
            f"inf_kind={inf_kind!r}; choose one of {INF_CONTROLS} ('uniform' is the paper's "
            "control)."
        )
    rng = np.random.default_rng(seed)
    if parse_norm(norm) == np.inf:
        if inf_kind == "vertices":
            return (xi * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)
        return (xi * rng.uniform(-1.0, 1.0, size=shape)).astype(np.float32)
    vector = rng.normal(size=shape)
    return (xi * vector / np.linalg.norm(vector)).astype(np.float32)


def apply(images, perturbation) -> np.ndarray:
    """Adversarial images: ``clip(images + perturbation, 0, 1)``."""
    return np.clip(np.asarray(images, dtype=np.float32) + perturbation, 0.0, 1.0)


MODES = ("faithful", "batched")


@dataclass(frozen=True)
class UAPSettings:
    """How a UAP is made (paper 000), checked once when created.

    The size is ``zeta`` (a fraction of the mean L_p norm of the images, paper 000: 2-6 %) or
    ``xi`` (an absolute radius): give exactly one. ``norm`` and ``step_norm`` are kept as "2" or
    "inf". Functions that take settings also accept these names as keywords, e.g.
    ``universal_perturbation(model, images, zeta=0.04, norm=2)``.
    """

    zeta: float | None = None
    xi: float | None = None
    norm: str = "2"  # the UAP's ball: 2 or inf
    eps: float = 0.005  # FGSM step strength, in image units (pixel values in [0, 1])
    step_norm: str = "inf"  # the FGSM step: inf (a sign step, ART's default, paper 000) or 2
    i_max: int = 15  # at most this many passes over the images (paper 000: 15)
    target: int | None = None  # the class to push images to; None: non-targeted
    mode: str = "faithful"  # "faithful" (image by image) or "batched"
    batch_size: int = 32  # images per update in the batched mode
    stop_at: float | None = None  # stop once R_f (R_s) on the attack images reaches this
    seed: int = 0  # the order of the passes

    def __post_init__(self):
        if (self.zeta is None) == (self.xi is None):
            raise ValueError(
                "give exactly one of zeta (a fraction of the mean image norm) and xi (an absolute "
                "radius)."
            )
        if self.zeta is not None:
            check_positive("zeta", self.zeta, ZETA_HINT)
        if self.xi is not None:
            check_positive("xi", self.xi, "the radius of the L_p ball")
        object.__setattr__(self, "norm", norm_name(self.norm))
        object.__setattr__(self, "step_norm", norm_name(self.step_norm))
        check_positive("eps", self.eps, "the FGSM step strength, e.g. 0.005")
        check_int("i_max", self.i_max, 1, "make at least one pass over the images")
        if self.target is not None:
            check_int("target", self.target, 0, "a class index, or None for non-targeted")
        check_choice("mode", self.mode, MODES)
        check_int("batch_size", self.batch_size, 1, "images per update")
        if self.stop_at is not None:
            check_fraction("stop_at", self.stop_at, "a rate", zero=False)
        check_int("seed", self.seed, 0)

    @property
    def kind(self) -> str:
        """ "nt" (non-targeted) or "t<class>", as in cache keys."""
        return "nt" if self.target is None else f"t{self.target}"

    def key(
        self,
        model_key: str,
        n_images: int,
        xi: float,
        *,
        source: str,
        digests: dict,
    ) -> str:
        """Cache key of a UAP: the model's key and the settings, readable, then the digests.

        ``xi``: the radius the size came to; ``digests``: short digests by letter, e.g.
        ``{"w": weights, "x": images, "i": warm start, "e": evaluation images}`` (None: left out).
        """
        batch = f"{self.batch_size}" if self.mode == "batched" else ""
        stop = "" if self.stop_at is None else f"-stop{self.stop_at:g}"
        tail = "-".join(f"{letter}{value}" for letter, value in digests.items() if value)
        return (
            f"{model_key}--uap-{self.kind}-p{self.norm}-zeta{self.zeta:g}-xi{xi:.8g}"
            f"-eps{self.eps:g}-step{self.step_norm}-imax{self.i_max}{stop}-{self.mode}{batch}"
            f"-{source}{n_images}-seed{self.seed}--{tail}"
        )


@dataclass
class UAPResult:
    """A UAP and how it was made."""

    perturbation: np.ndarray  # (H, W, C), in the stored image space
    norm: str  # "2" or "inf"
    xi: float  # radius of the L_p ball
    eps: float  # FGSM step strength
    target: int | None  # None for non-targeted
    mode: str  # "faithful" or "batched"
    rates: list = field(default_factory=list)  # R_f (or R_s) on the attack images after each pass
    eval_rates: list = field(default_factory=list)  # ... on the evaluation images, if given
    passes: int = 0
    seconds: float = 0.0
    zeta: float | None = None

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def describe(self) -> str:
        kind = f"targeted (class {self.target})" if self.targeted else "non-targeted"
        rate = "R_s" if self.targeted else "R_f"
        last = f", {rate} on the attack images {self.rates[-1]:.1%}" if self.rates else ""
        return (
            f"{kind} UAP, p = {self.norm}, xi = {self.xi:.4g}, eps = {self.eps:.4g}, {self.mode} "
            f"mode, {self.passes} passes in {self.seconds:.1f} s{last}"
        )


# --------------------------------------------------------------------------- FGSM


def _fgsm_direction(model, x, labels, n_classes: int, step_inf, targeted):
    """Unit FGSM step (N, H, W, C) on x: up the loss of ``labels`` (down if ``targeted``).

    ``step_inf`` and ``targeted`` are boolean tensors: a sign step (p = inf) or an L2-normalised
    one.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        probs = model(x, training=False)
        loss = keras.losses.categorical_crossentropy(tf.one_hot(labels, n_classes), probs)
    grad = tape.gradient(loss, x)
    grad = tf.cond(targeted, lambda: -grad, lambda: grad)

    def l2_step():
        flat = tf.reshape(grad, (tf.shape(grad)[0], -1))
        size = tf.maximum(tf.norm(flat, axis=1), 1e-12)
        return grad / tf.reshape(size, (-1, 1, 1, 1))

    return tf.cond(step_inf, lambda: tf.sign(grad), l2_step)


def _project_tf(rho, xi, ball_inf):
    """Projection onto the L_inf (``ball_inf``, a boolean tensor) or L_2 ball of radius xi."""

    def l2_ball():
        size = tf.norm(tf.reshape(rho, (-1,)))
        return rho * tf.minimum(1.0, xi / tf.maximum(size, 1e-12))

    return tf.cond(ball_inf, lambda: tf.clip_by_value(rho, -xi, xi), l2_ball)


def _make_step(model, n_classes: int, batch=None):
    """A compiled update of rho from a batch of images (the batched mode; batch 1 = faithful).

    ``ball_inf`` chooses the UAP's ball (L_inf or L_2), ``step_inf`` the FGSM step's norm (ART's
    FGSM default: inf, a sign step), ``targeted`` the kind of UAP: all three are tensors, so one
    trace serves every setting. ``batch=None`` traces it once for any batch size, so that its
    results do not depend on the batch sizes seen before; ``batch=1`` is the faithful loop's step.
    The function refers to the model weakly, so caching it does not keep the model alive.
    """
    owner = weakref.ref(model)
    shape = tuple(model.input_shape[1:])
    flag = tf.TensorSpec((), tf.bool)
    scalar = tf.TensorSpec((), tf.float32)
    signature = [
        tf.TensorSpec(shape, tf.float32),
        tf.TensorSpec((batch, *shape), tf.float32),
        tf.TensorSpec((batch,), tf.int32),
        scalar,
        scalar,
        flag,
        flag,
        flag,
    ]

    @tf.function(input_signature=signature)
    def step(rho, x, goal, eps, xi, ball_inf, step_inf, targeted):
        model = owner()
        x_rho = tf.clip_by_value(x + rho, 0.0, 1.0)
        current = tf.argmax(model(x_rho, training=False), axis=1, output_type=tf.int32)
        active = tf.where(targeted, tf.not_equal(current, goal), tf.equal(current, goal))
        direction = _fgsm_direction(model, x + rho, goal, n_classes, step_inf, targeted)
        adv = tf.clip_by_value(x + rho + eps * direction, 0.0, 1.0)
        new = tf.argmax(model(adv, training=False), axis=1, output_type=tf.int32)
        success = tf.where(targeted, tf.equal(new, goal), tf.not_equal(new, current))
        accept = tf.cast(tf.logical_and(active, success), rho.dtype)
        increments = (adv - x - rho) * tf.reshape(accept, (-1, 1, 1, 1))
        return _project_tf(rho + tf.reduce_sum(increments, axis=0), xi, ball_inf), tf.reduce_sum(
            accept
        )

    return step


def _make_faithful_pass(step):
    """One pass, image by image, as a single compiled TensorFlow loop around ``step``."""

    @tf.function(reduce_retracing=True)
    def one_pass(rho, images, goals, eps, xi, ball_inf, step_inf, targeted):
        for i in tf.range(tf.shape(images)[0]):
            rho, _ = step(
                rho, images[i : i + 1], goals[i : i + 1], eps, xi, ball_inf, step_inf, targeted
            )
        return rho

    return one_pass


_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, n_classes: int):
    """The compiled batch step and faithful pass for this model, traced once and reused for every
    setting."""
    per_model = _COMPILED.setdefault(model, {})
    if n_classes not in per_model:
        per_model[n_classes] = (
            _make_step(model, n_classes),
            _make_faithful_pass(_make_step(model, n_classes, 1)),
        )
    return per_model[n_classes]


# --------------------------------------------------------------------------- the attack


def _ends_in_softmax(model) -> bool:
    """True when the model's last layer applies a softmax (a Softmax layer or
    activation="softmax")."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.Model):
        return _ends_in_softmax(last)
    if isinstance(last, keras.layers.Softmax):
        return True
    return getattr(getattr(last, "activation", None), "__name__", "") == "softmax"


def _validate(model, images, target):
    """The images as float32, and the number of classes; a ValueError for a model or images the
    attack cannot use, or a target outside the classes."""
    if is_multilabel(model):
        raise ValueError(
            "universal_perturbation: the model is multi-label (sigmoid outputs); UAPs here attack "
            "single-label (softmax) classifiers."
        )
    n_classes = int(model.output_shape[-1])
    if not _ends_in_softmax(model) or n_classes < 2:
        last = model.layers[-1] if model.layers else None
        activation = getattr(getattr(last, "activation", None), "__name__", type(last).__name__)
        raise ValueError(
            f"model: its last layer ({activation}, {n_classes} unit(s)) is not a softmax over the "
            "classes. The UAP's FGSM steps use the cross-entropy of probabilities, so the model "
            "must end in a softmax with one unit per class (at least 2), as ART's attacks also "
            "require; for a model that outputs logits, add keras.layers.Softmax() as its last "
            "layer."
        )
    images = check_images(images, model)
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image to build the UAP from.")
    if target is not None and not target < n_classes:
        raise ValueError(
            f"target={target!r}: choose a class index in [0, {n_classes}), or None for "
            "non-targeted."
        )
    return images, n_classes


def _rate(model, images, perturbation, reference, target) -> float:
    """R_s (``target``) or R_f of ``perturbation`` on ``images``, against clean predictions
    ``reference``."""
    adversarial = predict_labels(model, apply(images, perturbation))
    if target is not None:
        return metrics.targeted_success_rate(adversarial, target)
    return metrics.fooling_rate(reference, adversarial)


def universal_perturbation(
    model,
    images,
    settings: UAPSettings | None = None,
    *,
    init: np.ndarray | None = None,
    eval_images=None,
    progress: bool = True,
    **options,
) -> UAPResult:
    """Compute a UAP against ``model`` from ``images`` (N, H, W, C) in [0, 1].

    The model must end in a softmax with one unit per class (its outputs are probabilities).

    Args:
        settings: a :class:`UAPSettings`; or give its fields as keywords (``options``), e.g.
            ``zeta=0.04, norm=2, eps=0.005, i_max=15, target=None, mode="faithful"``. Keywords
            given with ``settings`` replace its fields.
        init: a perturbation (H, W, C) to start from (warm start) instead of zero.
        eval_images: other images on which R_f (R_s) is also recorded after each pass.
    Returns:
        a :class:`UAPResult`; R_f compares with the model's clean predictions (paper 000).
    """
    settings = settings_from(UAPSettings, settings, options, "universal_perturbation")
    images, n_classes = _validate(model, images, settings.target)
    xi = settings.xi or xi_from_zeta(images, settings.zeta, settings.norm)
    rates = _Rates(model, images, eval_images, settings.target)
    goals = rates.clean if settings.target is None else np.full(len(images), settings.target)
    rho = tf.Variable(_start(init, images.shape[1:], xi, settings.norm), trainable=False)
    result = UAPResult(
        rho.numpy(), settings.norm, xi, float(settings.eps), settings.target, settings.mode
    )
    result.zeta = settings.zeta
    run_pass = _pass_runner(model, n_classes, settings, xi)
    rng, start = np.random.default_rng(settings.seed), time.perf_counter()
    bar = tqdm(
        range(settings.i_max),
        desc=f"UAP ({settings.mode}, p={settings.norm})",
        unit="pass",
        disable=not progress,
    )
    for _ in bar:
        order = rng.permutation(len(images))
        run_pass(rho, images[order], goals[order].astype(np.int32))
        # per image: two predictions and the FGSM step's
        costs.count(model, "forward", 3 * len(images))
        costs.count(model, "backward", len(images))
        rates.record(result, rho.numpy())
        bar.set_postfix({rates.name: f"{result.rates[-1]:.3f}"})
        if settings.stop_at is not None and result.rates[-1] >= settings.stop_at:
            break
    bar.close()
    result.perturbation, result.seconds = rho.numpy(), time.perf_counter() - start
    return result


class _Rates:
    """R_f (R_s) after each pass, on the attack images and, if given, the evaluation images."""

    def __init__(self, model, images, eval_images, target):
        self.model, self.images, self.eval_images, self.target = model, images, eval_images, target
        self.name = "R_f" if target is None else "R_s"
        self.clean = predict_labels(model, images)
        if eval_images is not None:
            self.eval_clean = predict_labels(model, check_images(eval_images, model, "eval_images"))

    def record(self, result: UAPResult, perturbation: np.ndarray) -> None:
        result.rates.append(_rate(self.model, self.images, perturbation, self.clean, self.target))
        if self.eval_images is not None:
            result.eval_rates.append(
                _rate(self.model, self.eval_images, perturbation, self.eval_clean, self.target)
            )
        result.passes += 1


def _start(init, shape, xi: float, norm) -> np.ndarray:
    """The first rho: zero, or the warm start ``init`` projected onto the ball."""
    if init is None:
        return np.zeros(shape, np.float32)
    if np.shape(init) != shape:
        raise ValueError(
            f"init has shape {np.shape(init)}; a perturbation of one image {shape} is needed."
        )
    return project(np.asarray(init, np.float32), xi, norm).astype(np.float32)


def _pass_runner(model, n_classes: int, settings: UAPSettings, xi: float):
    """``run_pass(rho, images, goals)``: one pass over the images in the given order, updating the
    variable ``rho`` image by image (faithful) or ``settings.batch_size`` images at a time."""
    step, one_pass = _compiled(model, n_classes)
    constants = (
        tf.constant(settings.eps, tf.float32),
        tf.constant(xi, tf.float32),
        tf.constant(settings.norm == "inf"),
        tf.constant(settings.step_norm == "inf"),
        tf.constant(settings.target is not None),
    )

    def run_pass(rho: tf.Variable, images: np.ndarray, goals: np.ndarray) -> None:
        x, g = tf.constant(images), tf.constant(goals)
        if settings.mode == "faithful":
            rho.assign(one_pass(rho, x, g, *constants))
            return
        for i in range(0, len(images), settings.batch_size):
            new, _ = step(
                rho, x[i : i + settings.batch_size], g[i : i + settings.batch_size], *constants
            )
            rho.assign(new)

    return run_pass


def evaluate(model, images, perturbation, target: int | None = None, labels=None) -> dict:
    """R_f, R_s and its baseline R_s0 of ``perturbation`` on ``images``.

    Returns a dict with ``fooling_rate``, clean and adversarial predictions, and, for a
    target, ``success_rate`` (R_s) and ``success_baseline`` (R_s0, no perturbation).
    ``labels`` (true classes) adds clean and adversarial accuracy. The rates are those of
    :mod:`helpers.metrics`.
    """
    images = check_images(images, model)
    clean = predict_labels(model, images)
    adversarial = predict_labels(model, apply(images, perturbation))
    out = {
        "clean_pred": clean,
        "adv_pred": adversarial,
        "fooling_rate": metrics.fooling_rate(clean, adversarial),
    }
    if target is not None:
        out["success_rate"] = metrics.targeted_success_rate(adversarial, target)
        out["success_baseline"] = metrics.targeted_success_baseline(clean, target)
    if labels is not None:
        out["clean_accuracy"] = metrics.accuracy(labels, clean)
        out["adversarial_accuracy"] = metrics.accuracy(labels, adversarial)
    return out


def headline_rate(scores: dict, target: int | None = None) -> float:
    """The rate an attack is judged by in an :func:`evaluate` result: R_s for a ``target``, else
    R_f."""
    return scores["success_rate"] if target is not None else scores["fooling_rate"]


# --------------------------------------------------------------------------- cache


def save_uap(result: UAPResult, path) -> bool:
    """Write a UAP (npz: perturbation + settings + per-pass rates); an existing file is kept
    (False)."""
    return save_npz_once(
        path,
        perturbation=result.perturbation,
        norm=result.norm,
        xi=result.xi,
        eps=result.eps,
        target=-1 if result.target is None else result.target,
        mode=result.mode,
        rates=np.asarray(result.rates),
        eval_rates=np.asarray(result.eval_rates),
        passes=result.passes,
        seconds=result.seconds,
        zeta=np.nan if result.zeta is None else result.zeta,
    )


def load_uap(path) -> UAPResult:
    """Read a UAP written by :func:`save_uap`."""
    with np.load(path) as f:
        target = int(f["target"])
        zeta = float(f["zeta"])
        return UAPResult(
            f["perturbation"],
            str(f["norm"]),
            float(f["xi"]),
            float(f["eps"]),
            None if target < 0 else target,
            str(f["mode"]),
            list(f["rates"]),
            list(f["eval_rates"]),
            int(f["passes"]),
            float(f["seconds"]),
            None if np.isnan(zeta) else zeta,
        )


# More than eight parameters: those of universal_perturbation, plus the attack set's name in the
# key (source), the images that set the size (norm_images) and the cache folder.
def cached_uap(
    model,
    model_key: str,
    images,
    settings: UAPSettings | None = None,
    *,
    source: str = "train",
    norm_images=None,
    init: np.ndarray | None = None,
    eval_images=None,
    cache=None,
    progress: bool = True,
    **options,
) -> UAPResult:
    """:func:`universal_perturbation`, saved in the course cache and reloaded by later runs.

    The size must be a ``zeta``: xi = zeta x the mean L_p norm of ``norm_images`` (default:
    ``images``; for UAPs made from natural images, the medical images, as in paper 001).
    ``source`` names the attack set in the file name. The key (:meth:`UAPSettings.key`) also holds
    digests of the model's weights and of the images, so a retrained model or another attack set of
    the same size is never served a stale UAP.
    """
    settings = settings_from(UAPSettings, settings, options, "cached_uap")
    xi = xi_from_zeta(images if norm_images is None else norm_images, settings.zeta, settings.norm)
    digests = {
        "w": weights_digest(model),
        "x": array_digest(images),
        "i": None if init is None else array_digest(init),
        "e": None if eval_images is None else array_digest(eval_images),
    }
    key = settings.key(model_key, len(images), xi, source=source, digests=digests)
    path = Path(cache or cache_dir("uaps")) / f"{key}.npz"
    if path.exists():
        return load_uap(path)
    result = universal_perturbation(
        model,
        images,
        replace(settings, zeta=None, xi=xi),
        init=init,
        eval_images=eval_images,
        progress=progress,
    )
    result.zeta = settings.zeta
    if not save_uap(result, path):  # another process saved the same UAP meanwhile: use its file
        return load_uap(path)
    return result
