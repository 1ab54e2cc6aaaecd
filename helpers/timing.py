"""How much work every chapter does, and how long that takes on a Colab T4.

**Passes.** :func:`chapter_passes` gives, per architecture, the images that go forward and backward
through the models while a chapter runs (the shape of ``"passes"`` in a results file, counted by
:mod:`helpers.costs`), as arithmetic from the scale preset and the split sizes. One small function
per chapter mirrors its notebook cell by cell, built from a few blocks: training (:func:`training`),
UAPs (:func:`uap_passes`), predictions and UAP evaluations (:func:`predictions`,
:func:`evaluations`), pixel attacks (:func:`pixel_attack_passes`, :func:`random_pixel_passes`) and
adversarial retraining (:func:`retraining_passes`). The chapter is assumed to run with chapter 1's
models in the course cache and no UAP, pixel attack or retraining round cached yet; what the chapter
computes twice with the same arguments (a cached UAP asked for again, an eps grid search already
done) is counted once. Pixel attacks stop early, per image, once they succeed, and attack only the
correctly classified images they find: their terms are upper bounds (all generations, every image
found). With ``shared_cache=True`` the chapters before are taken to have run in the same cache (a
whole course run in order, as a rehearsal does): what they cached is not counted again.

**Split sizes.** :func:`split_sizes` loads the splits (:func:`helpers.data.load_for_scale`) and
counts them: exact for the data loaded (a rehearsal always uses synthetic data, whose class draws
are random). :func:`official_sizes` samples label lists with the official MedMNIST class counts the
same way the loader samples the real files: exact for the real data, except the number of ChestMNIST
training images with a finding, estimated (it matters only when no ``max_train`` caps it:
``paper``).

**Time.** Source of the cost: NVIDIA DeepLearningExamples,
``TensorFlow/Classification/ConvNets/resnet50v1.5/README.md``, "Inference performance: NVIDIA T4
(1x T4 16G)", FP32, batch 32: 414.66 images/s for ResNet-50 v1.5 at 224 x 224 px (TensorFlow 20.06
NGC container) -> 2.41 ms per forward pass of one image. A backward pass (gradient w.r.t. weights or
input) is taken as 2 forward passes (the usual rule; the same README's V100 numbers give a training
step 2.8x the inference cost per image: 1,140 img/s FP32 inference at batch 32 vs 412 img/s FP32+XLA
training, at batch 128). Other architectures and input sides scale by their floating-point
operations relative to ResNet-50 at 224 px, measured with TensorFlow's profiler on the Keras
application built with ``weights=None`` at the side the course model resizes to
(``preset.backbone_input``); the small CNN is measured the same way. :func:`predicted_minutes` is
compute only, a lower estimate: data loading, tracing, plotting and the passes :mod:`helpers.costs`
does not count are left out, and small inputs keep a GPU less busy than ResNet-50's 224 px do (no
fixed overhead per chapter is added: nothing measured here would justify one). Its pixel-attack
terms are upper bounds (see above).

Usage: ``python -m helpers.timing [--scale gpu] [--rehearsal]`` prints :func:`readme_table`;
``python -m helpers.timing --scale gpu --check DIR`` compares a rehearsal's counted passes with the
arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import data
from .models import get_architecture
from .scales import SCALES, Preset, as_preset, get_preset

CHAPTERS = (
    "01_transfer_learning",
    "02_uap_nontargeted",
    "03_uap_targeted",
    "04_natural_image_uaps",
    "05_pixel_attacks",
    "06_multilabel_pixel_attacks",
    "07_adversarial_retraining",
)
ALL_DATASETS = ("derma", "oct", "pneumonia", "chest")  # chapter 1
UAP_DATASETS = ("derma", "oct", "pneumonia")  # chapters 2-4 and 7
NORMS = (2, "inf")
SEED = 0  # the chapters' SEED parameter

#: T4, FP32, batch 32: ResNet-50 v1.5 at 224 px (see the module docstring), images per second.
T4_RESNET50_IMAGES_PER_SECOND = 414.66
REFERENCE = ("resnet50", 224)  # the architecture and side that rate is for
BACKWARD_FACTOR = 2.0  # a backward pass costs this many forward passes
#: ChestX-ray14 (NIH): 60,361 of its 112,120 images are labelled "No Finding"; the share
#: with a finding estimates how many ChestMNIST training images are kept (the chest model
#: trains only on those).
CHEST_SHARE_WITH_FINDING = 1 - 60_361 / 112_120


# --------------------------------------------------------------------------- split sizes


@dataclass(frozen=True)
class SplitSizes:
    """Images in one dataset's splits as a chapter sees them (after sampling and caps)."""

    train: int  # training images, oversampling's copies included
    val: int
    test: int
    distinct: int  # training images without oversampling's copies (UAP attack sets)
    test_classes: tuple = ()  # test images per class (single-label data)


