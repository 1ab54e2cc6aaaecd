"""Paper 004's tables of a pixel attack's results (pure NumPy/pandas; Tsai et al. 2023).

Success rate per class (Tables 6, 15), class transformations (Table 7) and their ratio T_adv
(equations 6-7, Table 8), disease/normal conversions (Table 9), AvgCL (equation 8), the resulting
label sets of a multi-label attack (Table 16) and the findings they contain (Figure 10);
:func:`report` gives all of them for one :class:`~helpers.pixel.PixelAttackResult`. Introduced in
chapter 5; the attack itself is :mod:`helpers.pixel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

NORMAL = "Normal"  # name of the empty label set (no finding)

__all__ = [
    "success_rate_table",
    "transformation_table",
    "transform_ratio",
    "conversion_table",
    "avg_cl",
    "label_set_names",
    "label_set_table",
    "finding_counts",
    "findings_per_image",
    "report",
]


# --------------------------------------------------------------------------- the paper's tables


def label_set_names(sets, names: Sequence[str]) -> list[str]:
    """Names of 0/1 label sets (N, L): the present findings joined by ", ", or "Normal" if none."""
    sets = np.asarray(sets).astype(bool)
    if sets.ndim != 2 or sets.shape[1] != len(names):
        raise ValueError(
            f"sets has shape {sets.shape}; expected (N, {len(names)}) for {len(names)} names."
        )
    return [", ".join(np.asarray(names)[row]) if row.any() else NORMAL for row in sets]


def _names_of(labels, names: Sequence[str]) -> list[str]:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return label_set_names(labels, names)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= len(names))):
        raise ValueError(
            f"labels must be (N,) classes in [0, {len(names)}) or (N, L) label sets; "
            f"got shape {labels.shape}."
        )
    return [names[c] for c in labels]


def _check_success(success, n: int) -> np.ndarray:
    success = np.asarray(success, dtype=bool)
    if success.shape != (n,):
        raise ValueError(f"success has shape {success.shape}; expected ({n},), one flag per image.")
    return success


def success_rate_table(original, success, names: Sequence[str]) -> pd.DataFrame:
    """Success rate per original class or label set (Tables 6, 15).

    original: (N,) classes or (N, L) label sets; success: (N,) bool; names: class / finding names.
    Columns: images, successes, success rate (fraction). Rows: classes in index order (those
    attacked), label sets by decreasing count.
    """
    groups = pd.Series(_names_of(original, names), name="original")
    success = _check_success(success, len(groups))
    table = pd.DataFrame(
        {
            "images": groups.value_counts(sort=False),
            "successes": pd.Series(success).groupby(groups).sum(),
        }
    )
    order = (
        [n for n in names if n in table.index]
        if np.ndim(original) == 1
        else table.sort_values("images", ascending=False, kind="stable").index
    )
    table = table.loc[order].astype(int)
    table["success rate"] = table["successes"] / table["images"]
    table.index.name = "original"
    return table


def transformation_table(original, final, success, names: Sequence[str]) -> pd.DataFrame:
    """Class transformations (Table 7): successful images, rows original class x columns resulting
    class.

    original, final: (N,) classes; success: (N,) bool. All K classes on both axes; the diagonal
    (no change) is 0.
    """
    original, final = np.asarray(original), np.asarray(final)
    if original.ndim != 1 or final.shape != original.shape:
        raise ValueError(
            f"original {original.shape} and final {final.shape} must be (N,) classes "
            f"(for label sets use label_set_table)."
        )
    _names_of(original, names), _names_of(final, names)
    success = _check_success(success, len(original)) & (original != final)
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(counts, (original[success], final[success]), 1)
    return pd.DataFrame(
        counts, index=pd.Index(names, name="original"), columns=pd.Index(names, name="resulting")
    )


def transform_ratio(table) -> pd.Series:
    """T_adv of every resulting class (equations 6-7, Table 8) from a K x K transformation table.

    r_ori,adv = n_ori,adv / sum_adv n_ori,adv (0 for a class with no successful image) and
    T_adv = sum_ori r_ori,adv / (K - F), F = classes none of whose images was transformed.
    The diagonal is ignored (ori = adv counts as a failure).
    """
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(np.asarray(table))
    counts = np.array(frame.to_numpy(dtype=np.float64))  # a writable copy
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or np.any(counts < 0):
        raise ValueError(
            f"table has shape {counts.shape}; expected a square K x K table of counts >= 0."
        )
    np.fill_diagonal(counts, 0.0)
    row_sums = counts.sum(axis=1, keepdims=True)
    ratios = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    failed = int(np.sum(row_sums == 0))
    k = len(counts)
    values = ratios.sum(axis=0) / (k - failed) if k > failed else np.full(k, np.nan)
    return pd.Series(values, index=frame.columns, name="transform ratio")


def conversion_table(original, final, success, normal_classes: Sequence[int] = ()) -> pd.DataFrame:
    """Disease <-> normal conversions among successful images (Table 9).

    original, final: (N,) classes with ``normal_classes`` the normal ones, or (N, L) label sets
    where normal is the empty set. Rows "Disease to Normal", "Normal to Disease"; columns Count and
    Percentage (of the two counts together, in %).
    """
    original, final = np.asarray(original), np.asarray(final)
    if original.shape != final.shape or original.ndim not in (1, 2):
        raise ValueError(
            f"original {original.shape} and final {final.shape} must both be (N,) classes "
            f"or (N, L) label sets."
        )
    success = _check_success(success, len(original))
    if original.ndim == 2:
        normal_before, normal_after = ~original.any(axis=1), ~final.any(axis=1)
    else:
        normal_before, normal_after = (
            np.isin(original, normal_classes),
            np.isin(final, normal_classes),
        )
    counts = [
        int(np.sum(success & ~normal_before & normal_after)),
        int(np.sum(success & normal_before & ~normal_after)),
    ]
    total = sum(counts)
    return pd.DataFrame(
        {"Count": counts, "Percentage": [100.0 * c / total if total else np.nan for c in counts]},
        index=pd.Index(["Disease to Normal", "Normal to Disease"], name="Class conversion"),
    )


def avg_cl(confidence, success) -> float:
    """AvgCL (equation 8): mean confidence of the successful adversarial images (NaN if none).

    Pass ``result.final_confidence``: the confidence of the resulting (targeted: the target) class.
    For a multi-label result it is the cosine similarity (equation 3) of the resulting set and the
    outputs, in [-1, 1], not a class confidence.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    success = _check_success(success, len(confidence))
    return float(confidence[success].mean()) if success.any() else float("nan")


