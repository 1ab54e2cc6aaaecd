"""One- and few-pixel attacks by differential evolution (paper 004: Tsai et al. 2023, after
Su et al. 2019).

A candidate changes k = 1, 2 or 3 pixels (the paper's maximum is 3). Each pixel is
``(x, y, I)`` for a greyscale image or ``(x, y, R, G, B)`` for a colour one: x (column) in
[0, W) and y (row) in [0, H) are continuous and floored when the pixel is applied; the
values are in [0, 1], the stored image range. A candidate is an array (k, 2 + C).

Differential evolution as in the paper: population 100, mutation
``child_i = parent_r1 + F (parent_r2 - parent_r3)`` with F = 0.5 and r1, r2, r3 distinct and
different from i (drawn afresh for every child and generation), no crossover, pairwise selection
(a child replaces its parent only if strictly fitter), at most 100 generations, and an early stop
per image once ``early_stop`` (1 %) of its population is successful (or of the children of a
generation: "of the adversarial images generated in that iteration"; a successful child that
loses its pairwise selection is kept as the result). A child's value that falls outside the
bounds is replaced by a uniform random value within them, as SciPy's ``differential_evolution``
(on which Su et al.'s attack and ART's ``PixelAttack`` build) does: clipping instead would pile
children onto the image border. Each image draws from its own random stream, seeded by ``seed``
and the image's pixels, so its search is the same whatever else is attacked with it. Every
generation builds the candidate images of all images still running with NumPy fancy indexing
and evaluates them in one batched model call, split into chunks
of ``batch_size`` candidate images to bound memory (by default :func:`default_batch_size`: about
2**24 input values per chunk, between 32 and 4096 images - 4096 of 28 x 28 px, 111 of
224 x 224 x 3).

Fitness (higher is fitter internally):

* single-label (softmax): untargeted - minimise the confidence of the clean predicted class;
  targeted - maximise the target class's confidence. Success: argmax != original class
  (untargeted), argmax == target (targeted).
* multi-label (sigmoid): labels and outputs mapped from [0, 1] to [-1, 1], cosine similarity
  ``l . c / max(||l|| ||c||, delta)``, delta = 1e-5 (equations 3-4); untargeted minimises the
  similarity to the clean predicted label set, targeted maximises the similarity to the target
  set. A finding is present when its output is > gamma = 0.5. Success: the predicted set differs
  from the clean one (untargeted) or equals the target set (targeted).

The paper's tables of the results are in :mod:`helpers.pixel_tables`.

Introduced in chapter 5 (pixel attacks).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from . import costs
from .cache import cache_dir, save_npz_once, weights_digest
from .checks import check_fraction, check_int, settings_from
from .models import (
    check_images,
    compiled_forward,
    is_multilabel,
    predict_labels,
    predict_proba,
)
from .pixel_tables import NORMAL, label_set_names

MAX_PIXELS = 3  # the paper attacks with 1, 2 and 3 pixels
DELTA = 1e-5  # equations 3-4: keeps the cosine similarity's denominator positive
GAMMA = 0.5  # a finding is present when its sigmoid output is > GAMMA
VALUES_PER_CALL = 2**24  # default chunk: about this many input values per model call ...
MIN_BATCH, MAX_BATCH = 32, 4096  # ... and between these many images

__all__ = [
    "PixelAttackResult",
    "PixelSettings",
    "pixel_attack",
    "random_pixels",
    "pixel_bounds",
    "image_streams",
    "random_population",
    "apply_pixels",
    "default_batch_size",
    "draw_donors",
    "mutate",
    "select",
    "cosine_similarity",
    "fitness",
    "is_success",
    "images_per_class",
    "frequent_label_sets",
    "images_per_label_set",
    "prediction_text",
    "Successes",
    "pick_successes",
    "save_result",
    "load_result",
    "cached_attack",
]


# --------------------------------------------------------------------------- candidates


def pixel_bounds(shape, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (k, 2 + C) of a candidate for images of ``shape`` (H, W, C).

    x in [0, W), y in [0, H) (the upper bound is the largest float below W, resp. H); values in
    [0, 1].
    """
    height, width, channels = shape
    lower = np.zeros((pixels, 2 + channels))
    upper = np.ones((pixels, 2 + channels))
    upper[:, 0] = np.nextafter(float(width), 0.0)
    upper[:, 1] = np.nextafter(float(height), 0.0)
    return lower, upper


