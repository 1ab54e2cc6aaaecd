"""Few-pixel attacks by differential evolution: the pieces by hand, toy models, the smoke model.

* Hand-computed: applying candidates, DE mutation and selection, the fitness functions and
  the paper's tables (T_adv and the disease/normal conversions are checked against the
  paper's own Derma tables 7-9).
* Toy Keras models with a known weakness (one pixel drives a class, a pixel region drives a
  finding): the attack must find it, random pixels must not.
* The smoke pneumonia model: images just outside the decision boundary (clean confidence
  above 0.6), where a short search (population 40, 10 generations) already fools some.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from helpers import models, pixel, pixel_tables
from helpers.data import get_info
from helpers.models import predict_proba

SIDE = 8


# --------------------------------------------------------------------------- toy models


def dense_model(weights, bias, activation: str, channels: int = 1) -> keras.Model:
    """Flatten -> Dense with the given weights: outputs depend on chosen pixels only."""
    inputs = keras.Input((SIDE, SIDE, channels))
    outputs = keras.layers.Dense(len(bias), activation=activation)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
    return model


def one_pixel_model() -> keras.Model:
    """3 classes: class 1 when pixel (row 3, col 5) > 0.5, class 2 when pixel (row 6, col 2) > 0.5,
    else 0."""
    weights = np.zeros((SIDE * SIDE, 3))
    weights[3 * SIDE + 5, 1] = weights[6 * SIDE + 2, 2] = 20.0
    return dense_model(weights, [0.0, -10.0, -10.0], "softmax")


def region_model() -> keras.Model:
    """3 findings, each present when the sum of its 2x2 corner block exceeds 0.5."""
    weights = np.zeros((SIDE, SIDE, 3))
    weights[0:2, 0:2, 0] = weights[0:2, 6:8, 1] = weights[6:8, 0:2, 2] = 20.0
    return dense_model(weights.reshape(SIDE * SIDE, 3), [-10.0] * 3, "sigmoid")


def dark_images(n: int, seed: int = 0) -> np.ndarray:
    """Images in [0, 0.1]: every toy model predicts class 0 / no finding on them."""
    return (0.1 * np.random.default_rng(seed).random((n, SIDE, SIDE, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def toy():
    return one_pixel_model()


@pytest.fixture(scope="module")
def toy_multilabel():
    return region_model()


# --------------------------------------------------------------------------- candidates by hand


def test_apply_pixels_sets_exactly_the_chosen_values_at_the_floored_coordinates():
    images = np.random.default_rng(0).random((2, 4, 5, 1)).astype(np.float32)
    pixels = np.array(
        [
            [[1.7, 2.2, 0.9], [4.99, 0.0, 0.0]],  # (x, y, I): col 1 row 2; col 4 row 0
            # col 0 row 3; col 2 row 1
            [[0.0, 3.999, 1.0], [2.5, 1.5, 0.25]],
        ]
    )
    expected = images.copy()
    expected[0, 2, 1, 0], expected[0, 0, 4, 0] = 0.9, 0.0
    expected[1, 3, 0, 0], expected[1, 1, 2, 0] = 1.0, 0.25
    before = images.copy()
    np.testing.assert_array_equal(pixel.apply_pixels(images, pixels), expected)
    np.testing.assert_array_equal(images, before)  # the input is not modified


def test_apply_pixels_colour_and_population_axis():
    images = np.zeros((1, 3, 3, 3), np.float32)
    # (1, 2, k=1, 5)
    population = np.array([[[[2.5, 0.2, 0.1, 0.2, 0.3]], [[0.0, 2.9, 1.0, 1.0, 1.0]]]])
    out = pixel.apply_pixels(images, population)
    assert out.shape == (1, 2, 3, 3, 3)
    np.testing.assert_allclose(out[0, 0, 0, 2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(out[0, 1, 2, 0], [1.0, 1.0, 1.0])
    assert np.count_nonzero(out[0, 0]) == 3 and np.count_nonzero(out[0, 1]) == 3


def test_bounds_keep_floored_coordinates_inside_the_image():
    lower, upper = pixel.pixel_bounds((4, 6, 3), 2)
    assert lower.shape == upper.shape == (2, 5)
    assert np.all(lower == 0) and np.all(upper[:, 2:] == 1)
    assert upper[0, 0] < 6 and np.floor(upper[0, 0]) == 5  # x: columns
    assert upper[0, 1] < 4 and np.floor(upper[0, 1]) == 3  # y: rows
    population = pixel.random_population(np.random.default_rng(0), 3, 50, (4, 6, 3), 2)
    assert population.shape == (3, 50, 2, 5)
    assert np.all(population >= lower) and np.all(population <= upper)


# --------------------------------------------------------------------------- DE by hand


@pytest.mark.parametrize("size", [4, 5, 100])
def test_donors_are_distinct_and_never_the_child_itself(size):
    donors = pixel.draw_donors(np.random.default_rng(0), 50, size)
    assert donors.shape == (3, 50, size)
    r1, r2, r3 = donors
    i = np.arange(size)
    assert np.all((r1 != r2) & (r1 != r3) & (r2 != r3))
    assert np.all((r1 != i) & (r2 != i) & (r3 != i))
    assert donors.min() >= 0 and donors.max() < size
    if size == 4:  # every other parent is drawn, in every role
        for r in donors:
            assert {(c, v) for c, v in zip(np.tile(i, 50), r.ravel())} == {
                (c, v) for c in i for v in i if v != c
            }


def test_mutation_without_crossover_equals_the_formula():
    population = np.array(
        [[[[1.0, 1.0, 0.2]], [[2.0, 3.0, 0.4]], [[0.0, 1.0, 0.8]], [[3.0, 0.0, 0.1]]]]
    )
    donors = np.array([[[1, 0, 1, 0]], [[2, 3, 0, 1]], [[3, 2, 2, 2]]])  # (r1, r2, r3) x (A=1, P=4)
    lower, upper = pixel.pixel_bounds((4, 4, 1), 1)
    children = pixel.mutate(np.random.default_rng(0), population, 0.5, donors, lower, upper)
    # child 0: p1 + 0.5 (p2 - p3) = (2, 3, 0.4) + 0.5 (-3, 1, 0.7) = (0.5, 3.5, 0.75)
    np.testing.assert_allclose(children[0, 0, 0], [0.5, 3.5, 0.75])
    # child 1: p0 + 0.5 (p3 - p2) = (1, 1, 0.2) + 0.5 (3, -1, -0.7) = (2.5, 0.5, -0.15): the
    # intensity is out of bounds and redrawn in [0, 1] (not clipped to 0), the position is kept
    np.testing.assert_allclose(children[0, 1, 0, :2], [2.5, 0.5])
    assert 0.0 < children[0, 1, 0, 2] <= 1.0
    # child 2: p1 + 0.5 (p0 - p2) = (2, 3, 0.4) + 0.5 (1, 0, -0.6) = (2.5, 3, 0.1)
    np.testing.assert_allclose(children[0, 2, 0], [2.5, 3.0, 0.1])
    # child 3: p0 + 0.5 (p1 - p2) = (1, 1, 0.2) + 0.5 (2, 2, -0.4) = (2, 2, 0): on the bound, kept
    np.testing.assert_allclose(children[0, 3, 0], [2.0, 2.0, 0.0], atol=1e-12)


def test_mutation_matches_the_formula_inside_the_bounds_and_redraws_outside():
    rng = np.random.default_rng(1)
    population = pixel.random_population(rng, 3, 6, (5, 7, 3), 2)
    donors = pixel.draw_donors(rng, 3, 6)
    lower, upper = pixel.pixel_bounds((5, 7, 3), 2)
    children = pixel.mutate(rng, population, 0.9, donors, lower, upper)
    a = np.arange(3)[:, None]
    raw = population[a, donors[0]] + 0.9 * (population[a, donors[1]] - population[a, donors[2]])
    inside = (raw >= lower) & (raw <= upper)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(children[inside], raw[inside])
    assert np.all(children >= lower) and np.all(children <= upper)
    clipped = np.clip(raw, lower, upper)
    assert np.all(children[~inside] != clipped[~inside])  # redrawn, not clipped onto the bound


def test_first_generation_children_are_spread_over_all_columns():
    """Out-of-bounds children are redrawn uniformly: no pile-up on the border columns."""
    rng = np.random.default_rng(0)
    shape = (28, 28, 1)
    population = pixel.random_population(rng, 200, 100, shape, 1)
    lower, upper = pixel.pixel_bounds(shape, 1)
    children = pixel.mutate(rng, population, 0.5, pixel.draw_donors(rng, 200, 100), lower, upper)
    assert np.all(children >= lower) and np.all(children <= upper)
    columns = (
        np.bincount(np.floor(children[..., 0]).astype(int).ravel(), minlength=28)
        / children[..., 0].size
    )
    rows = (
        np.bincount(np.floor(children[..., 1]).astype(int).ravel(), minlength=28)
        / children[..., 1].size
    )
    assert len(columns) == len(rows) == 28
    for share in (columns, rows):  # uniform: 1/28 = 3.6 % each; clipping gave ~10 % at the borders
        assert share[0] < 0.06 and share[-1] < 0.06
        assert share.min() > 0.015 and share.max() < 0.06


def test_selection_keeps_the_parent_on_ties():
    parents = np.array([[[0.0], [1.0], [2.0]]])
    children = np.array([[[10.0], [11.0], [12.0]]])
    survivors, scores, replaced = pixel.select(
        parents, np.array([[1.0, 2.0, 3.0]]), children, np.array([[1.0, 2.5, 2.0]])
    )
    np.testing.assert_array_equal(replaced, [[False, True, False]])
    np.testing.assert_array_equal(survivors[0, :, 0], [0.0, 11.0, 2.0])
    np.testing.assert_array_equal(scores, [[1.0, 2.5, 3.0]])


# --------------------------------------------------------------------------- fitness by hand


def test_multilabel_cosine_fitness_by_hand():
    # labels (1, 0, 0) -> (1, -1, -1); outputs (0.9, 0.2, 0.5) -> (0.8, -0.6, 0)
    # dot = 0.8 + 0.6 = 1.4; norms sqrt(3) x sqrt(0.64 + 0.36) = sqrt(3)
    expected = 1.4 / np.sqrt(3.0)
    assert pixel.cosine_similarity([1, 0, 0], [0.9, 0.2, 0.5]) == pytest.approx(expected)
    outputs = np.array([[[0.9, 0.2, 0.5]]])  # (A=1, P=1, L=3)
    reference = np.array([[1, 0, 0]])
    assert pixel.fitness(outputs, reference, targeted=False, multilabel=True)[
        0, 0
    ] == pytest.approx(-expected)
    assert pixel.fitness(outputs, reference, targeted=True, multilabel=True)[0, 0] == pytest.approx(
        expected
    )
    # no finding and outputs all 0.5: both norms 0 -> the denominator is delta, the similarity 0
    assert pixel.cosine_similarity([0, 0, 0], [0.5, 0.5, 0.5]) == 0.0
    # no finding and outputs all 0: (-1, -1, -1) . (-1, -1, -1) / 3 = 1
    # (not 0, thanks to the [-1, 1] mapping)
    assert pixel.cosine_similarity([0, 0, 0], [0.0, 0.0, 0.0]) == pytest.approx(1.0)


def test_multilabel_success_thresholds_strictly_above_one_half():
    outputs = np.array([[[0.9, 0.5, 0.1], [0.9, 0.51, 0.1]]])
    reference = np.array([[1, 0, 0]])
    np.testing.assert_array_equal(
        pixel.is_success(outputs, reference, targeted=False, multilabel=True), [[False, True]]
    )
    np.testing.assert_array_equal(
        pixel.is_success(outputs, np.array([[1, 1, 0]]), targeted=True, multilabel=True),
        [[False, True]],
    )


def test_single_label_fitness_and_success_by_hand():
    outputs = np.array([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.4, 0.5, 0.1]]])
    original = np.array([0])
    np.testing.assert_allclose(
        pixel.fitness(outputs, original, targeted=False, multilabel=False), [[-0.7, -0.3, -0.4]]
    )
    np.testing.assert_array_equal(
        pixel.is_success(outputs, original, targeted=False, multilabel=False), [[False, True, True]]
    )
    target = np.array([2])
    np.testing.assert_allclose(
        pixel.fitness(outputs, target, targeted=True, multilabel=False), [[0.1, 0.4, 0.1]]
    )
    np.testing.assert_array_equal(
        pixel.is_success(outputs, target, targeted=True, multilabel=False), [[False, True, False]]
    )


# --------------------------------------------------------------------------- the paper's tables

DERMA_ORDER = ("BKL", "NV", "DF", "MEL", "VASC", "BCC", "AKIEC")  # the paper's column order
PAPER_TABLE_7 = np.array(
    [  # rows original, columns resulting, in DERMA_ORDER
        [0, 18, 1, 8, 0, 9, 5],
        [3, 0, 0, 0, 0, 1, 0],
        [2, 18, 0, 0, 0, 57, 3],
        [4, 11, 0, 0, 0, 1, 0],
        [0, 9, 0, 0, 0, 1, 0],
        [7, 12, 4, 3, 0, 0, 6],
        [10, 0, 4, 3, 0, 24, 0],
    ]
)
PAPER_TABLE_8 = [21.25, 37.52, 3.53, 5.17, 0.00, 27.57, 4.96]


def table_7_images():
    """(original, final) class indices in ``get_info("derma")`` order, one pair per successful
    image."""
    names = get_info("derma").short_names
    index = [names.index(n) for n in DERMA_ORDER]
    rows, cols = np.nonzero(PAPER_TABLE_7)
    counts = PAPER_TABLE_7[rows, cols]
    return np.repeat(np.take(index, rows), counts), np.repeat(np.take(index, cols), counts)


def test_transform_ratio_reproduces_the_papers_table_8():
    table = pd.DataFrame(PAPER_TABLE_7, index=DERMA_ORDER, columns=DERMA_ORDER)
    ratio = pixel_tables.transform_ratio(table)
    np.testing.assert_allclose(100 * ratio.to_numpy(), PAPER_TABLE_8, atol=0.006)
    assert list(ratio.index) == list(DERMA_ORDER)


def test_transform_ratio_with_a_failed_class_by_hand():
    # class 1 has no successful image: F = 1, T = sum of row ratios / (3 - 1)
    counts = np.array([[0, 2, 2], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(pixel_tables.transform_ratio(counts), [0.5, 0.25, 0.25])
    # the diagonal is ignored (ori = adv is a failure)
    np.testing.assert_allclose(
        pixel_tables.transform_ratio(counts + 5 * np.eye(3, dtype=int)), [0.5, 0.25, 0.25]
    )
    assert pixel_tables.transform_ratio(np.zeros((2, 2))).isna().all()


def test_transformation_table_by_hand_and_from_the_paper():
    table = pixel_tables.transformation_table(
        [0, 0, 1, 2, 2], [1, 1, 0, 2, 1], [True, True, True, False, True], ["a", "b", "c"]
    )
    np.testing.assert_array_equal(table.to_numpy(), [[0, 2, 0], [1, 0, 0], [0, 1, 0]])
    assert list(table.index) == list(table.columns) == ["a", "b", "c"]
    original, final = table_7_images()
    names = get_info("derma").short_names
    full = pixel_tables.transformation_table(original, final, np.ones(len(original), bool), names)
    np.testing.assert_array_equal(
        full.loc[list(DERMA_ORDER), list(DERMA_ORDER)].to_numpy(), PAPER_TABLE_7
    )


def test_conversion_table_reproduces_the_papers_table_9_for_derma():
    original, final = table_7_images()
    # the paper counts benign keratosis, melanocytic nevi and dermatofibroma as normal
    names = get_info("derma").short_names
    normal = [names.index(n) for n in ("BKL", "NV", "DF")]
    table = pixel_tables.conversion_table(original, final, np.ones(len(original), bool), normal)
    assert table["Count"].tolist() == [61, 83]
    np.testing.assert_allclose(table["Percentage"], [42.36, 57.64], atol=0.005)
    assert list(table.index) == ["Disease to Normal", "Normal to Disease"]


def test_conversion_table_multilabel_normal_is_the_empty_set():
    original = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]])
    final = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    success = np.array([True, True, True, True, False])
    table = pixel_tables.conversion_table(original, final, success)
    # disease -> normal: image 1; normal -> disease: 0 and 3
    assert table["Count"].tolist() == [1, 2]
    np.testing.assert_allclose(table["Percentage"], [100 / 3, 200 / 3])


def test_avg_cl_by_hand():
    assert pixel_tables.avg_cl([0.9, 0.8, 0.3], [True, False, True]) == pytest.approx(0.6)
    assert np.isnan(pixel_tables.avg_cl([0.9], [False]))


def test_success_rate_table_by_hand():
    table = pixel_tables.success_rate_table(
        [1, 0, 1, 1, 2], [True, False, False, True, True], ["a", "b", "c"]
    )
    assert list(table.index) == ["a", "b", "c"]
    assert table["images"].tolist() == [1, 3, 1]
    assert table["successes"].tolist() == [0, 2, 1]
    np.testing.assert_allclose(table["success rate"], [0.0, 2 / 3, 1.0])
    sets = pixel_tables.success_rate_table(
        np.array([[0, 0], [1, 0], [0, 0]]), [True, True, False], ["X", "Y"]
    )
    assert list(sets.index) == ["Normal", "X"] and sets["successes"].tolist() == [1, 1]


def test_label_set_tables_by_hand():
    names = ["ATEL", "EFFU", "NODU"]
    original = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
    final = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    success = np.array([True, True, True, True, False])
    assert pixel_tables.label_set_names(final, names) == [
        "ATEL",
        "ATEL, NODU",
        "Normal",
        "ATEL, EFFU",
        "Normal",
    ]
    # rows resulting, columns original
    table = pixel_tables.label_set_table(original, final, success, names)
    assert list(table.columns) == ["ATEL", "EFFU", "Normal"]
    assert table.loc["ATEL", "Normal"] == 1 and table.loc["ATEL, NODU", "Normal"] == 1
    assert table.loc["Normal", "ATEL"] == 1 and table.loc["ATEL, EFFU", "EFFU"] == 1
    assert table.to_numpy().sum() == 4
    assert pixel_tables.finding_counts(final, success, names).tolist() == [3, 1, 1]
    assert pixel_tables.findings_per_image(final, success).tolist() == [1, 1, 2, 0]


def test_tables_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="success"):
        pixel_tables.avg_cl([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="square"):
        pixel_tables.transform_ratio(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label_set_table"):
        pixel_tables.transformation_table(
            np.zeros((2, 3)), np.zeros((2, 3)), [True, True], ["a", "b", "c"]
        )
    with pytest.raises(ValueError, match="labels"):
        pixel_tables.success_rate_table([0, 3], [True, True], ["a", "b"])


def test_report_multilabel_tables_by_hand():
    original = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], np.uint8)
    final = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0]], np.uint8)
    success = np.array([True, False, True, True])
    result = pixel.PixelAttackResult(
        adversarial=np.zeros((4, 2, 2, 1), np.float32),
        success=success,
        original=original,
        final=final,
        original_confidence=np.ones(4),
        final_confidence=np.array([0.9, 0.1, 0.5, 0.7]),
        original_proba=original.astype(float),
        final_proba=final.astype(float),
        pixels=np.zeros((4, 1, 3)),
        generations=np.zeros(4, int),
        queries=np.ones(4, int),
        seconds=0.0,
        multilabel=True,
    )
    tables = pixel_tables.report(result, get_info("chest"), names=["A", "B", "C"])
    assert tables["success rate"].loc[["A", "Normal"], "successes"].tolist() == [1, 2]
    assert tables["findings"].tolist() == [1, 1, 1]  # A, B, C over images 0, 2, 3
    # Normal, one finding, two findings
    assert tables["findings per image"].tolist() == [1, 1, 1, 0]
    assert tables["conversion"]["Count"].tolist() == [1, 2]
    assert tables["AvgCL"] == pytest.approx(0.7)  # mean over the successful images
    assert (
        tables["label sets"].loc["Normal", "A"] == 1 and tables["label sets"].to_numpy().sum() == 3
    )
    with pytest.raises(ValueError, match="multi-label"):
        pixel_tables.report(result, get_info("pneumonia"))


# ------------------------------------------------------------------------ tiny deterministic models


def step_model(position, outputs_dark, outputs_bright, threshold: float = 0.5) -> keras.Model:
    """Softmax over fixed logits: ``outputs_bright`` when the pixel at (row, col) ``position``
    exceeds ``threshold``, else ``outputs_dark`` - whatever the rest of the image."""
    row, col = position
    inputs = keras.Input((SIDE, SIDE, 1))
    bright = keras.layers.Lambda(
        lambda x: keras.ops.cast(x[:, row, col, :] > threshold, "float32")
    )(inputs)
    logits = keras.layers.Dense(len(outputs_dark))(bright)
    outputs = keras.layers.Activation("softmax")(logits)
    model = keras.Model(inputs, outputs)
    dark, jump = (
        np.asarray(outputs_dark, np.float32),
        np.subtract(outputs_bright, outputs_dark, dtype=np.float32),
    )
    model.layers[2].set_weights([jump[None], dark])
    return model


def test_a_successful_child_that_loses_its_selection_is_returned_as_a_success():
    # three classes; a bright pixel (3, 5) makes class 1 win, but with p0 = 0.49, *less* fit than
    # every other candidate (p0 = 0.36): the successful child always loses its pairwise selection
    model = step_model((3, 5), [0.0, -0.1, -0.1], [0.0, 0.05, -10.0])
    images = dark_images(12, seed=7)
    result = pixel.pixel_attack(
        model,
        images,
        pixels=1,
        population=20,
        generations=40,
        early_stop=0.01,
        seed=0,
        progress=False,
    )
    assert np.all(result.original == 0)
    # no success in the initial population: only a child can succeed
    rescued = result.generations > 0
    assert rescued.sum() >= 3
    assert np.all(result.success)
    assert np.all(result.final[rescued] == 1)
    np.testing.assert_array_equal(
        result.pixels[rescued, 0, :2], np.tile([5, 3], (rescued.sum(), 1))
    )
    assert np.all(result.pixels[rescued, 0, 2] > 0.5)
    # less fit, yet kept
    assert np.all(result.final_proba[rescued, 0] > result.original_proba[rescued, 0])


def test_an_image_stops_at_the_first_generation_with_a_successful_candidate():
    weights = np.zeros((SIDE * SIDE, 2))
    weights[3 * SIDE + 5, 1] = 20.0  # class 1 iff pixel (row 3, col 5) > 0.9
    model = dense_model(weights, [0.0, -18.0], "softmax")
    images = dark_images(10, seed=8)
    settings = dict(pixels=1, population=100, early_stop=0.01, seed=0, progress=False)
    full = pixel.pixel_attack(model, images, generations=60, **settings)
    assert np.all(full.success)
    stops = full.generations
    assert len(set(stops[stops > 0])) >= 2
    # the same search cut one generation earlier: those images have not succeeded yet (the random
    # streams are identical until then), the others are unchanged
    for stop in sorted(set(stops[stops > 0])):
        cut = pixel.pixel_attack(model, images, generations=int(stop) - 1, **settings)
        at = stops == stop
        assert not cut.success[at].any() and np.all(cut.generations[at] == stop - 1)
        np.testing.assert_array_equal(cut.generations[stops < stop], stops[stops < stop])
        np.testing.assert_array_equal(cut.adversarial[stops < stop], full.adversarial[stops < stop])


def one_image_at_a_time(model):
    """The model's forward pass image by image: outputs that cannot depend on the batch shape."""
    return lambda x: np.concatenate(
        [np.asarray(model(x[i : i + 1], training=False), np.float32) for i in range(len(x))]
    )


