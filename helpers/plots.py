"""Figures for the course: confusion matrices, training curves, image grids, class balance.

Every function returns the :class:`matplotlib.figure.Figure` it drew on. Single-panel
functions take an optional ``ax``; multi-panel ones an optional ``axes`` sequence.
Every plot axes gets a title and labelled x/y axes (image grids: per-image titles and a
figure suptitle instead). Bad shapes raise :class:`ValueError` naming the parameter.

Importing this module also gives every figure a notebook shows an alt text for screen readers
(:func:`figure_alt_text`: its title, and each panel's title and axes), stored with the output; the
book pipeline hands it to the rendered page.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "confusion_heatmap",
    "confusion_grid",
    "training_curves",
    "image_grid",
    "class_balance",
    "pixel_examples",
    "transfer_heatmap",
    "figure_alt_text",
]
ALT_TEXT_LIMIT = 400  # characters

#: History keys tried, in order, for the accuracy panel (Keras may append "_1", "_2", ...).
ACCURACY_KEYS = (
    "accuracy",
    "acc",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "auc",
)
_LONG_LABEL = 8  # characters; longer tick labels are rotated


def _rotate_long_ticks(ax: Axes, names: Sequence[str]) -> None:
    crowded = len(names) > 8
    if crowded or any(len(str(name)) > _LONG_LABEL for name in names):
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _check_axes(axes, count: int) -> list[Axes]:
    axes = list(np.ravel(axes))
    if len(axes) != count:
        raise ValueError(f"axes must hold {count} Axes, got {len(axes)}.")
    return axes


# --------------------------------------------------------------------------- confusion


def _check_confusion(cm, class_names, name: str = "cm") -> tuple[np.ndarray, list[str]]:
    matrix = np.asarray(cm, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        raise ValueError(f"{name} must be a square (K, K) matrix, got shape {matrix.shape}.")
    names = [str(n) for n in class_names]
    if len(names) != matrix.shape[0]:
        raise ValueError(
            f"class_names has {len(names)} entries but {name} is "
            f"{matrix.shape[0]}x{matrix.shape[0]}; expected one name per class."
        )
    return matrix, names


def confusion_heatmap(
    cm,
    class_names: Sequence[str],
    title: str,
    ax: Axes | None = None,
    fmt: str = ".2f",
    cmap: str = "Blues",
) -> Figure:
    """Annotated heatmap of a confusion matrix ``cm`` of shape ``(K, K)``.

    Rows: true class, columns: predicted class. A normalised matrix (values in [0, 1])
    uses a fixed colour scale 0..1 so panels compare; pass ``fmt="d"`` for counts.
    """
    matrix, names = _check_confusion(cm, class_names)
    k = len(names)
    ax = _new_axes(ax, (1.2 + 0.75 * k, 0.9 + 0.65 * k))
    normalised = bool(np.nanmin(matrix) >= 0 and np.nanmax(matrix) <= 1)
    data = matrix.astype(int) if fmt.endswith("d") else matrix
    sns.heatmap(
        data,
        annot=True,
        fmt=fmt,
        cmap=cmap,
        square=True,
        ax=ax,
        vmin=0 if normalised else None,
        vmax=1 if normalised else None,
        xticklabels=names,
        yticklabels=names,
        cbar_kws={"shrink": 0.8},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    ax.tick_params(axis="y", labelrotation=0)
    _rotate_long_ticks(ax, names)
    return ax.figure


def confusion_grid(
    matrices: Mapping[str, np.ndarray],
    class_names: Mapping[str, Sequence[str]] | Sequence[str],
    suptitle: str,
    axes: Sequence[Axes] | None = None,
    fmt: str = ".2f",
    cmap: str = "Blues",
) -> Figure:
    """Confusion heatmaps side by side, one per entry of ``matrices`` (title = its key).

    ``class_names`` is one list shared by all matrices, or a dict with the same keys.
    """
    if not isinstance(matrices, Mapping) or not matrices:
        raise ValueError("matrices must be a non-empty dict {panel title: (K, K) matrix}.")
    names_for = _names_per_panel(matrices, class_names)
    for key, cm in matrices.items():
        _check_confusion(cm, names_for[key], name=f"matrices[{key!r}]")
    if axes is None:
        widths = [max(np.shape(cm)[0], 2) for cm in matrices.values()]
        fig, axes = plt.subplots(
            1,
            len(matrices),
            figsize=(1.5 + 0.8 * sum(widths) + 1.2 * len(widths), 1.4 + 0.65 * max(widths)),
            layout="constrained",
            squeeze=False,
        )
    axes = _check_axes(axes, len(matrices))
    for ax, (key, cm) in zip(axes, matrices.items()):
        confusion_heatmap(cm, names_for[key], title=str(key), ax=ax, fmt=fmt, cmap=cmap)
    fig = axes[0].figure
    fig.suptitle(suptitle)
    return fig


def _names_per_panel(matrices: Mapping, class_names) -> dict[str, list[str]]:
    if isinstance(class_names, Mapping):
        missing = [key for key in matrices if key not in class_names]
        if missing:
            raise ValueError(
                f"class_names has no entry for {missing}; expected the keys of matrices."
            )
        return {key: list(class_names[key]) for key in matrices}
    if isinstance(class_names, str) or not isinstance(class_names, (Sequence, np.ndarray)):
        raise ValueError(
            "class_names must be a list of names or a dict {panel title: list of names}."
        )
    return {key: list(class_names) for key in matrices}


# --------------------------------------------------------------------------- training


def _accuracy_key(history: Mapping[str, Sequence[float]]) -> str | None:
    """First accuracy-like training key of a Keras history (e.g. "accuracy", "auc_1")."""
    for base in ACCURACY_KEYS:
        for key in history:
            if re.fullmatch(rf"{base}(_\d+)?", key):
                return key
    return None


def _as_history(run: str, history) -> dict[str, list[float]]:
    history = getattr(history, "history", history)  # a keras.callbacks.History works too
    if not isinstance(history, Mapping) or "loss" not in history or len(history["loss"]) == 0:
        raise ValueError(
            f"histories[{run!r}] must be a Keras-style dict with a non-empty 'loss' list."
        )
    return {
        key: list(values)
        for key, values in history.items()
        if isinstance(values, (list, tuple, np.ndarray))
    }


def _plot_metric(ax: Axes, history: dict, key: str, label: str, color) -> None:
    epochs = np.arange(1, len(history[key]) + 1)
    ax.plot(epochs, history[key], color=color, linestyle="-", marker=".", label=f"{label} (train)")
    val_key = f"val_{key}"
    if val_key in history and len(history[val_key]):
        val_epochs = np.arange(1, len(history[val_key]) + 1)
        ax.plot(
            val_epochs,
            history[val_key],
            color=color,
            linestyle="--",
            marker=".",
            label=f"{label} (validation)",
        )


def training_curves(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    title: str,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Loss and accuracy per epoch for one or more runs (train solid, validation dashed).

    ``histories`` maps a run name (e.g. ``"pneumonia / small_cnn"``) to a Keras history
    dict (``History.history``) with ``"loss"``, ``"val_loss"`` and an accuracy-like key
    (``accuracy``, ``binary_accuracy``, ``auc``, ...; see :data:`ACCURACY_KEYS`).
    """
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a non-empty dict {run name: Keras history dict}.")
    runs = {str(run): _as_history(str(run), history) for run, history in histories.items()}
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    loss_ax, acc_ax = _check_axes(axes, 2)
    colors = sns.color_palette(n_colors=len(runs))
    metric_names = set()
    for color, (run, history) in zip(colors, runs.items()):
        _plot_metric(loss_ax, history, "loss", run, color)
        key = _accuracy_key(history)
        if key is not None:
            _plot_metric(acc_ax, history, key, run if len(runs) > 1 else key, color)
            metric_names.add(re.sub(r"_\d+$", "", key))
    _label_training_axes(loss_ax, acc_ax, metric_names)
    loss_ax.figure.suptitle(title)
    return loss_ax.figure


