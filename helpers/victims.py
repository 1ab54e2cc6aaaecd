"""The models the UAP chapters attack and the image sets they use (chapters 2-4).

Each of those chapters loads the three datasets, gets the scale's trained models from the cache
(chapter 1 trains them), and draws, with one random stream, the attack images (the UAPs are made
from them) and the test images (the rates are reported on them); chapter 4 also draws validation
images, to tune eps without touching the test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import draw_distinct, load_for_scale
from .training import get_or_train


def load_and_train(datasets, preset, seed: int = 0) -> tuple[dict, dict]:
    """Every dataset's splits and a trained model per architecture of ``preset``.

    Returns ``splits`` (name -> {"train", "val", "test"}) and ``trained`` ((name, architecture) ->
    :class:`~helpers.training.TrainedModel`), loaded from the cache or trained now.
    """
    splits, trained = {}, {}
    for name in datasets:
        splits[name] = load_for_scale(name, preset, seed=seed)
        for arch in preset.architectures:
            trained[name, arch] = get_or_train(splits[name], arch, preset, seed=seed)
    return splits, trained


@dataclass
class ImageSets:
    """Per dataset name: the attack images (N, H, W, C), the test images (E, H, W, C) and their
    classes (E,), and, if asked for, validation images."""

    attack: dict
    test: dict
    test_labels: dict
    val: dict | None = None


def uap_image_sets(splits: dict, preset, seed: int = 0, val: bool = False) -> ImageSets:
    """``preset.uap_images`` distinct training images and up to ``preset.eval_images`` test (and,
    with ``val``, validation) images of every dataset, drawn from one stream seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    attack = {n: draw_distinct(s["train"], preset.uap_images, rng)[0] for n, s in splits.items()}
    order = {n: rng.permutation(len(s["test"]))[: preset.eval_images] for n, s in splits.items()}
    sets = ImageSets(
        attack,
        {n: splits[n]["test"].take(i) for n, i in order.items()},
        {n: splits[n]["test"].labels[i] for n, i in order.items()},
    )
    if val:
        sets.val = {
            n: s["val"].take(rng.permutation(len(s["val"]))[: preset.eval_images])
            for n, s in splits.items()
        }
    return sets


def transfer_pool(splits: dict, trained: dict, name: str, preset, seed: int = 0) -> dict:
    """The models to measure transferability between, label -> TrainedModel: every architecture of
    ``preset``, or, with only one, that architecture trained with ``seed`` and with ``seed + 1``
    (trained now if not in the cache)."""
    pool = {arch: trained[name, arch] for arch in preset.architectures}
    if len(pool) > 1:
        return pool
    main = preset.main_architecture
    other = get_or_train(splits[name], main, preset, seed=seed + 1, verbose=False)
    return {f"{main} (seed {seed})": trained[name, main], f"{main} (seed {seed + 1})": other}