def test_the_result_does_not_depend_on_batch_size(toy, toy_multilabel, monkeypatch):
    """What batch_size changes is only how the candidates are grouped into model calls. With a
    forward pass whose outputs cannot depend on that grouping (image by image here), every result is
    identical. TensorFlow's batched kernels may round an output differently for another batch shape
    (vectorised main loop or scalar tail), which can tip a search between two nearly equal
    candidates: that is not promised away."""
    monkeypatch.setattr(pixel, "_forward", one_image_at_a_time)
    images = dark_images(5, seed=9)
    for model, target in ((toy, None), (toy, 2), (toy_multilabel, None)):
        settings = dict(
            pixels=2, target=target, population=12, generations=6, seed=1, progress=False
        )
        small = pixel.pixel_attack(model, images, batch_size=7, **settings)
        large = pixel.pixel_attack(model, images, **settings)
        for name in ("adversarial", "pixels", "success", "final_proba", "generations"):
            np.testing.assert_array_equal(getattr(small, name), getattr(large, name))
    small = pixel.random_pixels(toy, images, pixels=3, tries=9, batch_size=4)
    large = pixel.random_pixels(toy, images, pixels=3, tries=9)
    np.testing.assert_array_equal(small.adversarial, large.adversarial)


def test_an_image_gets_the_same_search_whatever_else_is_attacked_with_it(
    toy, toy_multilabel, monkeypatch
):
    """Its own random stream: alone, with others, at another position - the same search (outputs
    image by image, so that only the random draws could differ; see the batch-size test)."""
    monkeypatch.setattr(pixel, "_forward", one_image_at_a_time)
    images = dark_images(6, seed=3)
    for model, target in ((toy, None), (toy, 2), (toy_multilabel, None)):
        settings = dict(
            pixels=2, target=target, population=12, generations=6, seed=5, progress=False
        )
        together = pixel.pixel_attack(model, images, **settings)
        for i in (0, 4):
            alone = pixel.pixel_attack(model, images[i : i + 1], **settings)
            reordered = pixel.pixel_attack(model, images[[5, i, 2]], **settings)
            for name in ("pixels", "success", "generations", "queries"):
                np.testing.assert_array_equal(getattr(alone, name)[0], getattr(together, name)[i])
                np.testing.assert_array_equal(
                    getattr(reordered, name)[1], getattr(together, name)[i]
                )


