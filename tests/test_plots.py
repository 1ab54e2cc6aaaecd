"""Tests of helpers.plots: every figure is returned, titled and labelled; bad shapes fail."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from helpers import plots  # noqa: E402

NAMES = ["normal", "benign", "malignant"]
CM = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def plot_axes(fig: Figure):
    """The figure's plot axes (seaborn colour bars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_labelled(fig: Figure, n_axes: int | None = None):
    axes = plot_axes(fig)
    if n_axes is not None:
        assert len(axes) == n_axes
    for ax in axes:
        assert ax.get_title(), "axes without title"
        assert ax.get_xlabel(), "axes without x label"
        assert ax.get_ylabel(), "axes without y label"


def tick_texts(labels):
    return [label.get_text() for label in labels]


# --------------------------------------------------------------------------- confusion


def test_confusion_heatmap_labels_and_ticks():
    fig = plots.confusion_heatmap(CM, NAMES, title="pneumonia")
    assert isinstance(fig, Figure)
    assert_labelled(fig, n_axes=1)
    ax = plot_axes(fig)[0]
    assert ax.get_title() == "pneumonia"
    assert ax.get_xlabel() == "predicted class"
    assert ax.get_ylabel() == "true class"
    assert tick_texts(ax.get_xticklabels()) == NAMES
    assert tick_texts(ax.get_yticklabels()) == NAMES
    assert len(ax.texts) == 9  # every cell annotated
    assert ax.collections[0].get_clim() == (0.0, 1.0)


def test_confusion_heatmap_counts_on_given_ax():
    fig, ax = plt.subplots()
    returned = plots.confusion_heatmap(
        np.array([[3, 1], [0, 4]]), ["a", "b"], "counts", ax=ax, fmt="d"
    )
    assert returned is fig
    assert tick_texts(ax.texts) == ["3", "1", "0", "4"]


@pytest.mark.parametrize(
    "cm, names, parameter",
    [
        (np.zeros((2, 3)), ["a", "b"], "cm"),
        (np.zeros(3), ["a", "b", "c"], "cm"),
        (CM, ["a", "b"], "class_names"),
    ],
)
def test_confusion_heatmap_bad_shapes(cm, names, parameter):
    with pytest.raises(ValueError, match=parameter):
        plots.confusion_heatmap(cm, names, title="bad")


def test_confusion_grid_one_panel_per_dataset():
    matrices = {"breast": np.eye(2), "derma": np.eye(3) * 0.5 + 0.5 / 3}
    names = {"breast": ["malignant", "normal"], "derma": NAMES}
    fig = plots.confusion_grid(matrices, names, suptitle="clean models")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "clean models"
    assert_labelled(fig, n_axes=2)
    assert [ax.get_title() for ax in plot_axes(fig)] == ["breast", "derma"]
    assert tick_texts(plot_axes(fig)[1].get_xticklabels()) == NAMES


def test_confusion_grid_shared_names():
    fig = plots.confusion_grid({"clean": CM, "attacked": CM}, NAMES, suptitle="UAP")
    assert_labelled(fig, n_axes=2)


@pytest.mark.parametrize(
    "matrices, names, parameter",
    [
        ({}, NAMES, "matrices"),
        ({"a": CM}, {"b": NAMES}, "class_names"),
        ({"a": CM}, ["x", "y"], "class_names"),
        ({"a": np.zeros((3, 2))}, NAMES, "matrices"),
    ],
)
def test_confusion_grid_bad_input(matrices, names, parameter):
    with pytest.raises(ValueError, match=parameter):
        plots.confusion_grid(matrices, names, suptitle="bad")


# --------------------------------------------------------------------------- training curves


def test_training_curves_mixed_runs():
    histories = {
        "pneumonia / small_cnn": {
            "loss": [0.7, 0.5, 0.4],
            "val_loss": [0.72, 0.6, 0.55],
            "accuracy": [0.6, 0.75, 0.8],
            "val_accuracy": [0.58, 0.7, 0.74],
        },
        "chest / small_cnn": {
            "loss": [0.4, 0.3, 0.25],
            "val_loss": [0.45, 0.35, 0.33],
            "binary_accuracy": [0.9, 0.92, 0.93],
            "auc_1": [0.6, 0.65, 0.7],
            "val_binary_accuracy": [0.9, 0.91, 0.92],
        },
    }
    fig = plots.training_curves(histories, title="training")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "training"
    assert_labelled(fig, n_axes=2)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.get_lines()) == 4 and len(acc_ax.get_lines()) == 4
    assert [line.get_linestyle() for line in loss_ax.get_lines()] == ["-", "--", "-", "--"]
    assert loss_ax.get_legend() is not None and acc_ax.get_legend() is not None
    assert "binary_accuracy" in acc_ax.get_ylabel()