def _label_training_axes(loss_ax: Axes, acc_ax: Axes, metric_names: set[str]) -> None:
    metric = " / ".join(sorted(metric_names)) or "accuracy"
    loss_ax.set(title="loss", xlabel="epoch", ylabel="loss")
    acc_ax.set(title=metric, xlabel="epoch", ylabel=metric)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.has_data():
            ax.legend(fontsize="small")
    if not metric_names:
        acc_ax.text(
            0.5,
            0.5,
            "no accuracy metric recorded",
            ha="center",
            va="center",
            transform=acc_ax.transAxes,
        )


# --------------------------------------------------------------------------- images


def _check_images(images) -> np.ndarray:
    array = np.asarray(images, dtype=float)
    if array.ndim == 3:  # (N, H, W) greyscale
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(
            f"images must have shape (N, H, W, 1) or (N, H, W, 3) with N >= 1, got {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("images contains NaN or infinite values.")
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(
            f"images must be floats in [0, 1], got range [{array.min():.3g}, {array.max():.3g}] "
            f"(divide uint8 images by 255)."
        )
    return np.clip(array, 0.0, 1.0)


def image_grid(
    images,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    suptitle: str = "",
    cmap_grey: str = "gray",
) -> Figure:
    """Images in a grid, ``ncols`` per row, with optional per-image ``titles``.

    ``images``: floats in [0, 1], shape ``(N, H, W, 1)`` (greyscale) or ``(N, H, W, 3)``.
    An empty ``suptitle`` becomes ``"N images"`` so the figure is always labelled.
    """
    array = _check_images(images)
    n = len(array)
    if titles is not None and len(titles) != n:
        raise ValueError(
            f"titles has {len(titles)} entries but images has {n}; expected one per image."
        )
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.5 * ncols, 1.6 * nrows + 0.4), layout="constrained", squeeze=False
    )
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            _show_image(ax, array[i], cmap_grey)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize="small")
    fig.suptitle(suptitle or f"{n} images")
    return fig