def test_image_streams_depend_on_the_seed_and_the_image_only():
    images = dark_images(3, seed=4)
    first = [g.random(4) for g in pixel.image_streams(images, seed=1)]
    again = [g.random(4) for g in pixel.image_streams(images[::-1], seed=1)][::-1]
    other = [g.random(4) for g in pixel.image_streams(images, seed=2)]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], other[0])
    with pytest.raises(ValueError, match="one per image"):
        pixel.random_population(pixel.image_streams(images), 2, 5, (SIDE, SIDE, 1), 1)


def test_default_batch_size_follows_the_image_size(monkeypatch):
    assert pixel.default_batch_size((28, 28, 1)) == 4096
    assert pixel.default_batch_size((64, 64, 3)) == 1365
    assert pixel.default_batch_size((224, 224, 3)) == 111
    assert pixel.default_batch_size((1024, 1024, 3)) == 32
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(
        inputs,
        keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)),
    )
    sizes, compiled = [], models.compiled_forward(model)
    spy = lambda x: sizes.append(len(x)) or compiled(x)  # noqa: E731
    monkeypatch.setattr(models, "compiled_forward", lambda m: spy)  # predict_proba's calls
    monkeypatch.setattr(pixel, "compiled_forward", lambda m: spy)  # the search's calls
    # 1600 candidate images
    pixel.random_pixels(model, np.zeros((400, 64, 64, 3), np.float32), tries=4)
    assert max(sizes) == 1365 and sum(sizes) == 400 + 1600 + 400  # clean, candidates, final


