"""Metrics for clean and adversarial evaluation (numpy + pandas, no TensorFlow).

Conventions
-----------
* Single-label predictions and labels are integer class indices of shape ``(N,)``.
  Every function also accepts ``(N, K)`` probability or one-hot arrays (reduced with
  ``argmax``) and ``(N, 1)`` label columns as stored by MedMNIST.
* Rates and accuracies are fractions in ``[0, 1]`` (multiply by 100 for percent).
* The adversarial rates follow Hirano et al. (2021):

  - fooling rate ``R_f``: share of images whose *predicted* label changes under attack;
  - targeted success rate ``R_s``: share of adversarial predictions equal to the target
    class, with baseline ``R_s0`` (the same share among clean predictions).

Bad inputs raise :class:`ValueError` with a message naming the parameter.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "accuracy",
    "confusion_matrix",
    "fooling_rate",
    "targeted_success_rate",
    "targeted_success_baseline",
    "dominant_classes",
    "per_class_table",
    "roc_auc",
    "multilabel_scores",
]


# --------------------------------------------------------------------------- validation


def _as_array(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:  # ragged lists and the like
        raise ValueError(f"{name} must be an array-like of numbers ({error}).") from None
    if array.size == 0:
        raise ValueError(f"{name} is empty; expected at least one sample.")
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}.")
    return array


def _as_labels(values, name: str, n_classes: int | None = None) -> np.ndarray:
    """Integer labels of shape (N,) from labels (N,) / (N, 1) or scores (N, K>=2)."""
    array = _as_array(values, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite scores.")
        if n_classes is not None and array.shape[1] != n_classes:
            raise ValueError(
                f"{name} has {array.shape[1]} score columns; expected n_classes={n_classes}."
            )
        return np.argmax(array, axis=1)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must have shape (N,) labels or (N, K) scores; got shape {array.shape}."
        )
    if not np.all(np.isfinite(array)) or not np.all(np.mod(array, 1) == 0):
        raise ValueError(
            f"{name} must hold integer class labels; got non-integer values "
            f"(pass (N, K) probabilities as a 2-D array)."
        )
    labels = array.astype(np.int64)
    _check_label_range(labels, name, n_classes)
    return labels


def _check_label_range(labels: np.ndarray, name: str, n_classes: int | None) -> None:
    if labels.min() < 0:
        raise ValueError(
            f"{name} contains negative labels (min {labels.min()}); expected labels >= 0."
        )
    if n_classes is not None and labels.max() >= n_classes:
        raise ValueError(
            f"{name} contains label {labels.max()}; expected labels in [0, {n_classes}) "
            f"for n_classes={n_classes}."
        )


def _check_n_classes(n_classes, name: str = "n_classes") -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_classes!r}.")
    return int(n_classes)


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} has {len(a)} samples but {name_b} has {len(b)}; expected the same number."
        )


def _check_class_names(class_names, n_classes: int) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} entries; expected n_classes={n_classes}.")
    return names


def _score_columns(*arrays) -> int | None:
    """K of the first (N, K>=2) score array among ``arrays``, else None."""
    for values in arrays:
        shape = np.shape(values)
        if len(shape) == 2 and shape[1] >= 2:
            return int(shape[1])
    return None


# --------------------------------------------------------------------------- single-label


def accuracy(y_true, y_pred) -> float:
    """Share of correct predictions, a float in [0, 1].

    ``y_true`` and ``y_pred``: labels ``(N,)`` or scores ``(N, K)`` (argmax is taken).
    """
    truth = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    _check_same_length(truth, pred, "y_true", "y_pred")
    return float(np.mean(truth == pred))


def confusion_matrix(y_true, y_pred, n_classes: int, normalize: str | None = "true") -> np.ndarray:
    """Confusion matrix, float array ``(n_classes, n_classes)``.

    Rows are true classes, columns predicted classes. ``normalize="true"`` divides every
    row by the number of images of that true class (Hirano et al. 2021), so rows sum to 1;
    a class without images keeps a row of zeros. ``normalize=None`` returns counts.
    """
    n_classes = _check_n_classes(n_classes)
    if normalize not in ("true", None):
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}.")
    truth = _as_labels(y_true, "y_true", n_classes)
    pred = _as_labels(y_pred, "y_pred", n_classes)
    _check_same_length(truth, pred, "y_true", "y_pred")
    counts = np.bincount(truth * n_classes + pred, minlength=n_classes**2)
    matrix = counts.reshape(n_classes, n_classes).astype(float)
    if normalize is None:
        return matrix
    row_totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)


def fooling_rate(clean_pred, adv_pred) -> float:
    """Fooling rate ``R_f`` in [0, 1]: share of images whose predicted label changes.

    Compares the adversarial prediction with the *clean prediction*, not with the true
    label (Hirano et al. 2021). Inputs: labels ``(N,)`` or scores ``(N, K)``.
    """
    clean = _as_labels(clean_pred, "clean_pred")
    adv = _as_labels(adv_pred, "adv_pred")
    _check_same_length(clean, adv, "clean_pred", "adv_pred")
    return float(np.mean(clean != adv))


def _as_targets(target, n_images: int, n_classes: int | None) -> np.ndarray:
    targets = _as_array(target, "target")
    if targets.ndim > 1 or (targets.ndim == 1 and len(targets) != n_images):
        raise ValueError(
            f"target must be one class index or an array of shape ({n_images},); "
            f"got shape {targets.shape}."
        )
    if not np.all(np.isfinite(targets)) or not np.all(np.mod(targets, 1) == 0):
        raise ValueError(f"target must be an integer class index, got {target!r}.")
    targets = targets.astype(np.int64)
    _check_label_range(np.atleast_1d(targets), "target", n_classes)
    return targets


def targeted_success_rate(adv_pred, target, n_classes: int | None = None) -> float:
    """Targeted success rate ``R_s`` in [0, 1]: share of predictions equal to ``target``.

    ``adv_pred``: labels ``(N,)`` or scores ``(N, K)``. ``target``: one class index, or
    one per image ``(N,)``. The target's range is checked against ``n_classes`` (or K of
    score inputs). Applied to clean predictions this gives the baseline ``R_s0``.
    """
    n_classes = _check_n_classes(n_classes) if n_classes is not None else _score_columns(adv_pred)
    pred = _as_labels(adv_pred, "adv_pred", n_classes)
    targets = _as_targets(target, len(pred), n_classes)
    return float(np.mean(pred == targets))


def targeted_success_baseline(clean_pred, target, n_classes: int | None = None) -> float:
    """Baseline ``R_s0`` in [0, 1]: share of *clean* predictions already equal to ``target``.

    The same computation as :func:`targeted_success_rate`, applied to clean predictions;
    an attack is only worth its name when ``R_s`` clearly exceeds ``R_s0``.
    """
    return targeted_success_rate(clean_pred, target, n_classes)


def dominant_classes(
    pred, n_classes: int, class_names: Sequence[str] | None = None, top: int = 2
) -> list[tuple[str | int, float]]:
    """The ``top`` classes with the largest share of predictions, as ``[(name, share), ...]``.

    Shares are fractions in [0, 1], sorted from largest (ties: lower class index first);
    classes never predicted are left out. ``name`` is ``class_names[i]`` if given, else
    the class index ``i``. Useful to show that a UAP pushes most images into one class.
    """
    n_classes = _check_n_classes(n_classes)
    top = _check_n_classes(top, "top")
    labels = _as_labels(pred, "pred", n_classes)
    names = (
        _check_class_names(class_names, n_classes)
        if class_names is not None
        else list(range(n_classes))
    )
    shares = np.bincount(labels, minlength=n_classes) / len(labels)
    order = np.argsort(-shares, kind="stable")[:top]
    return [(names[i], float(shares[i])) for i in order if shares[i] > 0]


def per_class_table(
    y_true,
    clean_pred,
    adv_pred=None,
    class_names: Sequence[str] | None = None,
    n_classes: int | None = None,
) -> pd.DataFrame:
    """One row per true class: ``n``, ``clean_accuracy`` and, with ``adv_pred``,
    ``adversarial_accuracy`` and ``fooling_rate`` among that class's images.

    The number of classes comes from ``n_classes``, else ``class_names``, else score
    columns, else the largest label + 1. Accuracies of a class without images are NaN.
    The index holds the class names (index name ``"true class"``).
    """
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    if n_classes is None:
        n_classes = _score_columns(y_true, clean_pred, adv_pred)
    n_classes = _check_n_classes(n_classes) if n_classes is not None else None
    truth = _as_labels(y_true, "y_true", n_classes)
    clean = _as_labels(clean_pred, "clean_pred", n_classes)
    _check_same_length(truth, clean, "y_true", "clean_pred")
    if n_classes is None:
        n_classes = int(max(truth.max(), clean.max())) + 1
    adv = None
    if adv_pred is not None:
        adv = _as_labels(adv_pred, "adv_pred", n_classes)
        _check_same_length(truth, adv, "y_true", "adv_pred")
        n_classes = max(n_classes, int(adv.max()) + 1)
    names = (
        _check_class_names(class_names, n_classes)
        if class_names is not None
        else [str(i) for i in range(n_classes)]
    )
    rows = [_class_row(truth == c, c, truth, clean, adv) for c in range(n_classes)]
    table = pd.DataFrame(rows, index=pd.Index(names, name="true class"))
    return table


def _class_row(mask: np.ndarray, c: int, truth, clean, adv) -> dict[str, float]:
    n = int(mask.sum())
    row = {"n": n, "clean_accuracy": float(np.mean(clean[mask] == c)) if n else np.nan}
    if adv is not None:
        row["adversarial_accuracy"] = float(np.mean(adv[mask] == c)) if n else np.nan
        row["fooling_rate"] = float(np.mean(adv[mask] != clean[mask])) if n else np.nan
    return row


# --------------------------------------------------------------------------- multi-label


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores``; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.ravel()]


def roc_auc(y_true, scores) -> float:
    """ROC AUC of one binary finding via the Mann-Whitney rank formula (ties averaged).

    ``y_true``: 0/1 array ``(N,)``; ``scores``: array ``(N,)``, higher = more positive.
    AUC = (sum of positive ranks - P(P+1)/2) / (P * Q) for P positives and Q negatives.
    Returns NaN when only one class is present.
    """
    truth = _as_binary(y_true, "y_true")
    values = _as_array(scores, "scores").astype(float)
    if truth.ndim != 1 or values.ndim != 1:
        raise ValueError(
            f"y_true and scores must be 1-D (N,), got shapes {truth.shape} and {values.shape}."
        )
    _check_same_length(truth, values, "y_true", "scores")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contains NaN or infinite values.")
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    positive_rank_sum = _average_ranks(values)[truth == 1].sum()
    return float((positive_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _as_binary(values, name: str) -> np.ndarray:
    array = _as_array(values, name)
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must hold 0/1 labels only.")
    return array.astype(np.int64)


def multilabel_scores(y_true, probs, threshold: float = 0.5) -> dict[str, float | np.ndarray]:
    """Scores of a multi-label (e.g. 14-finding chest X-ray) sigmoid classifier.

    ``y_true``: 0/1 array ``(N, L)``; ``probs``: sigmoid outputs ``(N, L)`` in [0, 1].
    A finding is predicted present when ``prob > threshold`` (as Keras ``binary_accuracy``).

    Returns a dict with
    ``subset_accuracy`` (share of images whose whole label set is right),
    ``label_accuracy`` (share of the N*L image-finding entries that are right),
    ``mean_auc`` (mean ROC AUC over findings with both positives and negatives; NaN if none),
    ``auc_per_label`` (float array ``(L,)``, NaN where undefined) and
    ``n_auc_labels`` (how many findings entered ``mean_auc``).
    """
    truth = _as_binary(y_true, "y_true")
    scores = _as_array(probs, "probs").astype(float)
    if truth.ndim != 2:
        raise ValueError(f"y_true must be 2-D (N, L) multi-label targets, got shape {truth.shape}.")
    if scores.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, L) sigmoid outputs, got shape {scores.shape}.")
    if truth.shape != scores.shape:
        raise ValueError(
            f"probs has shape {scores.shape} but y_true has {truth.shape}; expected equal shapes."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("probs contains NaN or infinite values.")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}.")
    predicted = (scores > threshold).astype(np.int64)
    auc_per_label = np.array([roc_auc(truth[:, j], scores[:, j]) for j in range(truth.shape[1])])
    defined = ~np.isnan(auc_per_label)
    return {
        "subset_accuracy": float(np.mean(np.all(predicted == truth, axis=1))),
        "label_accuracy": float(np.mean(predicted == truth)),
        "mean_auc": float(auc_per_label[defined].mean()) if defined.any() else float("nan"),
        "auc_per_label": auc_per_label,
        "n_auc_labels": int(defined.sum()),
    }