def image_streams(images, seed: int = 0) -> list[np.random.Generator]:
    """One NumPy generator per image (N, H, W, C), seeded by ``seed`` and the image's own pixels.

    An image's search therefore depends only on the seed and on the image: not on its position,
    on the other images attacked in the same call, or on how the call is split into chunks.
    """
    streams = []
    for image in np.asarray(images, dtype=np.float32):
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        words = np.frombuffer(digest, dtype=np.uint32)
        streams.append(np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, words)])))
    return streams


def _draw(rng, n_images: int, draw) -> np.ndarray:
    """``draw(generator, count)`` for ``n_images`` images: from one shared generator, or one per
    image.

    ``rng`` is a Generator (all images draw from it at once) or a sequence of ``n_images``
    Generators (image a draws only from ``rng[a]``). Returns the draws stacked along axis 0.
    """
    if isinstance(rng, np.random.Generator):
        return draw(rng, n_images)
    if len(rng) != n_images:
        raise ValueError(
            f"got {len(rng)} random streams for {n_images} images; give one per image."
        )
    return np.concatenate([draw(stream, 1) for stream in rng])


def random_population(rng, n_images: int, population: int, shape, pixels: int) -> np.ndarray:
    """Uniformly random candidates (n_images, population, k, 2 + C) within :func:`pixel_bounds`.

    ``rng``: one Generator, or one per image (:func:`image_streams`).
    """
    lower, upper = pixel_bounds(shape, pixels)
    draw = _draw(rng, n_images, lambda g, n: g.random((n, population, *lower.shape)))
    return lower + draw * (upper - lower)


def apply_pixels(images, pixels) -> np.ndarray:
    """Images with the candidates' pixels set.

    Args:
        images: (A, H, W, C).
        pixels: (A, ..., k, 2 + C), rows ``(x, y, value_1, ..., value_C)``; x and y are floored
            (and kept inside the image).
    Returns:
        (A, ..., H, W, C): one copy of image a for every candidate of a. When two of a
        candidate's pixels share a position, the later one is kept.
    """
    images = np.asarray(images)
    pixels = np.asarray(pixels, dtype=np.float64)
    n, height, width, channels = images.shape
    if pixels.ndim < 3 or pixels.shape[0] != n or pixels.shape[-1] != 2 + channels:
        raise ValueError(
            f"pixels has shape {pixels.shape}; expected ({n}, ..., k, {2 + channels}) "
            f"for images of shape {images.shape}."
        )
    extra, k = pixels.shape[1:-2], pixels.shape[-2]
    flat = pixels.reshape(-1, k, 2 + channels)  # (A E, k, 2 + C)
    # (A E, H, W, C)
    out = np.repeat(images[:, None], math.prod(extra), axis=1).reshape(-1, height, width, channels)
    _paint(out, flat)
    return out.reshape(n, *extra, height, width, channels)


def _paint(batch, pixels) -> None:
    """Set, in place, the pixels (M, k, 2 + C) of the candidate images ``batch`` (M, H, W, C).

    Pixel j is written after pixel j - 1, so the later one wins on a shared position.
    """
    height, width = batch.shape[1:3]
    cols = np.clip(np.floor(pixels[..., 0]).astype(np.intp), 0, width - 1)  # (M, k)
    rows = np.clip(np.floor(pixels[..., 1]).astype(np.intp), 0, height - 1)
    m = np.arange(len(batch))
    for j in range(pixels.shape[1]):
        batch[m, rows[:, j], cols[:, j]] = pixels[:, j, 2:]


# --------------------------------------------------------------------------- differential evolution


def draw_donors(rng, n_images: int, population: int) -> np.ndarray:
    """Indices (3, n_images, population): r1, r2, r3 distinct and != i for every child i.

    Three distinct draws among the population - 1 others, by the "skip the taken ones" trick
    (uniform, no rejection loop), then shifted past i. ``rng``: one Generator, or one per image.
    """
    draws = _draw(
        rng,
        n_images,
        lambda g, n: g.integers(
            0, [[population - 1], [population - 2], [population - 3]], (n, 3, population)
        ),
    )
    r1, r2, r3 = draws[:, 0], draws[:, 1], draws[:, 2]
    r2 = r2 + (r2 >= r1)
    low, high = np.minimum(r1, r2), np.maximum(r1, r2)
    r3 = r3 + (r3 >= low)
    r3 = r3 + (r3 >= high)
    i = np.arange(population)
    return np.stack([r + (r >= i) for r in (r1, r2, r3)])