# --------------------------------------------------------------------------- toy models


@pytest.mark.slow
def test_toy_model_is_fooled_by_one_pixel_and_random_pixels_are_not(toy):
    images = dark_images(30)
    result = pixel.pixel_attack(
        toy, images, pixels=1, population=40, generations=20, seed=0, progress=False
    )
    assert np.all(result.original == 0)
    assert result.success.mean() >= 0.95
    assert set(result.final[result.success]) <= {1, 2}
    # one pixel changed, the one reported, at one of the two weak positions
    changed = np.abs(result.adversarial - images).reshape(len(images), -1) > 0
    assert changed.sum(axis=1).max() <= 1
    for image, row in zip(result.adversarial[result.success], result.pixels[result.success]):
        x, y, value = row[0]
        assert (int(y), int(x)) in {(3, 5), (6, 2)} and image[int(y), int(x), 0] == np.float32(
            value
        )
    np.testing.assert_array_equal(
        predict_proba(toy, result.adversarial).argmax(axis=1), result.final
    )
    control = pixel.random_pixels(toy, images, pixels=1, seed=0)
    assert control.success.mean() <= 0.2
    assert np.all(control.generations == 0) and np.all(control.queries == 1)


@pytest.mark.slow
def test_toy_model_targeted_attack_reaches_the_target(toy):
    images = dark_images(12, seed=1)
    result = pixel.pixel_attack(
        toy, images, pixels=1, target=2, population=40, generations=30, progress=False
    )
    assert result.success.mean() >= 0.9
    assert np.all(result.final[result.success] == 2)
    assert np.all(result.pixels[result.success, 0, :2] == [2, 6])  # x = column 2, y = row 6
    assert result.targeted and np.all(result.target == 2)
    assert result.final_confidence[result.success].min() > 0.5