def _show_image(ax: Axes, image: np.ndarray, cmap_grey: str) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap=cmap_grey, vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)


def pixel_examples(
    clean,
    adversarial,
    pixels,
    before: Sequence[str],
    after: Sequence[str],
    suptitle: str,
    cmap_grey: str = "gray",
) -> Figure:
    """Pixel-attack examples: clean images (top row) and adversarial ones (bottom), changed pixels
    circled.

    ``clean``, ``adversarial``: (N, H, W, C) in [0, 1]; ``pixels``: (N, k, 2 + C) changed pixels,
    x (column) and y (row) first; ``before`` / ``after``: the clean and adversarial predictions,
    one string each, written in black above and in red below the adversarial image (paper 004).
    """
    clean, adversarial = _check_images(clean), _check_images(adversarial)
    pixels = np.asarray(pixels)
    n = len(clean)
    if adversarial.shape != clean.shape or pixels.ndim != 3 or len(pixels) != n:
        raise ValueError(
            f"clean {clean.shape}, adversarial {adversarial.shape} and pixels {pixels.shape} must "
            f"describe the same N images: (N, H, W, C), (N, H, W, C), (N, k, 2 + C)."
        )
    if len(before) != n or len(after) != n:
        raise ValueError(
            f"before and after need one text per image ({n}); got {len(before)} and {len(after)}."
        )
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5.0), layout="constrained", squeeze=False)
    radius = max(1.0, clean.shape[1] / 14)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        for ax, image in ((top, clean[i]), (bottom, adversarial[i])):
            _show_image(ax, image, cmap_grey)
            ax.set_xticks([]), ax.set_yticks([])
        top.set_title(f"image {i + 1}", fontsize="small")
        for x, y in pixels[i][:, :2]:
            bottom.add_patch(plt.Circle((x, y), radius, color="red", fill=False, linewidth=1.5))
        bottom.set_title(str(before[i]), fontsize="small", fontweight="bold")
        bottom.set_xlabel(str(after[i]), fontsize="small", fontweight="bold", color="red")
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("attacked")
    fig.suptitle(suptitle)
    return fig


# --------------------------------------------------------------------------- class balance