def mutate(rng, population, F: float, donors, lower, upper) -> np.ndarray:
    """Children ``pop[r1] + F (pop[r2] - pop[r3])``, no crossover; out-of-bounds values redrawn.

    population: (A, P, k, 2 + C); donors: (3, A, P) from :func:`draw_donors`; lower, upper:
    (k, 2 + C). Every value outside [lower, upper] is replaced by a uniform random one within (as
    SciPy's ``differential_evolution``), so that no position is favoured. ``rng``: one Generator, or
    one per image. Returns (A, P, k, 2 + C).
    """
    a = np.arange(population.shape[0])[:, None]
    r1, r2, r3 = (population[a, r] for r in donors)
    children = r1 + F * (r2 - r3)
    outside = (children < lower) | (children > upper)
    low, span = (np.broadcast_to(b, children.shape)[outside] for b in (lower, upper - lower))
    if isinstance(rng, np.random.Generator):
        uniform = rng.random(low.shape)
    else:  # image a's redrawn values come from its own stream, in the same (row-major) order
        counts = outside.reshape(len(children), -1).sum(axis=1)
        uniform = np.concatenate([stream.random(count) for stream, count in zip(rng, counts)])
    children[outside] = low + uniform * span
    return children


def select(parents, parent_scores, children, child_scores):
    """Pairwise selection: a child replaces its parent only if its score is strictly higher.

    parents, children: (A, P, ...); scores: (A, P), higher is fitter.
    Returns (survivors, survivor_scores, replaced (A, P) bool).
    """
    replaced = np.asarray(child_scores) > np.asarray(parent_scores)
    mask = replaced.reshape(replaced.shape + (1,) * (np.ndim(parents) - replaced.ndim))
    return (
        np.where(mask, children, parents),
        np.where(replaced, child_scores, parent_scores),
        replaced,
    )


# --------------------------------------------------------------------------- fitness


def cosine_similarity(labels, confidences, delta: float = DELTA) -> np.ndarray:
    """Equations 3-4 on [-1, 1]-mapped 0/1 labels and sigmoid outputs; reduces the last axis.

    ``(2l - 1) . (2c - 1) / max(||2l - 1|| ||2c - 1||, delta)``; labels and confidences broadcast.
    """
    signed_labels = 2.0 * np.asarray(labels, dtype=np.float64) - 1.0
    signed_conf = 2.0 * np.asarray(confidences, dtype=np.float64) - 1.0
    dot = np.sum(signed_labels * signed_conf, axis=-1)
    norms = np.linalg.norm(signed_labels, axis=-1) * np.linalg.norm(signed_conf, axis=-1)
    return dot / np.maximum(norms, delta)


