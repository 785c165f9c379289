import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_log_error

from common.metrics import accuracy, confusion_matrix, per_class_report, rmsle, top_k_accuracy


# --------------------------------------------------------------------------- #
# rmsle
# --------------------------------------------------------------------------- #
def test_rmsle_perfect_prediction_is_zero():
    assert rmsle([0, 1], [0, 1]) == 0.0


def test_rmsle_known_value():
    # log1p(e - 1) - log1p(0) = 1 for one of two samples -> sqrt(1 / 2)
    assert rmsle([0, 0], [math.e - 1, 0]) == pytest.approx(math.sqrt(0.5))


def test_rmsle_matches_sklearn_and_accepts_array_likes():
    rng = np.random.default_rng(0)
    t, p = rng.uniform(0, 500, 100), rng.uniform(0, 500, 100)
    expected = math.sqrt(mean_squared_log_error(t, p))
    assert rmsle(t, p) == pytest.approx(expected)
    assert rmsle(pd.Series(t), list(p)) == pytest.approx(expected)


def test_rmsle_is_asymmetric_like_kaggle():
    # under-predicting by the same absolute amount costs more on the log scale
    assert rmsle([100], [50]) > rmsle([100], [150])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([1, 2, 3], [1, 2], r"y_true has 3 values, y_pred has 2"),
        ([], [], r"empty"),
        ([1, float("nan"), float("nan")], [1, 2, 3], r"y_true contains 2 NaN/inf"),
        ([1, 2, 3], [1, float("inf"), float("nan")], r"y_pred contains 2 NaN/inf"),
        ([1, 2, 3], [1, None, 3], r"y_pred contains 1 NaN/inf"),
        ([1, -2, 3], [1, 2, 3], r"y_true contains 1 negative value\(s\) \(min -2\)"),
        ([1, 2, 3], [-0.5, 2, -1.5], r"y_pred contains 2 negative value\(s\) \(min -1.5\)"),
        ([[1, 2]], [[1, 2]], r"y_true must be 1-D"),
        (["a", "b"], [1, 2], r"y_true must be numeric"),
    ],
)
def test_rmsle_rejects_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        rmsle(y_true, y_pred)


# --------------------------------------------------------------------------- #
# accuracy / top-k
# --------------------------------------------------------------------------- #
def test_accuracy():
    assert accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 0.75
    assert accuracy(pd.Series(["bike", "moto"]), np.array(["bike", "bike"])) == 0.5


def test_top_k_accuracy():
    scores = np.array(
        [
            [0.1, 0.6, 0.3],  # true 2 is 2nd best
            [0.7, 0.2, 0.1],  # true 0 is best
            [0.5, 0.4, 0.1],  # true 2 is worst
        ]
    )
    y = [2, 0, 2]
    assert top_k_accuracy(y, scores, k=1) == pytest.approx(1 / 3)
    assert top_k_accuracy(y, scores, k=2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, scores, k=3) == 1.0


def test_top_k_accuracy_two_classes_and_absent_labels():
    # the cases where sklearn's top_k_accuracy_score behaves differently
    scores = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert top_k_accuracy([0, 0], scores, k=1) == 1.0


@pytest.mark.parametrize(
    ("y_true", "scores", "k", "match"),
    [
        ([0, 1], np.zeros((2, 3)), 4, r"k must be between 1 and the number of classes \(3\), got 4"),
        ([0, 1], np.zeros((2, 3)), 0, r"k must be between 1"),
        ([0, 1, 2], np.zeros((2, 3)), 1, r"y_true has 3 values, scores has 2 rows"),
        ([0, 1], np.zeros(2), 1, r"scores must be 2-D"),
        ([], np.zeros((0, 3)), 1, r"empty"),
        ([0, float("nan")], np.zeros((2, 3)), 1, r"y_true contains 1 NaN"),
        ([0, 1], [[0, np.nan, 0], [0, 0, 0]], 1, r"scores contains 1 NaN"),
        ([0, 5], np.zeros((2, 3)), 1, r"class index 5 but scores has only 3 columns"),
    ],
)
def test_top_k_accuracy_rejects_bad_input(y_true, scores, k, match):
    with pytest.raises(ValueError, match=match):
        top_k_accuracy(y_true, scores, k=k)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], r"y_true has 2 values, y_pred has 1"),
        ([], [], r"empty"),
        ([0, None], [0, 1], r"y_true contains 1 NaN/missing"),
        ([0, 1], [np.nan, np.nan], r"y_pred contains 2 NaN/missing"),
    ],
)
@pytest.mark.parametrize("metric", [accuracy, confusion_matrix, per_class_report])
def test_classification_metrics_share_validation(metric, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metric(y_true, y_pred)


# --------------------------------------------------------------------------- #
# confusion matrix / per-class report
# --------------------------------------------------------------------------- #
def test_confusion_matrix_rows_are_true_columns_predicted():
    cm = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_confusion_matrix_keeps_absent_classes():
    cm = confusion_matrix([0, 1], [0, 1], num_classes=4)
    assert cm.shape == (4, 4)
    assert cm.sum() == 2 and cm[3].sum() == 0


def test_confusion_matrix_accepts_integral_floats():
    np.testing.assert_array_equal(confusion_matrix(pd.Series([0.0, 1.0]), [1, 1]), [[0, 1], [0, 1]])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "match"),
    [
        ([0, 3], [0, 1], {"num_classes": 3}, r"labels go up to 3 but num_classes allows only 3 classes"),
        ([0, 1], [0, 1], {"num_classes": 0}, r"num_classes must give at least 1 class, got 0"),
        ([0, -1], [0, 1], {}, r"y_true has negative class index -1"),
        ([0, 1], [0.5, 1], {}, r"y_pred must hold integer class indices"),
    ],
)
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred, **kwargs)


def test_per_class_report_values():
    report = per_class_report([0, 0, 1, 1], [0, 1, 1, 1], class_names=["bicycle", "motorcycle", "scooter"])
    assert list(report.index) == ["bicycle", "motorcycle", "scooter"]
    assert list(report.columns) == ["precision", "recall", "f1", "support", "accuracy"]
    bike, moto = report.loc["bicycle"], report.loc["motorcycle"]
    assert (bike.precision, bike.recall, bike.f1) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (moto.precision, moto.recall, moto.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert report["accuracy"].equals(report["recall"])


def test_per_class_report_keeps_unsupported_class_with_nan_metrics():
    report = per_class_report([0, 0, 1, 1], [0, 1, 1, 1], class_names=["a", "b", "c"])
    assert report.loc["c", "support"] == 0
    assert np.isnan(report.loc["c", "recall"])


def test_per_class_report_without_names_uses_indices():
    report = per_class_report([0, 2], [0, 2])
    assert list(report.index) == [0, 1, 2]
    assert list(report["support"]) == [1, 0, 1]


def test_per_class_report_rejects_labels_beyond_class_names():
    with pytest.raises(ValueError, match=r"labels go up to 2 but class_names allows only 2 classes"):
        per_class_report([0, 2], [0, 1], class_names=["a", "b"])