@pytest.mark.slow
def test_early_stop_generations_queries_and_seed(toy):
    images = dark_images(6, seed=2)
    kwargs = dict(pixels=1, population=20, generations=15, seed=3, progress=False)
    first = pixel.pixel_attack(toy, images, **kwargs)
    again = pixel.pixel_attack(toy, images, **kwargs)
    np.testing.assert_array_equal(first.adversarial, again.adversarial)
    np.testing.assert_array_equal(first.generations, again.generations)
    np.testing.assert_array_equal(first.queries, 20 * (1 + first.generations))
    assert np.all(first.generations[~first.success] == 15)  # the others ran every generation
    assert first.success.any() and first.generations.min() < 15  # fooled images stopped early
    full = pixel.pixel_attack(toy, images, early_stop=None, **kwargs)
    assert np.all(full.generations == 15) and np.all(full.queries == 20 * 16)
    # Running on does not guarantee more successes: with three classes, pairwise selection
    # may trade a successful candidate for a fitter one (lower original-class confidence) that
    # is not successful.
    assert full.success.any()


@pytest.mark.slow
def test_result_shapes_colour_and_three_pixels():
    weights = np.zeros((SIDE * SIDE * 3, 2))
    weights[(4 * SIDE + 4) * 3 + 1, 1] = 20.0  # green channel of pixel (4, 4)
    model = dense_model(weights, [0.0, -10.0], "softmax", channels=3)
    images = np.full((5, SIDE, SIDE, 3), 0.05, np.float32)
    result = pixel.pixel_attack(
        model, images, pixels=3, population=30, generations=20, progress=False
    )
    assert result.adversarial.shape == images.shape and result.adversarial.dtype == np.float32
    assert result.pixels.shape == (5, 3, 5)
    assert result.original.shape == result.final.shape == result.success.shape == (5,)
    assert result.original_proba.shape == result.final_proba.shape == (5, 2)
    assert result.success.mean() >= 0.8
    assert np.all(result.original_confidence > 0.99)
    assert "3-pixel untargeted" in result.describe()


