"""Tests of helpers.metrics on small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import metrics

Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


# --------------------------------------------------------------------------- accuracy


def test_accuracy_from_labels():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)  # 3 of 5 right


def test_accuracy_from_probabilities_and_one_hot():
    one_hot_true = np.eye(3)[Y_TRUE]
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]]
    )
    assert metrics.accuracy(one_hot_true, probs) == pytest.approx(0.6)


def test_accuracy_accepts_medmnist_label_column():
    assert metrics.accuracy(np.array(Y_TRUE)[:, None], Y_PRED) == pytest.approx(0.6)


def test_accuracy_returns_python_float():
    assert isinstance(metrics.accuracy([1, 1], [1, 0]), float)


# --------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_row_normalised():
    expected = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    np.testing.assert_allclose(metrics.confusion_matrix(Y_TRUE, Y_PRED, 3), expected)


def test_confusion_matrix_counts():
    expected = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3, normalize=None)
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == float


def test_confusion_matrix_empty_class_row_stays_zero():
    cm = metrics.confusion_matrix([0, 0, 2], [0, 2, 2], 3)
    np.testing.assert_allclose(cm, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- adversarial rates


def test_fooling_rate_one_of_four_changed():
    assert metrics.fooling_rate([0, 1, 2, 1], [0, 1, 0, 1]) == pytest.approx(0.25)


def test_fooling_rate_compares_predictions_not_truth():
    # clean predictions are all wrong, but the attack changes none of them
    assert metrics.fooling_rate([1, 1, 1], [1, 1, 1]) == 0.0


def test_targeted_success_rate_and_baseline():
    clean = [0, 1, 2, 2, 0]
    adv = [2, 2, 2, 1, 2]
    assert metrics.targeted_success_rate(adv, target=2) == pytest.approx(0.8)  # 4 of 5
    assert metrics.targeted_success_baseline(clean, target=2) == pytest.approx(0.4)  # 2 of 5


def test_targeted_success_rate_per_image_targets_and_scores():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])  # predictions 1, 0, 1
    assert metrics.targeted_success_rate(probs, target=[1, 1, 0]) == pytest.approx(1 / 3)


def test_dominant_classes_with_names():
    pred = [1, 1, 1, 0, 2, 2]
    assert metrics.dominant_classes(pred, 3, ["normal", "benign", "malignant"]) == [
        ("benign", pytest.approx(0.5)),
        ("malignant", pytest.approx(1 / 3)),
    ]


def test_dominant_classes_without_names_skips_unpredicted():
    assert metrics.dominant_classes([3, 3, 3, 3], 4, top=2) == [(3, 1.0)]


# --------------------------------------------------------------------------- per-class table


def test_per_class_table_values():
    table = metrics.per_class_table(
        Y_TRUE, Y_PRED, adv_pred=[1, 1, 1, 0, 0], class_names=["a", "b", "c"]
    )
    assert list(table.index) == ["a", "b", "c"]
    assert list(table["n"]) == [2, 2, 1]
    np.testing.assert_allclose(table["clean_accuracy"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(table["adversarial_accuracy"], [0.0, 0.5, 0.0])
    np.testing.assert_allclose(table["fooling_rate"], [0.5, 0.5, 0.0])


def test_per_class_table_without_attack_and_empty_class():
    table = metrics.per_class_table([0, 0], [0, 1], n_classes=3)
    assert list(table.columns) == ["n", "clean_accuracy"]
    assert list(table["n"]) == [2, 0, 0]
    assert math.isnan(table.loc["1", "clean_accuracy"])


# --------------------------------------------------------------------------- multi-label


def test_roc_auc_with_tie():
    # positives score 0.4 and 0.8, negatives 0.1 and 0.4.
    # pairs (pos, neg): (.4,.1)=1, (.4,.4)=0.5 tie, (.8,.1)=1, (.8,.4)=1 -> 3.5 / 4
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_roc_auc_perfect_inverted_and_undefined():
    assert metrics.roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert metrics.roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_multilabel_scores_by_hand():
    y_true = [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    probs = [[0.9, 0.2, 0.1], [0.4, 0.6, 0.3], [0.3, 0.7, 0.2]]
    # predicted (> 0.5): [1,0,0], [0,1,0], [0,1,0] -> rows right: 2 of 3; entries right: 8 of 9
    # AUC finding 0: pos .9,.3 vs neg .4 -> (1 + 0) / 2 = 0.5;
    # finding 1: 1.0; finding 2: no positives
    scores = metrics.multilabel_scores(y_true, probs)
    assert scores["subset_accuracy"] == pytest.approx(2 / 3)
    assert scores["label_accuracy"] == pytest.approx(8 / 9)
    assert scores["mean_auc"] == pytest.approx(0.75)
    assert scores["n_auc_labels"] == 2
    assert math.isnan(scores["auc_per_label"][2])


def test_multilabel_threshold_is_strict():
    scores = metrics.multilabel_scores([[0], [1]], [[0.5], [0.6]], threshold=0.5)
    assert scores["label_accuracy"] == 1.0


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, parameter",
    [
        (lambda: metrics.accuracy([0, 1, 1], [0, 1]), "y_pred"),
        (lambda: metrics.accuracy([], []), "y_true"),
        (lambda: metrics.accuracy([0, 1.5], [0, 1]), "y_true"),
        (lambda: metrics.accuracy(np.zeros((2, 2, 2)), [0, 1]), "y_true"),
        (lambda: metrics.confusion_matrix([0, 3], [0, 1], 3), "y_true"),
        (lambda: metrics.confusion_matrix([0, 1], [0, -1], 3), "y_pred"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], 0), "n_classes"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], 2, normalize="all"), "normalize"),
        (lambda: metrics.confusion_matrix([0, 1], np.eye(3)[:2], 2), "y_pred"),
        (lambda: metrics.fooling_rate([0, 1], [0, 1, 1]), "adv_pred"),
        (lambda: metrics.fooling_rate([], [0]), "clean_pred"),
        (lambda: metrics.targeted_success_rate([0, 1], target=3, n_classes=3), "target"),
        (lambda: metrics.targeted_success_rate([0, 1], target=-1), "target"),
        (lambda: metrics.targeted_success_rate(np.eye(2), target=2), "target"),
        (lambda: metrics.targeted_success_rate([0, 1], target=[0, 1, 1]), "target"),
        (lambda: metrics.targeted_success_baseline([0, 1], target=5, n_classes=2), "target"),
        (lambda: metrics.dominant_classes([0, 1], 2, class_names=["a"]), "class_names"),
        (lambda: metrics.dominant_classes([0, 1], 2, top=0), "top"),
        (lambda: metrics.dominant_classes([0, 2], 2), "pred"),
        (lambda: metrics.per_class_table([0, 1], [0, 1], class_names=["a"]), "y_true"),
        (lambda: metrics.per_class_table([0, 1], [0, 1], adv_pred=[0]), "adv_pred"),
        (lambda: metrics.multilabel_scores([0, 1], [0.2, 0.7]), "y_true"),
        (lambda: metrics.multilabel_scores([[0, 1]], [0.2, 0.7]), "probs"),
        (lambda: metrics.multilabel_scores([[0, 1]], [[0.2, 0.7, 0.1]]), "probs"),
        (lambda: metrics.multilabel_scores([[0, 2]], [[0.2, 0.7]]), "y_true"),
        (lambda: metrics.multilabel_scores([[0, 1]], [[0.2, np.nan]]), "probs"),
        (lambda: metrics.multilabel_scores([[0, 1]], [[0.2, 0.7]], threshold=2), "threshold"),
        (lambda: metrics.roc_auc([0, 1], [0.5]), "scores"),
    ],
)
def test_bad_input_names_parameter(call, parameter):
    with pytest.raises(ValueError, match=parameter):
        call()


def test_error_message_says_what_is_expected():
    with pytest.raises(ValueError, match=r"expected labels in \[0, 3\)"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