def _sizes_of(splits: dict) -> SplitSizes:
    train, test = splits["train"], splits["test"]
    classes = () if test.info.multilabel else tuple(int(c) for c in test.class_counts())
    return SplitSizes(len(train), len(splits["val"]), len(test), len(train.distinct()), classes)


@functools.lru_cache(maxsize=None)
def split_sizes(
    preset: Preset, seed: int = SEED, source: str = "synthetic"
) -> dict[str, SplitSizes]:
    """Sizes of every dataset's splits, by loading them as the chapters do: exact for that data.

    ``source="synthetic"`` (what a rehearsal uses) generates the stand-ins: seconds at the ``gpu``
    scale.
    """
    return {
        name: _sizes_of(data.load_for_scale(name, preset, seed=seed, source=source, verbose=False))
        for name in ALL_DATASETS
    }


def _label_only(info, split: str, counts) -> data.MedDataset:
    """A split with the official class counts and no pixels (1 x 1 px): the samplers only read
    labels."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return data.MedDataset(info, split, np.zeros((len(labels), 1, 1, 1), np.uint8), labels)


def _official_single_label(name: str, preset: Preset, seed: int) -> SplitSizes:
    info = data.get_info(name)
    counts = info.class_counts
    splits = {
        "train": data._sample_train(_label_only(info, "train", counts["train"]), preset, seed),
        "val": data.cap(_label_only(info, "val", counts["val"]), preset.max_test, seed + 1),
        "test": data._sample_test(_label_only(info, "test", counts["test"]), preset, seed + 2),
    }
    return _sizes_of(splits)


def _official_chest(preset: Preset) -> SplitSizes:
    """ChestMNIST: training images with a finding (estimated), every split capped (exact caps)."""
    info = data.get_info("chest")
    with_finding = round(CHEST_SHARE_WITH_FINDING * info.n_samples["train"])
    train = min(with_finding, preset.max_train or with_finding)
    val, test = (
        min(info.n_samples[s], preset.max_test or info.n_samples[s]) for s in ("val", "test")
    )
    return SplitSizes(train, val, test, train)


@functools.lru_cache(maxsize=None)
def official_sizes(preset: Preset, seed: int = SEED) -> dict[str, SplitSizes]:
    """Split sizes with the real MedMNIST data, from the official class counts (no data loaded).

    The loader's samplers (class-balanced subsets, stratified caps, oversampling) run on label lists
    with the official counts: their sizes depend only on those counts, so this is exact for the real
    files. ChestMNIST's training images with a finding are estimated
    (:data:`CHEST_SHARE_WITH_FINDING`); any ``max_train`` below about 36,000 (every scale but
    ``paper``) makes that exact too.
    """
    sizes = {name: _official_single_label(name, preset, seed) for name in UAP_DATASETS}
    return {**sizes, "chest": _official_chest(preset)}


def default_sizes(preset: Preset) -> dict[str, SplitSizes]:
    """The sizes a chapter run at ``preset`` sees: synthetic for a rehearsal, else the real
    data's."""
    return split_sizes(preset) if preset.rehearsal else official_sizes(preset)


# --------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Work:
    """Image passes of one piece of a chapter's work through one architecture.

    ``key`` names a result the course caches (a trained model, a UAP, a pixel attack, an eps
    search): work with the same key is done once per cache. ``bound``: the passes are an upper bound
    (early stopping, or image counts that depend on the model's predictions).
    """

    arch: str
    forward: int = 0
    backward: int = 0
    key: tuple | None = None
    bound: bool = False


def training(arch: str, epochs: int, sizes: SplitSizes, key: tuple | None = None) -> Work:
    """``training.fit``: per epoch the training and validation images forward, the training images
    backward."""
    return Work(arch, epochs * (sizes.train + sizes.val), epochs * sizes.train, key)


def predictions(arch: str, images: int, bound: bool = False) -> Work:
    """``models.predict_proba`` (or the pixel attacks' forward) on ``images`` images."""
    return Work(arch, images, bound=bound)