@pytest.mark.slow
def test_multilabel_untargeted_and_targeted_attacks(toy_multilabel):
    images = dark_images(20, seed=4)
    images[:10, 0:2, 0:2] = 0.5  # the first ten hold finding 0
    clean = (predict_proba(toy_multilabel, images) > 0.5).astype(int)
    np.testing.assert_array_equal(clean.sum(axis=0), [10, 0, 0])
    result = pixel.pixel_attack(
        toy_multilabel, images, pixels=1, population=40, generations=20, progress=False
    )
    assert result.multilabel and result.original.shape == (20, 3)
    np.testing.assert_array_equal(result.original, clean)
    assert result.success.mean() >= 0.8
    assert np.all(np.any(result.final[result.success] != clean[result.success], axis=1))
    target = pixel.pixel_attack(
        toy_multilabel,
        images[10:],
        pixels=1,
        target=[0, 0, 1],
        population=40,
        generations=30,
        progress=False,
    )
    assert target.success.mean() >= 0.8
    assert np.all(target.final[target.success] == [0, 0, 1])
    tables = pixel_tables.report(result, get_info("chest"), names=["A", "B", "C"])
    assert tables["findings per image"].sum() == result.success.sum()
    assert tables["success rate"].loc[["A", "Normal"], "images"].tolist() == [10, 10]


@pytest.mark.slow
def test_bad_arguments_raise_naming_the_parameter(toy, toy_multilabel):
    images = dark_images(2)
    attack = dict(population=4, generations=1, progress=False)
    for bad in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="pixels="):
            pixel.pixel_attack(toy, images, pixels=bad, **attack)
    with pytest.raises(ValueError, match="pixels="):
        pixel.random_pixels(toy, images, pixels=4)
    with pytest.raises(ValueError, match="population="):
        pixel.pixel_attack(toy, images, population=3, progress=False)
    with pytest.raises(ValueError, match="images has shape"):
        pixel.pixel_attack(toy, images[:, :4], **attack)
    with pytest.raises(ValueError, match="images has values"):
        pixel.pixel_attack(toy, images * 300, **attack)
    with pytest.raises(ValueError, match="images is empty"):
        pixel.pixel_attack(toy, images[:0], **attack)
    for bad in (3, -1, 1.5, [0, 1, 2]):
        with pytest.raises(ValueError, match="target"):
            pixel.pixel_attack(toy, images, target=bad, **attack)
    with pytest.raises(ValueError, match="single-label"):
        pixel.pixel_attack(toy, images, target=[[0, 1, 0], [0, 1, 0]], **attack)
    with pytest.raises(ValueError, match="multi-label"):
        pixel.pixel_attack(toy_multilabel, images, target=1, **attack)
    for bad in ([1, 0], [[1, 0, 0]] * 3, [2, 0, 0]):
        with pytest.raises(ValueError, match="target"):
            pixel.pixel_attack(toy_multilabel, images, target=bad, **attack)
    for name, bad in (("generations", -1), ("F", 0.0), ("early_stop", 2.0), ("batch_size", 0)):
        with pytest.raises(ValueError, match=f"{name}="):
            pixel.pixel_attack(toy, images, **{**attack, name: bad})
    with pytest.raises(ValueError, match="tries="):
        pixel.random_pixels(toy, images, tries=0)


# --------------------------------------------------------------------------- the smoke model


