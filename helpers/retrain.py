"""Adversarial retraining against UAPs (paper 000, Methods "Adversarial retraining", Fig. S1).

One round: (i) make ``uaps_per_round`` UAPs against the current model from the clean training
images; (ii) build a training set from half the training images clean and the other half each
perturbed by one of those UAPs, chosen at random; (iii) fine-tune the model ``epochs`` more
epochs on it; (iv) make a fresh UAP against the fine-tuned model; (v) record that UAP's R_f
(or R_s) on the test images and the clean test accuracy. Paper: 10 UAPs, 5 epochs, 5 rounds.

Every finished round is saved (model, fresh UAP, numbers) in its own folder under the course
cache, written to a staging folder and renamed into place only when complete: an interrupted
run continues after its last finished round, and nothing earlier is overwritten.

Introduced in chapter 7 (adversarial retraining).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import uap
from .cache import cache_dir, publish_folder, weights_digest
from .checks import check_int, check_positive, settings_from
from .data import draw_distinct
from .own_process import call as call_in_own_process
from .training import fit, save_trained, set_seed


@dataclass
class RetrainingRun:
    """Per-round numbers of one retraining run, its folder and the final model."""

    table: pd.DataFrame  # one row per round (round 0 = before retraining)
    folder: Path
    model: keras.Model
    adv_preds: list  # per round, (E,) evaluation-image predictions under its fresh UAP
    eval_labels: np.ndarray  # (E,) true classes of the evaluation images
    resumed_rounds: list = field(default_factory=list)  # rounds reloaded from the cache

    @property
    def last_adv_pred(self) -> np.ndarray:
        """(E,) evaluation-image predictions under the fresh UAP of the last round."""
        return self.adv_preds[-1]


@dataclass(frozen=True)
class RetrainSettings:
    """The settings of one retraining run, checked once when created.

    The UAPs: ``zeta`` (their size, a fraction of the mean image norm), ``norm``, ``target`` (a
    class for targeted UAPs, R_s is recorded; None: non-targeted, R_f), ``eps``, ``i_max`` and
    ``mode`` ("faithful", paper 000's algorithm, or "batched"), as in
    :class:`~helpers.uap.UAPSettings`. Functions that take settings also accept these names as
    keywords.
    """

    zeta: float | None = None
    norm: str = "2"
    target: int | None = None
    eps: float = 0.01
    i_max: int = 5
    mode: str = "faithful"
    rounds: int = 5  # paper 000: 5
    uaps_per_round: int = 10  # paper 000: 10
    epochs: int = 5  # fine-tuning epochs per round (paper 000: 5)
    # training images each UAP is made from (fewer if the split is smaller), drawn from the split
    # as stored: no image twice, even where training oversamples
    attack_images: int = 500
    eval_images: int | None = None  # test images the rates are measured on (None: all)
    batch_size: int = 32  # of the fine-tuning (paper 000: 32)
    # base rate of the extra epochs; paper 000 does not state it. None: chapter 1's schedule over
    # them (base 1e-3, stepped down at 80 % and 90 % of the epochs)
    learning_rate: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.zeta is None:
            raise ValueError(
                "zeta=None: give the UAPs' size as a fraction of the mean image norm, e.g. "
                "zeta=0.02 (paper 000, targeted) or 0.04 (non-targeted)."
            )
        object.__setattr__(self, "norm", self.uap.norm)  # checks the UAP settings too
        for name, hint in (
            ("rounds", "paper 000: 5"),
            ("uaps_per_round", "paper 000: 10"),
            ("epochs", "paper 000: 5"),
            ("attack_images", "e.g. 500"),
            ("batch_size", "paper 000: 32"),
        ):
            check_int(name, getattr(self, name), 1, hint)
        if self.eval_images is not None:
            check_int("eval_images", self.eval_images, 1, "or None for every test image")
        if self.learning_rate is not None:
            check_positive(
                "learning_rate",
                self.learning_rate,
                "e.g. 1e-4, or None for the training schedule of chapter 1 over the extra epochs",
            )

    @property
    def uap(self) -> uap.UAPSettings:
        """The settings of the round's UAPs (each gets its own seed)."""
        return uap.UAPSettings(
            zeta=self.zeta,
            norm=self.norm,
            eps=self.eps,
            i_max=self.i_max,
            target=self.target,
            mode=self.mode,
            seed=self.seed,
        )

    def key(self, model_key: str, n_attack: int, n_eval: int, weights: str = "") -> str:
        """Cache folder name of a run: the model's key plus every setting that changes a round.

        ``n_attack``, ``n_eval``: the attack and evaluation images actually used; ``weights``:
        :func:`~helpers.cache.weights_digest` of the starting model, so a model trained again under
        the same key starts a new run instead of resuming another model's.
        """
        rate = "" if self.learning_rate is None else f"-lr{self.learning_rate:g}"
        digest = f"-w{weights}" if weights else ""
        return (
            f"{model_key}--retrain-{self.uap.kind}-p{self.norm}-zeta{self.zeta:g}-eps{self.eps:g}"
            f"-imax{self.i_max}-{self.mode}-uaps{self.uaps_per_round}-epochs{self.epochs}{rate}"
            f"-bs{self.batch_size}-imgs{n_attack}-eval{n_eval}-seed{self.seed}{digest}"
        )


# --------------------------------------------------------------------------- the retraining set


def perturbed_training_set(
    images: np.ndarray, perturbations: list, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Half the images clean, the other half (N // 2, at random) each plus one of ``perturbations``
    at random.

    Args:
        images: (N, H, W, C) in [0, 1].
        perturbations: UAPs, each (H, W, C).
    Returns:
        the new images (N, H, W, C), in the same order (clipped to [0, 1]), and per image the index
        of its UAP in ``perturbations`` (-1 = clean), shape (N,).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images has shape {images.shape}: give a non-empty batch (N, H, W, C).")
    if len(perturbations) == 0:
        raise ValueError("perturbations is empty: give at least one UAP of shape (H, W, C).")
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in perturbations])
    if stack.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"perturbations have shape {stack.shape[1:]} but the images {images.shape[1:]}: "
            "give UAPs of one image's shape (H, W, C)."
        )
    chosen = _choose(len(images), len(stack), seed)
    half = np.flatnonzero(chosen >= 0)
    out = images.copy()
    out[half] = np.clip(images[half] + stack[chosen[half]], 0.0, 1.0)
    return out, chosen