def evaluations(arch: str, images: int, count: int = 1) -> Work:
    """``count`` calls of ``uap.evaluate`` on ``images`` images: clean and perturbed predictions
    each."""
    return Work(arch, 2 * images * count)


def uap_passes(
    arch: str, images: int, passes: int, eval_images: int = 0, key: tuple | None = None
) -> Work:
    """``uap.universal_perturbation`` on N = ``images`` attack images, i = ``passes``,
    E = ``eval_images``.

    Forward: N + E clean predictions, then per pass 3N (two predictions and the FGSM step) + N (R_f
    on the attack images) + E (R_f on the evaluation images). Backward: N per pass (the FGSM
    gradients). Every pass runs (the chapters set no ``stop_at``).
    """
    forward = images + eval_images + passes * (4 * images + eval_images)
    return Work(arch, forward, passes * images, key)


def pixel_attack_passes(
    arch: str, images: int, population: int, generations: int, key: tuple | None = None
) -> Work:
    """``pixel.pixel_attack``: clean and final predictions, the initial population, each
    generation's children.

    Upper bound: an image stops once its attack succeeds, and a chapter attacks only the correctly
    classified images it finds (``images`` is the most it can find).
    """
    return Work(arch, images * (2 + population * (1 + generations)), key=key, bound=True)


def random_pixel_passes(arch: str, images: int, tries: int) -> Work:
    """``pixel.random_pixels``: clean and final predictions and ``tries`` candidates per image
    (bound: images found)."""
    return Work(arch, images * (2 + tries), bound=True)


def retraining_passes(
    arch: str, preset: Preset, sizes: SplitSizes, key: tuple | None = None
) -> Work:
    """``retrain.adversarial_retraining`` with the preset's budgets (chapter 7's ``SETTINGS``).

    Round 0: a fresh UAP on N attack images and its evaluation on E test images. Every further
    round: ``retrain_uaps`` UAPs, ``retrain_epochs`` epochs of fine-tuning on the training split, a
    fresh UAP and its evaluation.
    """
    n, e = attack_count(sizes, preset), eval_count(sizes, preset)
    fresh = [uap_passes(arch, n, preset.uap_i_max), evaluations(arch, e)]
    one_round = [
        *fresh,
        training(arch, preset.retrain_epochs, sizes),
        *[uap_passes(arch, n, preset.uap_i_max)] * preset.retrain_uaps,
    ]
    parts = fresh + one_round * preset.retrain_rounds
    return Work(arch, sum(p.forward for p in parts), sum(p.backward for p in parts), key)


def attack_count(sizes: SplitSizes, preset: Preset) -> int:
    """Training images a UAP is made from: ``uap_images``, at most the distinct training images."""
    return min(preset.uap_images, sizes.distinct)


def eval_count(sizes: SplitSizes, preset: Preset) -> int:
    """Test images a UAP is evaluated on: ``eval_images``, at most the test split."""
    return min(preset.eval_images, sizes.test)


def _model_key(
    dataset: str, arch: str, preset: Preset, seed: int = SEED, weights: str | None = "default"
) -> tuple:
    weights = preset.weights if weights == "default" else weights
    return ("model", dataset, arch, None if arch == "small_cnn" else weights, seed)


def _train_model(dataset: str, arch: str, preset: Preset, sizes: SplitSizes, **model) -> Work:
    """``training.get_or_train`` of a model not in the cache yet."""
    return training(
        arch, preset.epochs_for(arch), sizes, _model_key(dataset, arch, preset, **model)
    )


# More than eight parameters: the fields of a UAP's cache key, so that shared UAPs count once.
def _uap(
    dataset: str,
    arch: str,
    preset: Preset,
    images: int,
    zeta: float,
    norm,
    target=None,
    *,
    mode: str | None = None,
    model: str = "seed0",
) -> Work:
    """``uap.cached_uap`` from the training images, with the preset's eps and passes."""
    mode = mode or preset.uap_mode
    key = (
        "uap",
        dataset,
        arch,
        model,
        "train",
        zeta,
        str(norm),
        target,
        preset.uap_eps,
        preset.uap_i_max,
        mode,
    )
    return uap_passes(arch, images, preset.uap_i_max, key=key)


# --------------------------------------------------------------------------- chapter 1


