"""Adversarial retraining against UAPs (paper 000, Methods "Adversarial retraining", Fig. S1).

One round: (i) make ``uaps_per_round`` UAPs against the current model from the clean training
images; (ii) build a training set from half the training images clean and the other half each
perturbed by one of those UAPs, chosen at random; (iii) fine-tune the model ``epochs`` more
epochs on it; (iv) make a fresh UAP against the fine-tuned model; (v) record that UAP's R_f
(or R_s) on the test images and the clean test accuracy. Paper: 10 UAPs, 5 epochs, 5 rounds.

Every finished round is saved (model, fresh UAP, numbers) in its own folder under the course
cache, written to a staging folder and renamed into place only when complete: an interrupted
run continues after its last finished round, and nothing earlier is overwritten.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import uap
from .config import cache_dir, publish_folder
from .data import draw_distinct
from .models import weights_digest
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


def run_key(
    model_key: str,
    *,
    zeta: float,
    norm,
    target,
    eps: float,
    uaps_per_round: int,
    epochs: int,
    attack_images: int,
    i_max: int,
    eval_images: int,
    batch_size: int,
    seed: int,
    learning_rate: float | None = None,
    weights: str = "",
    mode: str = "faithful",
) -> str:
    """Cache folder name of a run: the model's key plus every setting that changes a round.

    ``weights`` is :func:`~helpers.models.weights_digest` of the starting model, so a model trained
    again under the same key starts a new run instead of resuming another model's.
    """
    kind = "nt" if target is None else f"t{target}"
    rate = "" if learning_rate is None else f"-lr{learning_rate:g}"
    digest = f"-w{weights}" if weights else ""
    return (
        f"{model_key}--retrain-{kind}-p{uap.norm_name(norm)}-zeta{zeta:g}-eps{eps:g}-imax{i_max}-{mode}"
        f"-uaps{uaps_per_round}-epochs{epochs}{rate}-bs{batch_size}-imgs{attack_images}-eval{eval_images}"
        f"-seed{seed}{digest}"
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


def _check_count(name: str, value, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"{name}={value!r}: must be a positive integer; pass {name} >= 1 ({hint})."
        )


def _check(
    trained,
    splits,
    *,
    zeta,
    norm,
    target,
    eps,
    rounds,
    uaps_per_round,
    epochs,
    attack_images,
    i_max,
    eval_images,
    batch_size,
    learning_rate,
) -> None:
    """Refuse settings the procedure cannot run with, naming the parameter and the fix."""
    if not (
        isinstance(getattr(trained, "model", None), keras.Model)
        and isinstance(getattr(trained, "key", None), str)
    ):
        raise ValueError(
            f"trained={type(trained).__name__}: pass the TrainedModel that training.get_or_train "
            "returns (its .model is retrained, its .key names the cache folder)."
        )
    if learning_rate is not None and not (
        isinstance(learning_rate, (int, float, np.floating))
        and math.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise ValueError(
            f"learning_rate={learning_rate!r}: pass a positive rate, e.g. 1e-4, or None for the "
            "training schedule of chapter 1 over the extra epochs."
        )
    for name, value, hint in (
        ("rounds", rounds, "paper 000: 5"),
        ("uaps_per_round", uaps_per_round, "paper 000: 10"),
        ("epochs", epochs, "paper 000: 5"),
        ("attack_images", attack_images, "e.g. 500"),
        ("i_max", i_max, "paper 000: 15"),
        ("batch_size", batch_size, "paper 000: 32"),
    ):
        _check_count(name, value, hint)
    if eval_images is not None:
        _check_count("eval_images", eval_images, "or None for every test image")
    if not isinstance(zeta, (int, float, np.floating)) or not math.isfinite(zeta) or zeta <= 0:
        raise ValueError(
            f"zeta={zeta!r}: the UAP size is a positive fraction of the mean image norm; "
            "pass e.g. zeta=0.02 (paper 000, targeted) or 0.04 (non-targeted)."
        )
    if not isinstance(eps, (int, float, np.floating)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(
            f"eps={eps!r}: the FGSM step strength must be positive; pass e.g. eps=0.01."
        )
    uap.parse_norm(norm)
    missing = [part for part in ("train", "test") if part not in splits]
    if missing:
        raise ValueError(
            f"splits has no {' or '.join(repr(m) for m in missing)} split: pass the model's "
            "splits from data.load_for_scale (keys 'train', 'val', 'test')."
        )
    n_classes = int(trained.model.output_shape[-1])
    if target is not None and (
        isinstance(target, bool)
        or not isinstance(target, (int, np.integer))
        or not 0 <= target < n_classes
    ):
        raise ValueError(
            f"target={target!r}: pass a class index in [0, {n_classes}), or None for non-targeted "
            "UAPs."
        )


# --------------------------------------------------------------------------- the rounds


def adversarial_retraining(
    trained,
    splits: dict,
    *,
    zeta: float,
    norm=2,
    target: int | None = None,
    eps: float = 0.01,
    rounds: int = 5,
    uaps_per_round: int = 10,
    epochs: int = 5,
    attack_images: int = 500,
    i_max: int = 5,
    eval_images: int | None = None,
    batch_size: int = 32,
    learning_rate: float | None = None,
    mode: str = "faithful",
    seed: int = 0,
    cache=None,
    progress: bool = True,
    own_process: bool = False,
) -> RetrainingRun:
    """Retrain ``trained`` (a :class:`~helpers.training.TrainedModel`) against UAPs, round by round.

    Args:
        splits: the model's train/val/test :class:`~helpers.data.MedDataset` splits; the model is
            fine-tuned on the whole training split.
        zeta, norm, eps, i_max: the UAPs' size (fraction of the mean image norm), norm, FGSM step,
            passes.
        mode: how the UAPs are computed: "faithful" (paper 000's algorithm) or "batched" (the faster
            variant).
        target: a class for targeted UAPs (R_s is recorded), None for non-targeted (R_f).
        rounds, uaps_per_round, epochs: paper 000: 5, 10, 5.
        attack_images: training images each UAP is made from (fewer if the split is smaller), drawn
            from the split as stored: no image twice, even where training oversamples.
        eval_images: test images the rates are measured on (a seeded random subset; None: all).
        learning_rate: the base rate of the extra epochs. Paper 000 does not state it; None runs
            chapter 1's schedule over them (base 1e-3, stepped down at 80 % and 90 % of the epochs).
        cache: the folder holding the runs (default: the course cache's ``retraining``).
        own_process: compute the rounds in a child Python process (:mod:`helpers.own_process`),
            which gives back the memory TensorFlow keeps after every fine-tuning; then load them.
    Returns:
        a :class:`RetrainingRun`; round 0 of its table is the model before retraining. Calling again
        with more ``rounds`` reloads the finished rounds and computes only the new ones.
    """
    locals_at_call = dict(locals())  # the arguments, for a call in a process of its own
    _check(
        trained,
        splits,
        zeta=zeta,
        norm=norm,
        target=target,
        eps=eps,
        rounds=rounds,
        uaps_per_round=uaps_per_round,
        epochs=epochs,
        attack_images=attack_images,
        i_max=i_max,
        eval_images=eval_images,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    train, test = splits["train"], splits["test"]
    if eval_images is not None:
        test = test.subset(np.random.default_rng(seed).permutation(len(test))[:eval_images])
    attack, _ = draw_distinct(train, attack_images, np.random.default_rng(seed))
    key = run_key(
        trained.key,
        zeta=zeta,
        norm=norm,
        target=target,
        eps=eps,
        uaps_per_round=uaps_per_round,
        epochs=epochs,
        attack_images=len(attack),
        i_max=i_max,
        eval_images=len(test),
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        weights=weights_digest(trained.model),
        mode=mode,
    )
    folder = Path(cache or cache_dir("retraining")) / key
    folder.mkdir(parents=True, exist_ok=True)
    if own_process:
        arguments = dict(locals_at_call, own_process=False)
        before = [n for n in range(rounds + 1) if _is_complete(folder / f"round{n}")]
        call_in_own_process(adversarial_retraining, **arguments)
        run = adversarial_retraining(**dict(arguments, progress=False))
        return replace(run, resumed_rounds=before)  # the child computed the others
    settings = dict(
        zeta=zeta, norm=norm, eps=eps, i_max=i_max, target=target, mode=mode, progress=False
    )
    model, saved_model, rows, resumed, adv_preds = trained.model, None, [], [], []
    from tqdm.auto import tqdm

    for number in tqdm(range(rounds + 1), desc="retraining rounds", disable=not progress):
        done = folder / f"round{number}"
        if (done / "round.json").is_file():
            row, adv_pred = _load_round(done)
            # loaded only if a later round needs it
            saved_model = done / "model" if number > 0 else None
            rows.append(row)
            adv_preds.append(adv_pred)
            resumed.append(number)
            continue
        if saved_model is not None:
            model, saved_model = _load_model(saved_model), None
        start = time.perf_counter()
        if number > 0:
            model = _retrain_once(
                model,
                train,
                attack,
                splits.get("val"),
                settings,
                uaps_per_round,
                epochs,
                batch_size,
                learning_rate,
                seed + 1000 * number,
            )
        fresh = uap.universal_perturbation(
            model, attack, seed=seed + 1000 * number + 999, **settings
        )
        rate, scores = _evaluate_round(model, test, fresh, target)
        row = _round_row(number, rate, scores, time.perf_counter() - start, train.info.n_classes)
        adv_pred = scores["adv_pred"]
        if not _save_round(done, model, row, fresh, adv_pred, with_model=number > 0):
            # another process finished this round first: use its numbers
            row, adv_pred = _load_round(done)
        rows.append(row)
        adv_preds.append(adv_pred)
    if saved_model is not None:
        model = _load_model(saved_model)
    return RetrainingRun(
        pd.DataFrame(rows), folder, model, adv_preds, np.asarray(test.labels), resumed
    )


def _retrain_once(
    model, train, attack, val, settings, uaps_per_round, epochs, batch_size, learning_rate, seed
):
    """Steps (i)-(iii): UAPs against ``model``, the half-perturbed training set, fine-tuning a
    copy."""
    perturbations = [
        uap.universal_perturbation(model, attack, seed=seed + k, **settings).perturbation
        for k in range(uaps_per_round)
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
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
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