def _choose(n_images: int, n_uaps: int, seed: int) -> np.ndarray:
    """Per image the UAP it gets (-1 = clean): N // 2 images at random, each one UAP at random."""
    rng = np.random.default_rng(seed)
    chosen = np.full(n_images, -1)
    half = rng.permutation(n_images)[: n_images // 2]
    chosen[half] = rng.integers(n_uaps, size=len(half))
    return chosen


def retraining_set(train, perturbations: list, seed: int = 0):
    """``train`` (a :class:`~helpers.data.MedDataset`) with half its images perturbed; labels
    unchanged.

    The images are those of :func:`perturbed_training_set`, but the UAPs are added a batch at a
    time when the images are read (``MedDataset.added``): no second copy of the training set.
    Returns the new dataset and, per image, the index of its UAP (-1 = clean), shape (N,).
    """
    if len(train) == 0:
        raise ValueError("train is empty: give the training split of data.load_for_scale.")
    if len(perturbations) == 0:
        raise ValueError("perturbations is empty: give at least one UAP of shape (H, W, C).")
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in perturbations])
    if stack.shape[1:] != train.shape:
        raise ValueError(
            f"perturbations have shape {stack.shape[1:]} but the images {train.shape}: "
            "give UAPs of one image's shape (H, W, C)."
        )
    if train.added is not None:
        raise ValueError(
            "train already carries UAPs (a retraining set): start from the clean training split."
        )
    chosen = _choose(len(train), len(stack), seed)
    return replace(
        train, labels=train.labels.copy(), notes=list(train.notes), added=(stack, chosen)
    ), chosen


# --------------------------------------------------------------------------- checks