def _chapter_01(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 1: training every model, then its accuracy (or AUC) on the test and training
    images."""
    work = []
    for name in ALL_DATASETS:
        s = sizes[name]
        for arch in preset.architectures:
            work += [
                _train_model(name, arch, preset, s),  # cell "training.get_or_train"
                # cell "How well do they classify?"
                predictions(arch, s.test + s.train),
            ]
    # cell "AUC per finding"
    work.append(predictions(preset.main_architecture, sizes["chest"].test))
    return work


# --------------------------------------------------------------------------- chapters 2 and 3


def _transferability(
    name: str, preset: Preset, s: SplitSizes, zeta: float, target=None
) -> list[Work]:
    """Cells "Transferability": p = 2 UAPs of every model (a second seed if one architecture), each
    on each model."""
    main, e = preset.main_architecture, eval_count(s, preset)
    pool = [(arch, "seed0") for arch in preset.architectures]
    work = []
    if len(pool) < 2:
        pool = [(main, "seed0"), (main, "seed1")]
        work.append(_train_model(name, main, preset, s, seed=SEED + 1))
    work += [
        _uap(name, arch, preset, attack_count(s, preset), zeta, 2, target, model=model)
        for arch, model in pool
    ]
    return work + [evaluations(arch, e, len(pool)) for arch, _ in pool]


def _chapter_02(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 2: non-targeted UAPs (Fig. 1, Table 1, the two modes, transferability, ART)."""
    zeta_of = {"derma": 0.04, "oct": 0.06, "pneumonia": 0.04}  # PAPER_ZETA
    main, e_pneumonia = preset.main_architecture, eval_count(sizes["pneumonia"], preset)
    few = min(60, attack_count(sizes["pneumonia"], preset))
    # Cell "The algorithm": readable_uap's clean predictions (its own model(...) calls are not
    # counted by helpers.costs), the helper's faithful pass, R_f of both. The ART cell: ART's own
    # passes are not counted either; the helper's two faithful passes and both UAPs evaluated on the
    # test images are.
    work = [
        predictions(main, few),
        uap_passes(main, few, 1),
        predictions(main, 2 * few),
        uap_passes(main, few, 2),
        evaluations(main, e_pneumonia, 2),
    ]
    for name in UAP_DATASETS:
        s, zeta = sizes[name], zeta_of[name]
        n, e = attack_count(s, preset), eval_count(s, preset)
        for norm in NORMS:  # Fig. 1: rate_versus_zeta, UAP and control on both image sets
            for z in preset.zeta_grid:
                work += [_uap(name, main, preset, n, z, norm), evaluations(main, n + e, 2)]
        work += [_uap(name, main, preset, n, zeta, 2), evaluations(main, e, 2)]  # Fig. 1D-F
        for arch in preset.architectures:  # Table 1: rate_with_control, p = 2 and inf
            for norm in NORMS:
                work += [_uap(name, arch, preset, n, zeta, norm), evaluations(arch, e, 2)]
        for mode in ("faithful", "batched"):  # "The paper's algorithm and the batched variant"
            work += [_uap(name, main, preset, n, zeta, 2, mode=mode), evaluations(main, e)]
        work += _transferability(name, preset, s, zeta)
    return work


def _chapter_03(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 3: targeted UAPs (R_s versus zeta, Table 2, transferability), two targets per
    dataset."""
    targets = {"derma": ["NV", "MEL"], "oct": ["NM", "CNV"], "pneumonia": ["NORMAL", "PNEUMONIA"]}
    zeta_of = {"derma": 0.02, "oct": 0.06, "pneumonia": 0.02}  # PAPER_ZETA
    main = preset.main_architecture
    # "What changes in the loop": the readable loop's model(...) calls are not counted by
    # helpers.costs; the helper's faithful pass is
    work = [uap_passes(main, min(60, attack_count(sizes["pneumonia"], preset)), 1)]
    for name in UAP_DATASETS:
        s, zeta = sizes[name], zeta_of[name]
        n, e = attack_count(s, preset), eval_count(s, preset)
        for target in targets[name]:  # "Success rate versus the size": p = 2, and the baseline R_s0
            for z in preset.zeta_grid:
                work += [_uap(name, main, preset, n, z, 2, target), evaluations(main, n + e, 2)]
            work.append(predictions(main, e))
        for arch in preset.architectures:  # Table 2: rate_with_control, p = 2 and inf
            for target in targets[name]:
                for norm in NORMS:
                    work += [
                        _uap(name, arch, preset, n, zeta, norm, target),
                        evaluations(arch, e, 2),
                    ]
        work += _transferability(name, preset, s, zeta, targets[name][0])
    return work


# --------------------------------------------------------------------------- chapter 4

CH4_ZETA = {"derma": 0.04, "oct": 0.08, "pneumonia": 0.04}  # PAPER_ZETA
CH4_NORM = {"derma": 2, "oct": "inf", "pneumonia": 2}  # PAPER_NORM
CH4_TABLE2_ZETA = {"derma": 0.08, "oct": 0.16, "pneumonia": 0.08}
CH4_TARGETS = {"derma": ["MEL", "NV"], "oct": ["CNV", "NM"], "pneumonia": ["PNEUMONIA", "NORMAL"]}
EPS_GRID = (0.25, 0.5, 1.0, 2.0)  # multiples of the preset's eps


def _natural_key(name: str, arch: str, model: str, zeta: float, eps, target=None) -> tuple:
    return ("uap", name, arch, model, "natural", zeta, str(CH4_NORM[name]), target, eps, 1)


def _eps_search(
    name: str, arch: str, preset: Preset, s: SplitSizes, model: str = "seed0"
) -> list[Work]:
    """``natural_eps``: a one-pass natural-image UAP per eps of the grid, R_f on validation images;
    once per model.

    The UAP with the eps chosen, at the paper's zeta, is then in the cache: the zero-cost marker
    says so.
    """
    m, v = preset.natural_images, min(preset.eval_images, s.val)
    work = []
    for eps in EPS_GRID:
        work += [
            uap_passes(arch, m, 1, key=_natural_key(name, arch, model, CH4_ZETA[name], eps)),
            Work(arch, 2 * v, key=("eps search", name, arch, model, eps)),
        ]
    return work + [Work(arch, key=_natural_key(name, arch, model, CH4_ZETA[name], "best"))]


def _three(
    name: str,
    arch: str,
    preset: Preset,
    s: SplitSizes,
    zeta: float,
    target=None,
    model: str = "seed0",
) -> list[Work]:
    """``three_perturbations`` (and Table 2's UAPs): from training images, from natural images
    (tuned eps)."""
    natural = _natural_key(name, arch, model, zeta, "best", target)
    return [
        _uap(
            name, arch, preset, attack_count(s, preset), zeta, CH4_NORM[name], target, model=model
        ),
        *_eps_search(name, arch, preset, s, model),
        uap_passes(arch, preset.natural_images, 1, key=natural),
    ]


def _natural_chunks(name: str, preset: Preset, s: SplitSizes) -> list[Work]:
    """``natural.uap_in_chunks``: one pass per chunk of natural images, R_f on the test images after
    each."""
    m, c, e = preset.natural_images, preset.natural_chunk, eval_count(s, preset)
    chunks = [min(c, m - start) for start in range(0, m, c)]
    return [uap_passes(preset.main_architecture, size, 1, eval_images=e) for size in chunks]


def _table2(name: str, preset: Preset, s: SplitSizes) -> list[Work]:
    """ "Does transfer learning cause it?": the backbone pretrained and from scratch (or the main
    model alone)."""
    zeta, e, main = CH4_TABLE2_ZETA[name], eval_count(s, preset), preset.main_architecture
    backbone = next((a for a in preset.architectures if a != "small_cnn"), None)
    if not (backbone and preset.weights == "imagenet"):
        return [*_three(name, main, preset, s, zeta), evaluations(main, e, 4)]
    work = [_train_model(name, backbone, preset, s, weights=None)]
    for model in ("seed0", "scratch"):  # three rates and the clean accuracy per model
        work += [*_three(name, backbone, preset, s, zeta, model=model), evaluations(backbone, e, 4)]
    return work


def _chapter_04(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 4: UAPs from natural images (eps search, Fig. 1-5, Tables 1-2 of paper 001).

    The natural images are ``preset.natural_images`` crops of scikit-image's photographs (a folder
    of photos in ``NATURAL_IMAGES_DIR`` holding fewer gives fewer passes).
    """
    main, work = preset.main_architecture, []
    for name in UAP_DATASETS:
        s, zeta = sizes[name], CH4_ZETA[name]
        e = eval_count(s, preset)
        work += [
            predictions(main, preset.natural_images),  # Tables S1-S3
            # "Choosing eps"
            *_eps_search(name, main, preset, s),
        ]
        for z in sorted(set(preset.zeta_grid) | {zeta}):  # "Training images, natural images, ..."
            work += [*_three(name, main, preset, s, z), evaluations(main, e, 3)]
        for arch in preset.architectures:  # "Across architectures"
            work += [*_three(name, arch, preset, s, zeta), evaluations(arch, e, 3)]
        work += _natural_chunks(name, preset, s)  # "The chunked log"
        # Figs. 4-5: all cached by now
        work += [*_three(name, main, preset, s, zeta), evaluations(main, e)]
        for target in CH4_TARGETS[name]:  # "Targeted attacks" (Table 1)
            work += [
                predictions(main, e),
                *_three(name, main, preset, s, zeta, target),
                evaluations(main, e, 3),
            ]
        work += _table2(name, preset, s)  # Table 2
    return work


# --------------------------------------------------------------------------- chapters 5 and 6


def _pixel_pair(
    name: str, arch: str, preset: Preset, images: int, pixels: int, group: str
) -> list[Work]:
    """``pixel.cached_attack`` and its random control (``tries`` = population) on one group of
    images."""
    p, g = preset.pixel_population, preset.pixel_generations
    return [
        pixel_attack_passes(arch, images, p, g, key=("pixel", name, arch, pixels, group)),
        random_pixel_passes(arch, images, p),
    ]


def _chapter_05(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 5: one- to three-pixel attacks on pneumonia, OCT (untargeted and targeted) and skin
    lesions."""
    victim, per_class = preset.pixel_victim, preset.pixel_images_per_class
    found = {
        name: [min(per_class, count) for count in sizes[name].test_classes] for name in UAP_DATASETS
    }
    # images_per_class
    work = [predictions(victim, sizes[name].test) for name in ("pneumonia", "oct", "derma")]
    # "Differential evolution, written out": the loop's own model(...) calls are not
    # counted; the helper's are.
    work.append(
        pixel_attack_passes(
            victim, min(1, found["pneumonia"][0]), preset.pixel_population, preset.pixel_generations
        )
    )
    for name in ("pneumonia", "oct"):  # Tables 10 and 11: every class's group, k = 1, 2, 3
        for group, images in enumerate(found[name]):
            for pixels in (1, 2, 3):
                work += _pixel_pair(name, victim, preset, images, pixels, group)
    work.append(
        pixel_attack_passes(
            victim,
            sum(found["derma"]),
            preset.pixel_population,  # Tables 6-9
            preset.pixel_generations,
            key=("pixel", "derma", victim, 1, "all"),
        )
    )
    return work


def _chapter_06(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 6: one- and three-pixel attacks on the multi-label chest X-ray model."""
    victim, test = preset.pixel_victim, sizes["chest"].test
    images = min(5 * preset.pixel_images_per_class, test)  # five label sets
    work = [
        predictions(victim, 2 * test),  # mean AUC, share with a finding
        predictions(victim, test),  # images_per_label_set
        # ... again if too few were predicted exactly
        predictions(victim, test, bound=True),
    ]
    for pixels in (1, 3):
        work += _pixel_pair("chest", victim, preset, images, pixels, "sets")
    return work


# --------------------------------------------------------------------------- chapter 7


def _chapter_07(preset: Preset, sizes: dict) -> list[Work]:
    """Chapter 7: three display UAPs and one round by hand, then adversarial retraining,
    non-targeted and targeted, per dataset."""
    main = preset.main_architecture
    shown = min(200, sizes["pneumonia"].train)
    # "The retraining set" (faithful, 2 passes)
    work = [uap_passes(main, shown, 2) for _ in range(3)]
    # "One round, by hand": one epoch on the shown images (no validation), a fresh UAP, two
    # evaluations
    by_hand = replace(sizes["pneumonia"], train=shown, val=0)
    shown_test = eval_count(sizes["pneumonia"], preset)
    work += [
        training(main, 1, by_hand),
        uap_passes(main, shown, 2),
        evaluations(main, shown_test, 2),
    ]
    for name in UAP_DATASETS:  # "Retraining, round by round"
        for kind in ("non-targeted", "targeted"):
            work.append(
                retraining_passes(main, preset, sizes[name], key=("retraining", name, kind))
            )
    return work


CHAPTER_WORK = dict(
    zip(
        CHAPTERS,
        (_chapter_01, _chapter_02, _chapter_03, _chapter_04, _chapter_05, _chapter_06, _chapter_07),
    )
)


# --------------------------------------------------------------------------- totals


def _check_chapter(chapter: str) -> None:
    if chapter not in CHAPTER_WORK:
        raise ValueError(f"chapter={chapter!r}; choose one of {', '.join(CHAPTERS)}.")


def chapter_work(chapter: str, preset, sizes=None, *, shared_cache: bool = False) -> list[Work]:
    """The chapter's work items, each cached result once (and, with ``shared_cache``, none cached
    before)."""
    _check_chapter(chapter)
    preset = as_preset(preset)
    sizes = sizes or default_sizes(preset)
    done = set()
    if shared_cache:
        for earlier in CHAPTERS[: CHAPTERS.index(chapter)]:
            done |= {w.key for w in CHAPTER_WORK[earlier](preset, sizes) if w.key is not None}
    work = []
    for item in CHAPTER_WORK[chapter](preset, sizes):
        if item.key is None or item.key not in done:
            work.append(item)
            done.add(item.key)
    return work


def _totals(work, include_bounds: bool = True) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for item in work:
        if item.bound and not include_bounds:
            continue
        entry = totals.setdefault(item.arch, {"forward": 0, "backward": 0})
        entry["forward"] += int(item.forward)
        entry["backward"] += int(item.backward)
    return {arch: kinds for arch, kinds in sorted(totals.items()) if any(kinds.values())}


def chapter_passes(
    chapter: str, preset, sizes=None, *, shared_cache: bool = False
) -> dict[str, dict[str, int]]:
    """``{architecture: {"forward": n, "backward": n}}``: image passes of ``chapter`` at ``preset``.

    ``sizes``: :class:`SplitSizes` per dataset (default: :func:`default_sizes`). Pixel-attack terms
    are upper bounds. ``shared_cache``: the earlier chapters ran in the same cache (what they cached
    is reused).
    """
    return _totals(chapter_work(chapter, preset, sizes, shared_cache=shared_cache))


def passes_range(
    chapter: str, preset, sizes=None, *, shared_cache: bool = False
) -> tuple[dict, dict]:
    """(least, most) passes per architecture: without and with the upper-bound terms."""
    work = chapter_work(chapter, preset, sizes, shared_cache=shared_cache)
    return _totals(work, include_bounds=False), _totals(work)


def _get(passes: dict, arch: str, kind: str) -> int:
    return int(passes.get(arch, {}).get(kind, 0))


def compare(chapter: str, counted: dict, least: dict, most: dict) -> list[str]:
    """Messages where ``counted`` passes lie outside [least, most] (exact when they are equal)."""
    messages = []
    for arch in sorted(set(counted) | set(most) | set(least)):
        for kind in ("forward", "backward"):
            got, low, high = (
                _get(counted, arch, kind),
                _get(least, arch, kind),
                _get(most, arch, kind),
            )
            if low <= got <= high:
                continue
            expected = (
                f"{low}"
                if low == high
                else f"between {low} and {high} (early stopping, images found)"
            )
            messages.append(
                f"{chapter} {arch} {kind}: counted {got}, formula {expected} "
                f"(difference {got - high:+d})"
            )
    return messages


def check_against_counts(
    results_dir, preset, sizes=None, *, shared_cache: bool = True, parallel: bool = False
) -> list[str]:
    """Mismatches between the ``"passes"`` of ``<results_dir>/<chapter>.results.json`` and the
    formulas.

    Deterministic terms must agree exactly; early-stopping and images-found terms may count less
    (counted <= formula). ``shared_cache=True``: the chapters ran in order in one cache that started
    empty, as a rehearsal runs them. ``parallel=True``: chapters after the first ran side by side
    (``pipeline --jobs``), so a chapter may have computed what a chapter before it had not saved
    yet: its count lies between the formula with the earlier chapters' cache and the formula without
    it. Chapters without a results file are skipped (a chapter still running has partial counts).
    """
    preset = as_preset(preset)
    messages = []
    for chapter in CHAPTERS:
        path = Path(results_dir) / f"{chapter}.results.json"
        if not path.is_file():
            continue
        counted = json.loads(path.read_text()).get("passes", {})
        least, most = passes_range(chapter, preset, sizes, shared_cache=shared_cache)
        if parallel and shared_cache:
            most = passes_range(chapter, preset, sizes, shared_cache=False)[1]
        messages += compare(chapter, counted, least, most)
    return messages


# --------------------------------------------------------------------------- cost on a T4


def backbone_side(arch: str, preset: Preset) -> int:
    """Side (px) of the images the architecture computes on: the backbone input, or the stored
    size."""
    if get_architecture(arch).constructor is None:
        return preset.image_size
    return max(preset.backbone_input or preset.image_size, get_architecture(arch).min_input)


def _network(arch: str, side: int):
    # Keras and TensorFlow only for the FLOP counts: the pass arithmetic and --check need neither
    import keras

    spec = get_architecture(arch)
    if spec.constructor is None:  # the small CNN, with 3 channels (grey differs in one layer)
        from .models import small_cnn_body

        inputs = keras.Input((side, side, 3))
        return keras.Model(inputs, small_cnn_body(inputs))
    constructor = getattr(keras.applications, spec.constructor)
    return constructor(include_top=False, weights=None, input_shape=(side, side, 3), pooling="avg")


@functools.lru_cache(maxsize=None)
def backbone_flops(arch: str, side: int) -> int:
    """Floating-point operations of one image's forward pass through the network at ``side`` px.

    TensorFlow's profiler (``float_operation``) on the Keras application built with ``weights=None``
    (the course's resizing, preprocessing and head are left out: a small fraction).
    """
    import tensorflow as tf

    network = _network(arch, side)
    graph = (
        tf.function(lambda x: network(x, training=False))
        .get_concrete_function(tf.TensorSpec((1, side, side, 3), tf.float32))
        .graph
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the profiler's deprecation notices
    try:
        return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
    finally:
        tf.get_logger().setLevel(level)


def forward_ms(arch: str, side: int) -> float:
    """Predicted T4 milliseconds of one image's forward pass: ResNet-50's, scaled by the FLOPs."""
    reference = 1000.0 / T4_RESNET50_IMAGES_PER_SECOND
    return reference * backbone_flops(arch, side) / backbone_flops(*REFERENCE)


def passes_minutes(passes: dict, preset: Preset) -> float:
    """Predicted T4 minutes of ``passes`` ({arch: {"forward", "backward"}}); a backward pass = 2
    forward."""
    ms = sum(
        forward_ms(arch, backbone_side(arch, preset))
        * (kinds["forward"] + BACKWARD_FACTOR * kinds["backward"])
        for arch, kinds in passes.items()
    )
    return ms / 60_000.0


def predicted_minutes(chapter: str, preset, sizes=None) -> float:
    """Predicted T4 minutes of ``chapter`` at ``preset`` (compute only; see the module
    docstring)."""
    preset = as_preset(preset)
    return passes_minutes(chapter_passes(chapter, preset, sizes), preset)


def readme_table(scale: str = "gpu", rehearsal: bool = False, sizes=None) -> str:
    """Markdown: per chapter, forward / backward passes (millions) per architecture and predicted T4
    minutes."""
    preset = get_preset(scale, rehearsal=rehearsal)
    passes = {chapter: chapter_passes(chapter, preset, sizes) for chapter in CHAPTERS}
    order = {arch: i for i, arch in enumerate(preset.architectures)}
    archs = sorted(
        {arch for p in passes.values() for arch in p}, key=lambda a: (order.get(a, len(order)), a)
    )
    lines = [
        f"| chapter | {' | '.join(archs)} | T4 minutes |",
        "| --- |" + " ---: |" * (len(archs) + 1),
    ]
    total = 0.0
    for chapter, counts in passes.items():
        minutes = passes_minutes(counts, preset)
        total += minutes
        cells = [
            f"{_get(counts, a, 'forward') / 1e6:.3g} / {_get(counts, a, 'backward') / 1e6:.3g}"
            for a in archs
        ]
        lines.append(f"| {chapter} | {' | '.join(cells)} | {minutes:.1f} |")
    lines.append(f"| sum of the chapters | {' | '.join('' for _ in archs)} | {total:.1f} |")
    note = (
        f"\nScale '{preset.label}': forward / backward image passes per architecture, in "
        "millions, each chapter run with chapter 1's models cached; minutes: compute only on a T4 "
        "(pixel attacks at all generations, an upper bound)."
    )
    return "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    """Print :func:`readme_table` for ``--scale`` (default gpu)."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.timing", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scale", default="gpu", choices=SCALES)
    parser.add_argument(
        "--rehearsal", action="store_true", help="the scale's rehearsal (synthetic split sizes)"
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        help="compare the passes counted in DIR's results files "
        "(a rehearsal of --scale) with the arithmetic",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_against_counts(
            args.check, get_preset(args.scale, rehearsal=True), parallel=True
        )
        print(
            "\n".join(problems) or f"the passes counted in {args.check} agree with the arithmetic"
        )
        return 1 if problems else 0
    print(readme_table(args.scale, rehearsal=args.rehearsal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