def test_training_curves_auc_only_and_no_accuracy():
    fig = plots.training_curves({"run": {"loss": [1.0, 0.8], "auc": [0.6, 0.7]}}, title="auc")
    assert plot_axes(fig)[1].get_ylabel() == "auc"
    fig = plots.training_curves({"run": {"loss": [1.0, 0.8]}}, title="loss only")
    assert_labelled(fig, n_axes=2)


@pytest.mark.parametrize("histories", [{}, {"run": {"accuracy": [0.5]}}, {"run": {"loss": []}}])
def test_training_curves_bad_input(histories):
    with pytest.raises(ValueError, match="histories"):
        plots.training_curves(histories, title="bad")


# --------------------------------------------------------------------------- image grid


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_grey_and_rgb(channels):
    images = np.random.default_rng(0).random((5, 8, 8, channels))
    titles = [f"img {i}" for i in range(5)]
    fig = plots.image_grid(images, titles=titles, ncols=3, suptitle="examples")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "examples"
    assert len(fig.axes) == 6  # 2 rows of 3, last one hidden
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in shown] == titles


def test_image_grid_default_suptitle():
    fig = plots.image_grid(np.zeros((2, 4, 4, 1)))
    assert fig.get_suptitle()


@pytest.mark.parametrize(
    "images, titles, parameter",
    [
        (np.zeros((2, 4, 4, 2)), None, "images"),
        (np.zeros((4, 4)), None, "images"),
        (np.full((2, 4, 4, 1), 255.0), None, "images"),
        (np.zeros((2, 4, 4, 1)), ["only one"], "titles"),
    ],
)
def test_image_grid_bad_input(images, titles, parameter):
    with pytest.raises(ValueError, match=parameter):
        plots.image_grid(images, titles=titles)


# --------------------------------------------------------------------------- class balance


def test_class_balance_grouped_bars():
    counts = {"train": {"normal": 40, "pneumonia": 120}, "test": {"normal": 10, "pneumonia": 30}}
    fig = plots.class_balance(counts, title="PneumoniaMNIST")
    assert isinstance(fig, Figure)
    assert_labelled(fig, n_axes=1)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "number of images"
    assert tick_texts(ax.get_xticklabels()) == ["normal", "pneumonia"]
    heights = sorted(patch.get_height() for patch in ax.patches if patch.get_height() > 0)
    assert heights == [10, 30, 40, 120]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]


def test_class_balance_on_given_ax_with_missing_class():
    fig, ax = plt.subplots()
    counts = {
        "train": {"actinic keratosis": 5, "melanocytic nevi": 50},
        "test": {"melanocytic nevi": 9},
    }
    assert plots.class_balance(counts, title="DermaMNIST", ax=ax) is fig
    assert_labelled(fig, n_axes=1)


@pytest.mark.parametrize("counts", [{}, {"train": {}}, {"train": {"a": -1}}])
def test_class_balance_bad_input(counts):
    with pytest.raises(ValueError, match="counts"):
        plots.class_balance(counts, title="bad")


def test_alt_text_names_the_title_and_every_panel():
    from helpers.plots import figure_alt_text

    fig, axes = plt.subplots(1, 2)
    axes[0].set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    axes[1].set(xlabel="epoch")
    fig.suptitle("Training curves")
    assert figure_alt_text(fig) == "Training curves. Accuracy (x: epoch, y: accuracy); x: epoch"
    fig.suptitle("A" * 500)
    assert len(figure_alt_text(fig)) == 400 and figure_alt_text(fig).endswith("...")
    assert figure_alt_text(plt.figure()) == "A figure without title or axis labels"
    plt.close("all")


def test_transfer_heatmap_in_percent_with_labels():
    import pandas as pd

    table = pd.DataFrame([[0.5, 0.25], [0.1, 1.0]], index=["A", "B"], columns=["A", "B"])
    fig = plots.transfer_heatmap(table, "transfer", rate="R_s", cmap="Purples")
    ax = fig.axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "transfer",
        "evaluated on",
        "UAP made on",
    )
    assert [t.get_text() for t in ax.texts] == ["50.0", "25.0", "10.0", "100.0"]
    assert fig.axes[1].get_ylabel() == "R_s (%)"
    plt.close(fig)
    with pytest.raises(ValueError, match="table is empty"):
        plots.transfer_heatmap(pd.DataFrame(), "empty")