def _check(trained, splits, target) -> None:
    """Refuse a model, splits or target the run cannot use, naming the parameter and the fix."""
    if not (
        isinstance(getattr(trained, "model", None), keras.Model)
        and isinstance(getattr(trained, "key", None), str)
    ):
        raise ValueError(
            f"trained={type(trained).__name__}: pass the TrainedModel that training.get_or_train "
            "returns (its .model is retrained, its .key names the cache folder)."
        )
    missing = [part for part in ("train", "test") if part not in splits]
    if missing:
        raise ValueError(
            f"splits has no {' or '.join(repr(m) for m in missing)} split: pass the model's "
            "splits from data.load_for_scale (keys 'train', 'val', 'test')."
        )
    n_classes = int(trained.model.output_shape[-1])
    if target is not None and not target < n_classes:
        raise ValueError(
            f"target={target!r}: pass a class index in [0, {n_classes}), or None for non-targeted "
            "UAPs."
        )


# --------------------------------------------------------------------------- the rounds


def adversarial_retraining(
    trained,
    splits: dict,
    settings: RetrainSettings | None = None,
    *,
    cache=None,
    progress: bool = True,
    own_process: bool = False,
    **options,
) -> RetrainingRun:
    """Retrain ``trained`` (a :class:`~helpers.training.TrainedModel`) against UAPs, round by round.

    Args:
        splits: the model's train/val/test :class:`~helpers.data.MedDataset` splits; the model is
            fine-tuned on the whole training split.
        settings: a :class:`RetrainSettings`, or its fields as keywords (``zeta=0.04, rounds=5``).
        cache: the folder holding the runs (default: the course cache's ``retraining``).
        own_process: compute the rounds in a child Python process (:mod:`helpers.own_process`),
            which gives back the memory TensorFlow keeps after every fine-tuning; then load them.
    Returns:
        a :class:`RetrainingRun`; round 0 of its table is the model before retraining. Calling again
        with more ``rounds`` reloads the finished rounds and computes only the new ones.
    """
    settings = settings_from(RetrainSettings, settings, options, "adversarial_retraining")
    _check(trained, splits, settings.target)
    train, test = splits["train"], splits["test"]
    if settings.eval_images is not None:
        order = np.random.default_rng(settings.seed).permutation(len(test))
        test = test.subset(order[: settings.eval_images])
    attack, _ = draw_distinct(train, settings.attack_images, np.random.default_rng(settings.seed))
    key = settings.key(trained.key, len(attack), len(test), weights_digest(trained.model))
    folder = Path(cache or cache_dir("retraining")) / key
    folder.mkdir(parents=True, exist_ok=True)
    if own_process:
        before = [n for n in range(settings.rounds + 1) if _is_complete(folder / f"round{n}")]
        call_in_own_process(
            adversarial_retraining, trained, splits, settings, cache=cache, progress=progress
        )
        run = adversarial_retraining(trained, splits, settings, cache=cache, progress=False)
        return replace(run, resumed_rounds=before)  # the child computed the others
    rounds = _Rounds(trained.model, train, splits.get("val"), attack, test, settings)
    for number in tqdm(range(settings.rounds + 1), desc="retraining rounds", disable=not progress):
        rounds.load_or_run(folder / f"round{number}", number)
    return RetrainingRun(
        pd.DataFrame(rounds.rows),
        folder,
        rounds.final_model(),
        rounds.adv_preds,
        np.asarray(test.labels),
        rounds.resumed,
    )