def transfer_heatmap(
    table: pd.DataFrame, title: str, rate: str = "R_f", cmap: str = "Reds"
) -> Figure:
    """A transferability matrix (rates in [0, 1]; rows: the model the UAP was made on, columns: the
    model it is evaluated on, as :func:`helpers.vulnerability.transferability` returns) in %."""
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError("table is empty: give vulnerability.transferability's rates.")
    fig, ax = plt.subplots(figsize=(4 + table.shape[1], 2.5 + 0.5 * table.shape[0]))
    sns.heatmap(
        100 * table.astype(float),
        annot=True,
        fmt=".1f",
        vmin=0,
        vmax=100,
        cmap=cmap,
        ax=ax,
        cbar_kws={"label": f"{rate} (%)"},
    )
    ax.set(title=title, xlabel="evaluated on", ylabel="UAP made on")
    return fig


def _balance_frame(counts: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError("counts must be a non-empty dict {split: {class name: number of images}}.")
    class_order: list[str] = []
    for split, per_class in counts.items():
        if not isinstance(per_class, Mapping) or not per_class:
            raise ValueError(
                f"counts[{split!r}] must be a non-empty dict {{class name: number of images}}."
            )
        class_order += [str(c) for c in per_class if str(c) not in class_order]
    rows = []
    for split, per_class in counts.items():
        named = {str(c): v for c, v in per_class.items()}
        for name in class_order:
            value = named.get(name, 0)
            if not np.isscalar(value) or not np.isfinite(value) or value < 0:
                raise ValueError(
                    f"counts[{split!r}][{name!r}] must be a count >= 0, got {value!r}."
                )
            rows.append({"split": str(split), "class": name, "number of images": int(value)})
    return pd.DataFrame(rows)


def class_balance(
    counts: Mapping[str, Mapping[str, int]], title: str, ax: Axes | None = None
) -> Figure:
    """Grouped bar chart of images per class (x) and split (colour).

    ``counts`` maps a split to per-class counts, e.g.
    ``{"train": {"normal": 1214, "pneumonia": 3494}, "test": {"normal": 234, "pneumonia": 390}}``.
    """
    frame = _balance_frame(counts)
    n_classes = frame["class"].nunique()
    ax = _new_axes(ax, (max(5.0, 0.9 * n_classes * max(frame["split"].nunique(), 2) / 2 + 2), 4))
    sns.barplot(data=frame, x="class", y="number of images", hue="split", errorbar=None, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fontsize="x-small", padding=1)
    ax.set(title=title, xlabel="class", ylabel="number of images")
    _rotate_long_ticks(ax, frame["class"].unique())
    return ax.figure


# --------------------------------------------------------------------------- alt text


def figure_alt_text(fig: Figure, limit: int = ALT_TEXT_LIMIT) -> str:
    """A short description of ``fig`` for screen readers: its title, then each panel's title and
    axes."""
    title = fig._suptitle.get_text().strip() if getattr(fig, "_suptitle", None) is not None else ""
    panels = []
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        labels = ", ".join(
            f"{axis}: {text}"
            for axis, text in (("x", ax.get_xlabel()), ("y", ax.get_ylabel()))
            if text
        )
        name = ax.get_title().strip()
        panel = f"{name} ({labels})" if name and labels else name or labels
        if panel and panel not in panels:
            panels.append(panel)
    text = (
        ". ".join(part for part in (title, "; ".join(panels)) if part)
        or "A figure without title or axis labels"
    )
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _attach_alt_text_to_inline_figures() -> None:
    """Let the notebook's inline backend store :func:`figure_alt_text` in every figure output's
    metadata."""
    try:
        from matplotlib_inline import backend_inline
    except ImportError:  # not in a notebook
        return
    original = backend_inline._fetch_figure_metadata
    if getattr(original, "adds_alt_text", False):
        return

    def with_alt_text(fig):
        return {**(original(fig) or {}), "alt": figure_alt_text(fig)}

    with_alt_text.adds_alt_text = True
    backend_inline._fetch_figure_metadata = with_alt_text


_attach_alt_text_to_inline_figures()