def fitness(outputs, reference, *, targeted: bool, multilabel: bool) -> np.ndarray:
    """Scores to maximise, shape outputs.shape[:-1].

    outputs: (A, ..., K) model outputs; reference: (A,) classes or (A, L) label sets - the clean
    prediction (untargeted) or the target (targeted). Single-label: -p[original] or p[target];
    multi-label: -/+ :func:`cosine_similarity`.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    reference = np.asarray(reference)
    extra = (1,) * (outputs.ndim - 2)
    if multilabel:
        score = cosine_similarity(reference.reshape(reference.shape[0], *extra, -1), outputs)
    else:
        index = reference.reshape(-1, *extra, 1).astype(np.intp)
        score = np.take_along_axis(
            outputs, np.broadcast_to(index, outputs.shape[:-1] + (1,)), axis=-1
        )[..., 0]
    return score if targeted else -score


def is_success(outputs, reference, *, targeted: bool, multilabel: bool) -> np.ndarray:
    """Success (A, ...) bool of outputs (A, ..., K) against the reference of :func:`fitness`."""
    outputs = np.asarray(outputs)
    reference = np.asarray(reference)
    extra = (1,) * (outputs.ndim - 2)
    if multilabel:
        same = np.all(
            (outputs > GAMMA) == reference.reshape(reference.shape[0], *extra, -1).astype(bool),
            axis=-1,
        )
    else:
        same = outputs.argmax(axis=-1) == reference.reshape(-1, *extra)
    return same if targeted else ~same


# --------------------------------------------------------------------------- the attack


@dataclass
class PixelAttackResult:
    """What a pixel attack produced, per attacked image (N images, K outputs, k pixels, C
    channels)."""

    adversarial: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    success: np.ndarray  # (N,) bool
    original: np.ndarray  # clean prediction: (N,) class, or (N, L) 0/1 set (multi-label)
    final: np.ndarray  # prediction on the adversarial image, same shape
    # (N,) clean p[original]; multi-label: cosine similarity (eq. 3) of set and outputs
    original_confidence: np.ndarray
    # (N,) adversarial p[final]; multi-label: the same for the final set
    final_confidence: np.ndarray
    original_proba: np.ndarray  # (N, K) clean model outputs
    final_proba: np.ndarray  # (N, K) adversarial model outputs
    pixels: np.ndarray  # (N, k, 2 + C) changed pixels: integer x (column), y (row), then values
    generations: np.ndarray  # (N,) DE generations run (0: the initial population succeeded)
    queries: np.ndarray  # (N,) candidate images evaluated by the model
    seconds: float  # wall-clock time of the whole attack
    target: np.ndarray | None = None  # (N,) classes or (N, L) sets; None if untargeted
    multilabel: bool = False
    method: str = "differential evolution"

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.success) else float("nan")

    @property
    def n_pixels(self) -> int:
        return int(self.pixels.shape[1])

    def describe(self) -> str:
        kind = "targeted" if self.targeted else "untargeted"
        return (
            f"{self.n_pixels}-pixel {kind} attack ({self.method}): {int(self.success.sum())}/"
            f"{len(self.success)} images fooled ({self.success_rate:.0%}), "
            f"{self.queries.mean():.0f} model queries per image, {self.seconds:.1f} s"
        )


#: Part of every cache key; changes whenever the search itself changes,
#: so older results are not reused.
SEARCH_VERSION = "de3"


@dataclass(frozen=True)
class PixelSettings:
    """The k-pixel search of paper 004 (differential evolution), checked once when created.

    Functions that take settings also accept these names as keywords, e.g.
    ``pixel_attack(model, images, pixels=3, generations=50)``.
    """

    pixels: int = 1  # k, pixels changed per image: 1, 2 or 3
    population: int = 100  # candidates per image (at least 4: a child needs three other parents)
    generations: int = 100  # at most this many generations after the initial population
    F: float = 0.5  # mutation factor, in (0, 2]
    # an image stops once at least this fraction of its population, or of the children of a
    # generation, succeeds (at least one); None: always run all generations
    early_stop: float | None = 0.01
    # with each image's own pixels, seeds that image's random stream (initial population, donors,
    # redrawn values; :func:`image_streams`): an image's search does not depend on the others
    seed: int = 0

    def __post_init__(self):
        _check_pixels(self.pixels)
        check_int(
            "population",
            self.population,
            4,
            "differential evolution needs at least 4 candidates: every child combines three "
            "others; the paper uses 100",
        )
        check_int("generations", self.generations, 0, "the paper: 100")
        if not (isinstance(self.F, (int, float, np.floating)) and 0 < self.F <= 2):
            raise ValueError(
                f"F={self.F!r}: the mutation factor must be in (0, 2] (the paper: 0.5)."
            )
        if self.early_stop is not None:
            check_fraction("early_stop", self.early_stop, "of the population, or None")
        check_int("seed", self.seed, 0)

    def key(self, model_key: str, images, target=None, weights: str = "") -> str:
        """Cache key of an attack: the model's key, the settings, a digest of the images, targets
        and weights (:func:`~helpers.cache.weights_digest`, so that a model trained again under
        the same key is attacked anew)."""
        digest = hashlib.sha1(np.ascontiguousarray(images, dtype=np.float32).tobytes())
        if target is not None:
            digest.update(np.ascontiguousarray(target, dtype=np.int64).tobytes())
        digest.update(weights.encode())
        kind = "untargeted" if target is None else "targeted"
        stop = "none" if self.early_stop is None else f"{self.early_stop:g}"
        return (
            f"{model_key}--pixel{self.pixels}-{kind}-pop{self.population}-gen{self.generations}"
            f"-F{self.F:g}-stop{stop}-seed{self.seed}-{SEARCH_VERSION}-{len(images)}img"
            f"-{digest.hexdigest()[:12]}"
        )


def pixel_attack(
    model,
    images,
    settings: PixelSettings | None = None,
    *,
    target=None,
    batch_size: int | None = None,
    progress: bool = True,
    **options,
) -> PixelAttackResult:
    """The k-pixel attack of paper 004 by differential evolution, on all ``images`` at once.

    Args:
        model: a Keras classifier on images in [0, 1]: softmax (single-label) or sigmoid
            (multi-label).
        images: (N, H, W, C) floats in [0, 1], the model's input shape.
        settings: a :class:`PixelSettings`, or its fields as keywords (``pixels=3``).
        target: None (untargeted); single-label: a class or (N,) classes; multi-label: a 0/1
            label set (L,) or (N, L). An image already predicted as its target counts as a
            success at generation 0 (the paper attacks images of the other classes only).
        batch_size: candidate images per model call; None: :func:`default_batch_size` of the
            image shape. It bounds memory only: the random draws do not depend on it, but
            TensorFlow's kernels may round a model output differently for another batch shape
            (last float32 digits), which can tip a search between two nearly equal candidates.
        progress: show a progress bar over the generations.
    """
    settings = settings_from(PixelSettings, settings, options, "pixel_attack")
    return _run(
        model,
        images,
        target,
        settings,
        settings.population,
        batch_size,
        progress,
        method="differential evolution",
    )


def random_pixels(
    model,
    images,
    *,
    pixels: int = 1,
    target=None,
    tries: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
) -> PixelAttackResult:
    """The random control: k random pixels set to random values in [0, 1], no search.

    ``tries`` random candidates per image (default 1); the fittest one is kept (a successful one
    first). Success is judged as in :func:`pixel_attack`. Arguments as there.
    """
    draws = PixelSettings(pixels=pixels, generations=0, early_stop=None, seed=seed)
    check_int("tries", tries, 1, "random candidates per image")
    return _run(model, images, target, draws, tries, batch_size, False, method="random pixels")


@dataclass(frozen=True)
class _Goal:
    """What a candidate is scored against: the clean predictions (untargeted) or the targets."""

    reference: np.ndarray  # (N,) classes or (N, L) 0/1 sets
    targeted: bool
    multilabel: bool

    def __getitem__(self, index) -> _Goal:
        return _Goal(self.reference[index], self.targeted, self.multilabel)

    def fitness(self, outputs) -> np.ndarray:
        return fitness(outputs, self.reference, targeted=self.targeted, multilabel=self.multilabel)

    def is_success(self, outputs) -> np.ndarray:
        return is_success(
            outputs, self.reference, targeted=self.targeted, multilabel=self.multilabel
        )


def _run(
    model, images, target, settings: PixelSettings, population, batch_size, progress, method
) -> PixelAttackResult:
    """The search of ``settings`` with ``population`` candidates per image, then the result."""
    start = time.perf_counter()
    multilabel = is_multilabel(model)
    images = check_images(images, model)
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image to attack.")
    batch_size = _batch_size(batch_size, images.shape[1:])
    target = _check_target(target, multilabel, len(images), int(model.output_shape[-1]))
    clean = predict_proba(model, images, batch_size)
    original = (clean > GAMMA).astype(np.uint8) if multilabel else clean.argmax(axis=1)
    goal = _Goal(original if target is None else target, target is not None, multilabel)
    best_pixels, gens = _evolve(model, images, goal, settings, population, batch_size, progress)
    adversarial = apply_pixels(images, best_pixels[:, None])[:, 0]
    final_proba = predict_proba(model, adversarial, batch_size)
    final = (final_proba > GAMMA).astype(np.uint8) if multilabel else final_proba.argmax(axis=1)
    applied = best_pixels.copy()
    applied[..., 0] = np.clip(np.floor(applied[..., 0]), 0, images.shape[2] - 1)
    applied[..., 1] = np.clip(np.floor(applied[..., 1]), 0, images.shape[1] - 1)
    return PixelAttackResult(
        adversarial=adversarial,
        success=goal.is_success(final_proba),
        original=original,
        final=final,
        original_confidence=_confidence(clean, original, multilabel),
        final_confidence=_confidence(final_proba, final, multilabel),
        original_proba=clean,
        final_proba=final_proba,
        pixels=applied,
        generations=gens,
        queries=population * (1 + gens),
        seconds=time.perf_counter() - start,
        target=target,
        multilabel=multilabel,
        method=method,
    )


def _evolve(model, images, goal: _Goal, settings: PixelSettings, population, batch_size, progress):
    """The DE loop; returns the chosen candidate per image (N, k, 2 + C) and generations run
    (N,)."""
    pixels, early_stop = settings.pixels, settings.early_stop
    streams = image_streams(images, settings.seed)
    n = len(images)
    lower, upper = pixel_bounds(images.shape[1:], pixels)
    pop = random_population(streams, n, population, images.shape[1:], pixels)
    scores, wins = _evaluate(model, images, pop, goal, batch_size)
    done = _stopped(wins, early_stop)
    gens = np.zeros(n, dtype=np.int64)
    rescued = np.zeros(n, dtype=bool)  # stopped by a successful child that lost its selection
    rescued_pixels = pop[:, 0].copy()  # ... that child, (N, k, 2 + C)
    with tqdm(
        total=settings.generations, desc=f"{pixels}-pixel attack", disable=not progress, leave=False
    ) as bar:
        for _ in range(settings.generations):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            running = [streams[a] for a in active]
            children = mutate(
                running,
                pop[active],
                settings.F,
                draw_donors(running, active.size, population),
                lower,
                upper,
            )
            child_scores, child_wins = _evaluate(
                model, images[active], children, goal[active], batch_size
            )
            pop[active], scores[active], replaced = select(
                pop[active], scores[active], children, child_scores
            )
            wins[active] = np.where(replaced, child_wins, wins[active])
            gens[active] += 1
            by_population, by_children = (
                _stopped(wins[active], early_stop),
                _stopped(child_wins, early_stop),
            )
            lost = np.flatnonzero(by_children & ~by_population)
            fittest = np.where(child_wins[lost], child_scores[lost], -np.inf).argmax(axis=1)
            rescued[active[lost]] = True
            rescued_pixels[active[lost]] = children[lost, fittest]
            done[active] = by_population | by_children
            bar.update(1)
            bar.set_postfix(running=int((~done).sum()), fooled=int(done.sum()))
    # the fittest successful candidate, else the fittest one
    best = np.where(
        wins.any(axis=1), np.where(wins, scores, -np.inf).argmax(axis=1), scores.argmax(axis=1)
    )
    chosen = np.where(rescued[:, None, None], rescued_pixels, pop[np.arange(n), best])
    return chosen, gens


def _evaluate(model, images, population, goal: _Goal, batch_size):
    """Scores and successes (A, P) of the candidates (A, P, k, 2 + C): one chunked model call.

    Each chunk is one copy of its images (``batch_size`` of them), painted in place.
    """
    n, size = population.shape[:2]
    flat = population.reshape(n * size, *population.shape[2:])
    owner = np.repeat(np.arange(n), size)
    outputs = []
    for start in range(0, n * size, batch_size):
        part = slice(start, start + batch_size)
        batch = images[owner[part]]  # (M, H, W, C), a copy
        _paint(batch, flat[part])
        outputs.append(_forward(model)(batch))
    outputs = np.concatenate(outputs).reshape(n, size, -1)
    return goal.fitness(outputs), goal.is_success(outputs)


def _stopped(wins, early_stop) -> np.ndarray:
    """(A,) True where at least ``early_stop`` of the candidates (A, P) (and at least one)
    succeed."""
    if early_stop is None:
        return np.zeros(len(wins), dtype=bool)
    needed = max(1, math.ceil(early_stop * wins.shape[1] - 1e-9))
    return wins.sum(axis=1) >= needed


def _forward(model):
    """The model's compiled inference pass on unchecked candidate images (the search's hot path),
    counted: images -> NumPy outputs."""
    compiled = compiled_forward(model)

    def forward(x):
        costs.count(model, "forward", len(x))
        return np.asarray(compiled(tf.convert_to_tensor(x, tf.float32)), dtype=np.float32)

    return forward


def default_batch_size(shape) -> int:
    """Candidate images per model call for images of ``shape`` (H, W, C): about 2**24 input values.

    Clipped to [32, 4096]: 4096 for 28 x 28 px (grey or colour), 1365 for 64 x 64 x 3, 111 for
    224 x 224 x 3.
    """
    return int(np.clip(VALUES_PER_CALL // math.prod(shape), MIN_BATCH, MAX_BATCH))


def _batch_size(batch_size, shape) -> int:
    if batch_size is None:
        return default_batch_size(shape)
    return check_int(
        "batch_size", batch_size, 1, "images per model call, or None: chosen from the image size"
    )


def _confidence(proba, predicted, multilabel) -> np.ndarray:
    if multilabel:
        return cosine_similarity(predicted, proba)
    return proba[np.arange(len(proba)), predicted]


def _check_pixels(pixels) -> None:
    if (
        isinstance(pixels, bool)
        or not isinstance(pixels, (int, np.integer))
        or not 1 <= pixels <= MAX_PIXELS
    ):
        raise ValueError(
            f"pixels={pixels!r}: the attack changes 1, 2 or {MAX_PIXELS} pixels "
            f"(at most {MAX_PIXELS}, as in the paper)."
        )


def _check_target(target, multilabel: bool, n: int, n_outputs: int):
    """None, (N,) classes (single-label) or (N, L) uint8 sets (multi-label)."""
    if target is None:
        return None
    values = np.asarray(target)
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise ValueError(f"target={target!r}: give class indices or a 0/1 label set.")
    if multilabel:
        return _check_target_set(values, n, n_outputs)
    if values.dtype == bool or values.ndim == 2:
        raise ValueError(
            f"target has shape {values.shape}: a multi-label target set, but the model is "
            f"single-label (softmax); give a class index or (N,) = ({n},) class indices."
        )
    if values.ndim > 1 or (values.ndim == 1 and len(values) != n):
        raise ValueError(
            f"target has shape {values.shape}; give a class index or one per image, ({n},)."
        )
    if not np.all(np.mod(values, 1) == 0) or values.min() < 0 or values.max() >= n_outputs:
        raise ValueError(f"target={target!r}: class indices must be integers in [0, {n_outputs}).")
    return np.broadcast_to(values.astype(np.int64), (n,)).copy()


def _check_target_set(values, n: int, n_findings: int) -> np.ndarray:
    if values.ndim == 0:
        raise ValueError(
            f"target={values.item()!r} is a class index, but the model is multi-label (sigmoid); "
            f"give a 0/1 label set of shape ({n_findings},) or ({n}, {n_findings})."
        )
    if values.shape not in ((n_findings,), (n, n_findings)):
        raise ValueError(
            f"target has shape {values.shape}; the multi-label model needs a 0/1 label set of "
            f"shape ({n_findings},) or ({n}, {n_findings})."
        )
    if not np.all((values == 0) | (values == 1)):
        raise ValueError("target: a multi-label target set holds only 0 and 1 (absent / present).")
    return np.broadcast_to(values.astype(np.uint8), (n, n_findings)).copy()


# --------------------------------------------------------------------------- which images to attack


def _check_per(name: str, value) -> None:
    check_int(name, value, 1, "images per group; the paper: 100")


def images_per_class(
    model, dataset, per_class: int, classes=None, seed: int = 0
) -> dict[int, np.ndarray]:
    """Indices into ``dataset`` of up to ``per_class`` correctly classified images of each class.

    ``dataset``: a single-label :class:`~helpers.data.MedDataset` (its ``images`` and ``labels``);
    ``classes``: the classes to draw from (default: all). Images are drawn at random (seeded).
    A class with fewer correctly classified images gives fewer (the paper marks such rows).
    """
    if dataset.info.multilabel:
        raise ValueError(
            f"images_per_class: {dataset.info.key!r} is multi-label; use images_per_label_set."
        )
    if is_multilabel(model):
        raise ValueError(
            "images_per_class: the model is multi-label (sigmoid outputs) "
            f"but {dataset.info.key!r} is single-label; pass the softmax model trained "
            f"on {dataset.info.key!r}."
        )
    _check_per("per_class", per_class)
    classes = range(dataset.info.n_classes) if classes is None else classes
    correct = predict_labels(model, dataset) == dataset.labels
    rng = np.random.default_rng(seed)
    return {
        int(c): np.sort(
            rng.permutation(np.flatnonzero(correct & (dataset.labels == c)))[:per_class]
        )
        for c in classes
    }


def frequent_label_sets(labels, count: int = 5) -> np.ndarray:
    """The ``count`` most frequent label sets (count, L) of 0/1 labels (N, L), most frequent first.

    Paper 004 attacks the five most frequent ChestMNIST sets: Normal (no finding), Infiltration,
    Atelectasis, Effusion and Nodule.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels has shape {labels.shape}; expected (N, L) 0/1 label sets.")
    check_int("count", count, 1, "label sets")
    sets, frequency = np.unique(labels.astype(np.uint8), axis=0, return_counts=True)
    order = np.lexsort((np.arange(len(sets)), -frequency))  # by frequency, ties in a fixed order
    return sets[order[:count]]