class _Rounds:
    """The rounds of one run so far: loads finished rounds, computes the others in order."""

    def __init__(self, model, train, val, attack, test, settings: RetrainSettings):
        self.model, self.saved_model = model, None
        self.train, self.val, self.attack, self.test = train, val, attack, test
        self.settings = settings
        self.rows, self.adv_preds, self.resumed = [], [], []

    def load_or_run(self, done: Path, number: int) -> None:
        if _is_complete(done):
            row, adv_pred = _load_round(done)
            # the model is loaded only if a later round needs it
            self.saved_model = done / "model" if number > 0 else None
            self.resumed.append(number)
        else:
            row, adv_pred = self.run(done, number)
        self.rows.append(row)
        self.adv_preds.append(adv_pred)

    def run(self, done: Path, number: int) -> tuple[dict, np.ndarray]:
        """Round ``number``: retrain (from round 1 on), then a fresh UAP and its rates; saved."""
        if self.saved_model is not None:
            self.model, self.saved_model = _load_model(self.saved_model), None
        start, seed = time.perf_counter(), self.settings.seed + 1000 * number
        if number > 0:
            self.model = retrain_once(
                self.model, self.train, self.attack, self.val, self.settings, seed
            )
        fresh = uap.universal_perturbation(
            self.model, self.attack, replace(self.settings.uap, seed=seed + 999), progress=False
        )
        rate, scores = _evaluate_round(self.model, self.test, fresh, self.settings.target)
        seconds = time.perf_counter() - start
        row = _round_row(number, rate, scores, seconds, self.train.info.n_classes)
        if not _save_round(done, self.model, row, fresh, scores["adv_pred"], number > 0):
            return _load_round(done)  # another process finished this round first: use its numbers
        return row, scores["adv_pred"]

    def final_model(self) -> keras.Model:
        return self.model if self.saved_model is None else _load_model(self.saved_model)


def retrain_once(model, train, attack, val, settings: RetrainSettings, seed: int) -> keras.Model:
    """Steps (i)-(iii) of a round: UAPs against ``model`` from ``attack``, the half-perturbed
    training set, and a copy of ``model`` fine-tuned on it (``model`` itself is left as it is)."""
    perturbations = [
        uap.universal_perturbation(
            model, attack, replace(settings.uap, seed=seed + k), progress=False
        ).perturbation
        for k in range(settings.uaps_per_round)
    ]
    mixed, _ = retraining_set(train, perturbations, seed)
    set_seed(seed)  # the copy's dropout seeds: the same whether resumed or not
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.name = model.name  # keeps the architecture's optimiser choice
    fit(
        copy,
        mixed,
        val,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=seed,
        learning_rate=settings.learning_rate,
        description="fine-tuning on UAP images",
    )
    return copy


def _evaluate_round(model, test, fresh, target):
    """Step (v): the fresh UAP's R_s (targeted) or R_f on the evaluation images, with accuracies."""
    scores = uap.evaluate(model, test.images, fresh.perturbation, target, labels=test.labels)
    return uap.headline_rate(scores, target), scores


def _round_row(number, rate, scores, seconds, n_classes) -> dict:
    counts = np.bincount(scores["adv_pred"], minlength=n_classes)
    return {
        "round": number,
        "rate": rate,
        "clean test accuracy": scores["clean_accuracy"],
        "adversarial test accuracy": scores["adversarial_accuracy"],
        "dominant class": int(counts.argmax()),
        "dominant share": float(counts.max() / counts.sum()),
        "baseline": scores.get("success_baseline", np.nan),
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- the cache


def _save_round(
    folder: Path, model, row: dict, fresh: uap.UAPResult, adv_pred: np.ndarray, with_model: bool
) -> bool:
    """Write one finished round into a staging folder, then rename it to ``folder``
    (all or nothing).

    Returns False, keeping the saved round, when another process finished it first. A ``folder``
    left incomplete by an older layout is moved aside, never deleted.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    if with_model:
        save_trained(model, staging / "model", {"key": f"{folder.parent.name}/{folder.name}"}, {})
    np.savez(staging / "fresh_uap.npz", perturbation=fresh.perturbation, adv_pred=adv_pred)
    (staging / "round.json").write_text(
        json.dumps({k: _plain(v) for k, v in row.items()}, indent=2)
    )
    if folder.exists() and not _is_complete(folder):
        folder.rename(
            folder.with_name(
                f"{folder.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}-{staging.name}"
            )
        )
    return publish_folder(staging, folder, _is_complete)


def _is_complete(folder: Path) -> bool:
    return (folder / "round.json").is_file()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _load_round(folder: Path) -> tuple[dict, np.ndarray]:
    """The numbers of a finished round and its evaluation-image predictions under the fresh UAP."""
    row = json.loads((folder / "round.json").read_text())
    with np.load(folder / "fresh_uap.npz") as saved:
        return row, saved["adv_pred"]


def _load_model(folder: Path) -> keras.Model:
    return keras.models.load_model(folder / "model.keras", compile=False)