def label_set_table(original, final, success, names: Sequence[str]) -> pd.DataFrame:
    """Resulting label sets of successful images (Table 16): rows resulting set x columns original
    set.

    original, final: (N, L) 0/1 sets; success: (N,) bool; names: the L finding names. Rows and
    columns hold the sets that occur, in alphabetical order, "Normal" for the empty set.
    """
    original, final = np.asarray(original), np.asarray(final)
    if original.ndim != 2 or final.shape != original.shape:
        raise ValueError(
            f"original {original.shape} and final {final.shape} must be (N, L) label sets."
        )
    success = _check_success(success, len(original))
    frame = pd.DataFrame(
        {"resulting": label_set_names(final, names), "original": label_set_names(original, names)}
    )[success]
    table = pd.crosstab(frame["resulting"], frame["original"])
    columns = sorted(set(label_set_names(original, names)))
    return table.reindex(columns=columns, fill_value=0).sort_index()


def finding_counts(final, success, names: Sequence[str]) -> pd.Series:
    """How many successful adversarial images hold each finding (Figure 10), one entry per name."""
    final = np.asarray(final).astype(bool)
    if final.ndim != 2 or final.shape[1] != len(names):
        raise ValueError(f"final has shape {final.shape}; expected (N, {len(names)}) label sets.")
    success = _check_success(success, len(final))
    return pd.Series(
        final[success].sum(axis=0), index=pd.Index(names, name="finding"), name="images"
    )


def findings_per_image(final, success) -> pd.Series:
    """Successful adversarial images by number of findings (0 = Normal, 1, ..., L)."""
    final = np.asarray(final).astype(bool)
    if final.ndim != 2:
        raise ValueError(f"final has shape {final.shape}; expected (N, L) label sets.")
    success = _check_success(success, len(final))
    counts = np.bincount(final[success].sum(axis=1), minlength=final.shape[1] + 1)
    return pd.Series(
        counts, index=pd.Index(range(final.shape[1] + 1), name="findings"), name="images"
    )


def report(result, info, names: Sequence[str] | None = None) -> dict[str, object]:
    """The paper's tables for one attack on a :class:`~helpers.data.DatasetInfo` dataset.

    Keys: "success rate", "conversion", "AvgCL" (multi-label: mean cosine similarity, see
    :func:`avg_cl`), and "transformation" and "transform ratio" (single-label) or "label sets",
    "findings" and "findings per image" (multi-label).
    ``names`` default to ``info.short_names``.
    """
    names = list(names or info.short_names)
    if result.multilabel != info.multilabel:
        raise ValueError(
            f"report: the result is {'multi' if result.multilabel else 'single'}-label but "
            f"the dataset {info.key!r} is {info.task}."
        )
    args = (result.original, result.final, result.success)
    tables: dict[str, object] = {
        "success rate": success_rate_table(result.original, result.success, names)
    }
    if result.multilabel:
        tables["label sets"] = label_set_table(*args, names)
        tables["findings"] = finding_counts(result.final, result.success, names)
        tables["findings per image"] = findings_per_image(result.final, result.success)
    else:
        tables["transformation"] = transformation_table(*args, names)
        tables["transform ratio"] = transform_ratio(tables["transformation"])
    tables["conversion"] = conversion_table(*args, info.normal_classes)
    tables["AvgCL"] = avg_cl(result.final_confidence, result.success)
    return tables