def images_per_label_set(
    model,
    dataset,
    sets,
    per_set: int,
    seed: int = 0,
    correct_only: bool = True,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Indices of up to ``per_set`` images whose true label set equals each of ``sets``.

    ``sets``: (S, L) 0/1 label sets; keys of the result are their names ("Normal", "INFI", ...).
    ``correct_only``: only images whose predicted set is also that set (exactly); set it to False
    for a model that rarely predicts whole sets exactly - the attack then changes whatever set
    the model predicts for the image. ``batch_size``: images per model call (None: from the image
    size).
    """
    if not dataset.info.multilabel:
        raise ValueError(
            f"images_per_label_set: {dataset.info.key!r} is single-label; use images_per_class."
        )
    if not is_multilabel(model):
        raise ValueError(
            f"images_per_label_set: the model is single-label (softmax) but {dataset.info.key!r} "
            "is multi-label; pass a model with one sigmoid output per finding."
        )
    _check_per("per_set", per_set)
    sets = np.asarray(sets)
    if sets.ndim != 2 or sets.shape[1] != dataset.info.n_classes:
        raise ValueError(
            f"sets has shape {sets.shape}; expected (S, {dataset.info.n_classes}) label sets."
        )
    proba = predict_proba(model, dataset, _batch_size(batch_size, dataset.shape))
    predicted = (proba > GAMMA).astype(np.uint8)
    rng = np.random.default_rng(seed)
    names = label_set_names(sets, dataset.info.short_names)
    out = {}
    for name, wanted in zip(names, sets):
        match = np.all(dataset.labels == wanted, axis=1)
        if correct_only:
            match &= np.all(predicted == wanted, axis=1)
        out[name] = np.sort(rng.permutation(np.flatnonzero(match))[:per_set])
    return out


@dataclass
class Successes:
    """Successful attacks to show: for the pixel count ``k`` with the most successes, up to
    ``limit`` of them as (attack name, result, index into that result), attacks taking turns."""

    k: int
    wins: int  # successful images with k pixels, over all attacks
    attempts: int  # images attacked with k pixels
    picked: list


def pick_successes(results: dict, pixel_counts, limit: int = 4) -> Successes:
    """The k of ``pixel_counts`` with the most successes in ``results`` {(attack, k): result} (the
    smallest k on a tie) and up to ``limit`` of its successful images, attacks taking turns."""
    by_k = {k: [(a, r) for (a, kk), r in results.items() if kk == k] for k in pixel_counts}
    wins = {k: sum(int(r.success.sum()) for _, r in runs) for k, runs in by_k.items()}
    k = max(pixel_counts, key=lambda k: (wins[k], -k))
    turns = sorted(
        (
            (rank, attack, result, int(i))
            for attack, result in by_k[k]
            for rank, i in enumerate(np.flatnonzero(result.success))
        ),
        key=lambda t: t[0],
    )[:limit]
    attempts = sum(len(r.success) for _, r in by_k[k])
    return Successes(k, wins[k], attempts, [(a, r, i) for _, a, r, i in turns])


def prediction_text(
    result: PixelAttackResult, i: int, names: Sequence[str], adversarial: bool
) -> str:
    """The clean (or adversarial) prediction of image ``i`` with its confidence, for figure titles.

    Single-label: "NORMAL (97.1%)"; multi-label: the present findings with their outputs,
    "INFI (81%), ATEL (62%)", or "Normal" when none is above gamma.
    """
    proba = (result.final_proba if adversarial else result.original_proba)[i]
    label = (result.final if adversarial else result.original)[i]
    if not result.multilabel:
        return f"{names[int(label)]} ({proba[int(label)]:.1%})"
    present = np.flatnonzero(label)
    return ", ".join(f"{names[j]} ({proba[j]:.0%})" for j in present) if present.size else NORMAL


# --------------------------------------------------------------------------- cache

_ARRAYS = (
    "adversarial",
    "success",
    "original",
    "final",
    "original_confidence",
    "final_confidence",
    "original_proba",
    "final_proba",
    "pixels",
    "generations",
    "queries",
)


def save_result(result: PixelAttackResult, path) -> bool:
    """Write a pixel attack's result (npz); an existing file is never overwritten (False)."""
    extra = {} if result.target is None else {"target": result.target}
    return save_npz_once(
        path,
        **{name: getattr(result, name) for name in _ARRAYS},
        **extra,
        seconds=result.seconds,
        multilabel=result.multilabel,
        method=result.method,
    )


def load_result(path) -> PixelAttackResult:
    """Read a result written by :func:`save_result`."""
    with np.load(path) as f:
        return PixelAttackResult(
            **{name: f[name] for name in _ARRAYS},
            seconds=float(f["seconds"]),
            target=f["target"] if "target" in f.files else None,
            multilabel=bool(f["multilabel"]),
            method=str(f["method"]),
        )


# More than eight parameters: those of pixel_attack, plus the model's key and the cache folder.
def cached_attack(
    model,
    model_key: str,
    images,
    settings: PixelSettings | None = None,
    *,
    target=None,
    cache=None,
    batch_size: int | None = None,
    progress: bool = True,
    **options,
) -> PixelAttackResult:
    """:func:`pixel_attack`, saved in the course cache (``pixel_attacks``) and reloaded by later
    runs.

    ``model_key`` names the trained model (``TrainedModel.key``); the key
    (:meth:`PixelSettings.key`) also covers the images, targets and every DE setting, so a changed
    setting computes a new attack.
    """
    settings = settings_from(PixelSettings, settings, options, "cached_attack")
    key = settings.key(model_key, images, target, weights_digest(model))
    path = Path(cache or cache_dir("pixel_attacks")) / f"{key}.npz"
    if path.exists():
        return load_result(path)
    result = pixel_attack(
        model, images, settings, target=target, batch_size=batch_size, progress=progress
    )
    # another process saved the same attack meanwhile: use its file
    if not save_result(result, path):
        return load_result(path)
    return result