def boundary_images(model, test, n: int = 8, above: float = 0.6) -> np.ndarray:
    """The n test images of lowest clean confidence above ``above``: near, not on, the boundary."""
    confidence = predict_proba(model, test.images).max(axis=1)
    order = np.argsort(confidence)
    return test.images[order[confidence[order] > above][:n]]


@pytest.mark.slow
def test_smoke_model_more_pixels_fool_more_and_random_pixels_far_less(smoke_pneumonia_model):
    splits, trained = smoke_pneumonia_model
    images = boundary_images(trained.model, splits["test"])
    settings = dict(population=40, generations=10, seed=0, progress=False)
    one = pixel.pixel_attack(trained.model, images, pixels=1, **settings)
    three = pixel.pixel_attack(trained.model, images, pixels=3, **settings)
    control = pixel.random_pixels(trained.model, images, pixels=3, seed=0)
    assert three.success.sum() >= max(1, one.success.sum())
    assert three.success.sum() >= 3
    assert control.success.sum() <= three.success.sum() // 2
    changed = (np.abs(three.adversarial - images) > 0).reshape(len(images), -1).sum(axis=1)
    assert changed.max() <= 3


@pytest.mark.slow
def test_smoke_model_bad_inputs_raise(smoke_pneumonia_model):
    splits, trained = smoke_pneumonia_model
    model, images = trained.model, splits["test"].images[:2]
    attack = dict(population=4, generations=1, progress=False)
    with pytest.raises(ValueError, match="images has shape"):
        pixel.pixel_attack(model, images[..., 0], **attack)
    with pytest.raises(ValueError, match="images has values"):
        pixel.pixel_attack(model, images * 255, **attack)
    with pytest.raises(ValueError, match="target"):
        pixel.pixel_attack(model, images, target=2, **attack)
    with pytest.raises(ValueError, match="single-label"):
        pixel.pixel_attack(model, images, target=np.zeros((2, 14)), **attack)
    with pytest.raises(ValueError, match="pixels="):
        pixel.pixel_attack(model, images, pixels=5, **attack)
    with pytest.raises(ValueError, match="population="):
        pixel.pixel_attack(model, images, population=2, progress=False)


# ------------------------------------------------------------------ choosing images, cache, figures


def fake_dataset(key: str, images, labels):
    """A MedDataset of ``images`` with ``key``'s dataset description (the toy models' images are not
    its own)."""
    from helpers.data import MedDataset

    return MedDataset(get_info(key), "test", np.asarray(images, np.float32), np.asarray(labels))


def test_images_per_class_takes_only_correctly_classified_images(toy):
    images = dark_images(9, seed=3)
    images[[1, 4], 3, 5, 0] = 1.0  # the toy predicts class 1 for these two
    # image 1 right, image 3 and 6 wrong, image 4 wrong
    labels = np.array([0, 1, 0, 1, 0, 0, 1, 0, 0])
    # OCT: 4 classes; the toy has 3 outputs, class 3 absent
    dataset = fake_dataset("oct", images, labels)
    chosen = pixel.images_per_class(toy, dataset, per_class=3, classes=[0, 1], seed=0)
    assert set(chosen) == {0, 1}
    assert set(chosen[1]) == {1}
    assert len(chosen[0]) == 3 and set(chosen[0]) <= {0, 2, 5, 7, 8}
    again = pixel.images_per_class(toy, dataset, per_class=3, classes=[0, 1], seed=0)
    assert all(np.array_equal(chosen[c], again[c]) for c in chosen)
    with pytest.raises(ValueError, match="per_class"):
        pixel.images_per_class(toy, dataset, per_class=0)


def test_image_selection_rejects_a_model_of_the_other_kind(toy, toy_multilabel):
    single = fake_dataset("oct", dark_images(4), np.zeros(4, int))
    with pytest.raises(ValueError, match="model is multi-label"):
        pixel.images_per_class(toy_multilabel, single, per_class=1)
    multi = fake_dataset("chest", dark_images(4), np.zeros((4, 14), np.uint8))
    with pytest.raises(ValueError, match="model is single-label"):
        pixel.images_per_label_set(toy, multi, np.zeros((1, 14), np.uint8), per_set=1)


def test_frequent_label_sets_by_hand():
    labels = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0]])
    top = pixel.frequent_label_sets(labels, count=2)
    np.testing.assert_array_equal(top, [[0, 0, 0], [1, 0, 0]])
    assert len(pixel.frequent_label_sets(labels, count=10)) == 4
    with pytest.raises(ValueError, match="labels"):
        pixel.frequent_label_sets(np.zeros(3))


def test_images_per_label_set_exact_and_by_true_set(toy_multilabel):
    images = dark_images(6, seed=4)
    images[0, 0:2, 0:2, 0] = 1.0  # the region model predicts finding 0 for image 0
    labels = np.zeros((6, 14), np.uint8)
    labels[[0, 1], 0] = 1  # images 0 and 1 truly show finding 0; the model misses image 1
    dataset = fake_dataset("chest", images, labels)
    model = dense_model(
        np.pad(region_model().layers[-1].get_weights()[0], ((0, 0), (0, 11))),
        [-10.0] * 14,
        "sigmoid",
    )
    sets = np.zeros((2, 14), np.uint8)
    sets[1, 0] = 1
    exact = pixel.images_per_label_set(model, dataset, sets, per_set=5)
    assert list(exact) == ["Normal", "ATEL"]
    assert set(exact["Normal"]) == {2, 3, 4, 5} and set(exact["ATEL"]) == {0}
    loose = pixel.images_per_label_set(model, dataset, sets, per_set=5, correct_only=False)
    assert set(loose["ATEL"]) == {0, 1}
    with pytest.raises(ValueError, match="single-label"):
        pixel.images_per_label_set(model, fake_dataset("pneumonia", images, np.zeros(6)), sets, 1)


def test_cached_attack_reloads_the_same_result_and_never_overwrites(toy, tmp_path):
    images = dark_images(4, seed=5)
    settings = dict(pixels=1, population=8, generations=3, seed=0, progress=False, cache=tmp_path)
    first = pixel.cached_attack(toy, "toy-model", images, **settings)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "pixel1-untargeted-pop8-gen3" in files[0].name
    again = pixel.cached_attack(toy, "toy-model", images, **settings)
    for name in ("adversarial", "success", "original", "final", "pixels", "queries", "final_proba"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert again.seconds == first.seconds and again.target is None and again.method == first.method
    pixel.cached_attack(toy, "toy-model", images, **{**settings, "seed": 1})
    pixel.cached_attack(toy, "toy-model", images, **{**settings, "target": 2})
    assert len(list(tmp_path.glob("*.npz"))) == 3
    changed = pixel.PixelAttackResult(**{**first.__dict__, "success": ~first.success})
    assert pixel.save_result(changed, files[0]) is False  # kept as it was
    np.testing.assert_array_equal(pixel.load_result(files[0]).success, first.success)


def test_two_processes_attacking_at_once_both_finish_with_the_first_saved_result(
    toy, tmp_path, monkeypatch
):
    import threading

    images = dark_images(3, seed=6)
    settings = dict(pixels=1, population=8, generations=2, seed=0, progress=False, cache=tmp_path)
    both_computed = threading.Barrier(2, timeout=60)
    real_attack = pixel.pixel_attack

    def attack_then_wait(*args, **kwargs):  # both compute before either saves: a real race
        result = real_attack(*args, **kwargs)
        both_computed.wait()
        return result

    monkeypatch.setattr(pixel, "pixel_attack", attack_then_wait)
    results, errors = [None, None], []

    def writer(i):
        try:
            results[i] = pixel.cached_attack(toy, "toy-model", images, **settings)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and all(r is not None for r in results)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    saved = pixel.load_result(files[0])
    for result in results:
        np.testing.assert_array_equal(result.pixels, saved.pixels)


def test_nan_or_infinite_images_are_refused(toy):
    images = dark_images(3)
    for bad in (np.nan, np.inf):
        broken = images.copy()
        broken[1, 2, 3, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite values .1 of 3 images"):
            pixel.pixel_attack(toy, broken, generations=1, progress=False)
        with pytest.raises(ValueError, match="NaN or infinite"):
            pixel.random_pixels(toy, broken)


def test_cached_attack_of_a_changed_model_is_computed_anew(tmp_path):
    images = dark_images(4, seed=5)
    settings = dict(pixels=1, population=8, generations=2, seed=0, progress=False, cache=tmp_path)
    model = one_pixel_model()
    pixel.cached_attack(model, "toy-model", images, **settings)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, bias + 1.0])  # trained again under the same key
    pixel.cached_attack(model, "toy-model", images, **settings)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_prediction_text_single_and_multilabel(toy, toy_multilabel):
    images = dark_images(2, seed=6)
    images[1, 3, 5, 0] = 1.0
    result = pixel.random_pixels(toy, images, pixels=1, tries=1, seed=0)
    assert pixel.prediction_text(result, 1, ["a", "b", "c"], adversarial=False).startswith("b (")
    multi = pixel.random_pixels(toy_multilabel, dark_images(1), pixels=1, tries=1, seed=0)
    assert pixel.prediction_text(multi, 0, ["x", "y", "z"], adversarial=False) == "Normal"


def test_pixel_examples_circles_every_changed_pixel():
    import matplotlib

    matplotlib.use("Agg")
    from helpers import plots

    clean = np.zeros((2, 8, 8, 1), np.float32)
    pixels = np.array([[[1, 2, 1.0], [5, 6, 1.0]], [[0, 0, 1.0], [7, 7, 0.5]]])
    adversarial = pixel.apply_pixels(clean, pixels[:, None])[:, 0]
    fig = plots.pixel_examples(
        clean, adversarial, pixels, ["a (90%)", "a (80%)"], ["b (60%)", "a (70%)"], "examples"
    )
    circles = [patch for ax in fig.axes for patch in ax.patches]
    assert len(circles) == 4
    assert sorted(tuple(c.center) for c in circles) == sorted(
        map(tuple, pixels[..., :2].reshape(-1, 2))
    )
    assert fig.axes[2].get_xlabel() == "b (60%)" and fig._suptitle.get_text() == "examples"
    with pytest.raises(ValueError, match="one text per image"):
        plots.pixel_examples(clean, adversarial, pixels, ["a"], ["b", "c"], "x")


def test_the_random_control_is_the_searchs_own_starting_population(toy):
    images = dark_images(12, seed=8)
    control = pixel.random_pixels(toy, images, pixels=1, tries=15, seed=4)
    search = pixel.pixel_attack(
        toy, images, pixels=1, population=15, generations=3, seed=4, progress=False
    )
    assert control.success.any() and np.all(search.success[control.success])
    np.testing.assert_array_equal(search.generations[control.success], 0)  # stopped at its start


def test_pick_successes_takes_the_k_with_most_wins_and_alternates_attacks():
    from types import SimpleNamespace

    def result(*success):
        return SimpleNamespace(success=np.array(success, bool))

    results = {
        ("a", 1): result(1, 0, 0),
        ("b", 1): result(0, 0, 0),
        ("a", 3): result(1, 1, 1),
        ("b", 3): result(0, 1, 0, 1),
    }
    found = pixel.pick_successes(results, (1, 3), limit=4)
    assert (found.k, found.wins, found.attempts) == (3, 5, 7)
    # rank 0 of a, rank 0 of b, rank 1 of a, rank 1 of b
    assert [(a, i) for a, _, i in found.picked] == [("a", 0), ("b", 1), ("a", 1), ("b", 3)]
    tie = pixel.pick_successes({("a", 1): result(1), ("a", 2): result(1)}, (1, 2))
    assert tie.k == 1  # the smaller k on a tie
    none = pixel.pick_successes({("a", 1): result(0, 0)}, (1,))
    assert (none.wins, none.attempts, none.picked) == (0, 2, [])
