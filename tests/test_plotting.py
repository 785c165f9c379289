import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from common.plotting import (
    accuracy_bars,
    bar_chart,
    confidence_histogram,
    confidence_over_time,
    confusion_matrix_plot,
    image_grid,
    loss_curves,
    reliability_diagram,
    score_per_stage,
)


def _assert_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- #
# score_per_stage
# --------------------------------------------------------------------------- #
STAGES = ["initial", "new features", "hpo"]


def test_score_per_stage_single_series_annotates_and_marks_best():
    fig = score_per_stage(STAGES, [1.80, 0.62, 0.51], title="Kaggle score", ylabel="RMSLE")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.lines) == 1
    assert [t.get_text() for t in ax.texts] == ["1.800", "0.620", "0.510"]
    (best,) = ax.collections
    np.testing.assert_allclose(best.get_offsets(), [[2, 0.51]])
    assert [t.get_text() for t in ax.get_xticklabels()] == STAGES
    plt.close(fig)


def test_score_per_stage_skips_none_and_picks_max_when_higher_is_better():
    scores = {"validation": [0.5, None, 0.9], "kaggle": [None, 0.7, np.nan]}
    fig = score_per_stage(STAGES, scores, title="t", ylabel="score", lower_is_better=False)
    ax = fig.axes[0]
    validation, kaggle = ax.lines
    np.testing.assert_array_equal(validation.get_xdata(), [0, 2])
    np.testing.assert_array_equal(kaggle.get_xdata(), [1])
    assert len(ax.texts) == 3
    best_points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert best_points == [(2, 0.9), (1, 0.7)]
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"validation", "kaggle"}
    plt.close(fig)


def test_score_per_stage_rejects_bad_input():
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match=r"series 'a' has 2 values but stages has 3"):
        score_per_stage(STAGES, {"a": [1, 2]}, title="t", ylabel="y")
    with pytest.raises(ValueError, match="no values"):
        score_per_stage(STAGES, [None, None, None], title="t", ylabel="y")
    assert plt.get_fignums() == open_before  # no figure leaked by a failed call


def test_save_to_creates_parent_dirs_and_writes_png(tmp_path):
    target = tmp_path / "reports" / "nested" / "scores.png"
    fig = score_per_stage(STAGES, [3, 2, 1], title="t", ylabel="y", save_to=target)
    _assert_png(target)
    plt.close(fig)


# --------------------------------------------------------------------------- #
# loss_curves
# --------------------------------------------------------------------------- #
def test_loss_curves_plots_only_loss_keys():
    history = {"train_loss": [1.0, 0.6, 0.4], "valid_loss": [1.1, 0.8, 0.7], "epoch_time": [3, 3, 3]}
    fig = loss_curves(history)
    (ax,) = fig.axes
    assert sorted(line.get_label() for line in ax.lines) == ["train_loss", "valid_loss"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    plt.close(fig)


def test_loss_curves_with_accuracy_panel_and_log_lr_from_dataframe(tmp_path):
    history = pd.DataFrame(
        {"train_loss": [1.0, 0.5, 0.3], "valid_loss": [1.0, 0.7, 0.6], "valid_accuracy": [0.5, 0.8, 0.9]}
    )
    lr = np.geomspace(1e-2, 1e-5, 30)  # per batch, spans 1000x
    fig = loss_curves(history, lr=lr, title="MNIST", save_to=tmp_path / "loss.png")
    loss_ax, acc_ax, lr_ax = fig.axes  # twin axis is added last
    assert [line.get_label() for line in acc_ax.lines] == ["valid_accuracy"]
    assert lr_ax.get_yscale() == "log"
    (lr_line,) = lr_ax.lines
    assert lr_line.get_xdata()[0] == 1 and lr_line.get_xdata()[-1] == 3
    assert "learning rate" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    _assert_png(tmp_path / "loss.png")
    plt.close(fig)


def test_loss_curves_linear_lr_when_range_is_small():
    fig = loss_curves({"loss": [1, 0.5]}, lr=[1e-3, 5e-4])
    assert fig.axes[-1].get_yscale() == "linear"
    plt.close(fig)


def test_loss_curves_requires_a_loss_key():
    with pytest.raises(ValueError, match="no key containing 'loss'"):
        loss_curves({"accuracy": [0.1, 0.2]})


# --------------------------------------------------------------------------- #
# confusion_matrix_plot
# --------------------------------------------------------------------------- #
def test_confusion_matrix_plot_normalised_cells(tmp_path):
    cm = np.array([[3, 1], [0, 0]])
    fig = confusion_matrix_plot(cm, ["bicycle", "motorcycle"], save_to=tmp_path / "cm.png")
    ax, _colorbar = fig.axes
    assert [t.get_text() for t in ax.texts] == ["0.75", "0.25", "0.00", "0.00"]  # empty row stays 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bicycle", "motorcycle"]
    assert ax.get_xticklabels()[0].get_rotation() == 45
    _assert_png(tmp_path / "cm.png")
    plt.close(fig)


def test_confusion_matrix_plot_counts():
    fig = confusion_matrix_plot([[5, 2], [1, 7]], ["a", "b"], normalize=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ["5", "2", "1", "7"]
    plt.close(fig)


def test_confusion_matrix_plot_50_classes_grows_and_drops_cell_text(tmp_path):
    names = [f"{i:02d}.Some_Long_Landmark_Name" for i in range(50)]
    cm = np.random.default_rng(0).integers(0, 20, (50, 50))
    small = confusion_matrix_plot(np.eye(3), ["a", "b", "c"])
    fig = confusion_matrix_plot(cm, names, save_to=tmp_path / "cm50.png")
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    assert len(ax.get_yticklabels()) == 50
    assert ax.get_xticklabels()[0].get_rotation() == 90
    assert fig.get_figwidth() > 2 * small.get_figwidth()
    _assert_png(tmp_path / "cm50.png")
    plt.close(fig)
    plt.close(small)


def test_confusion_matrix_plot_shape_must_match_names():
    with pytest.raises(ValueError, match=r"cm must be 3 x 3 .* got shape \(2, 2\)"):
        confusion_matrix_plot(np.eye(2), ["a", "b", "c"])


# --------------------------------------------------------------------------- #
# image_grid
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("image", "shown_shape"),
    [
        (np.zeros((28, 28), dtype=np.uint8), (28, 28)),  # grayscale
        (np.zeros((32, 24, 3)), (32, 24, 3)),  # HxWx3 float
        (np.zeros((32, 24, 4), dtype=np.uint8), (32, 24, 4)),  # RGBA
        (np.zeros((1, 28, 28)), (28, 28)),  # torch-like 1xHxW
        (np.zeros((3, 32, 24)), (32, 24, 3)),  # torch-like 3xHxW
        (np.zeros((28, 28, 1)), (28, 28)),  # HxWx1
    ],
)
def test_image_grid_accepts_layouts(image, shown_shape):
    fig = image_grid([image])
    (ax,) = fig.axes
    assert ax.images[0].get_array().shape == shown_shape
    plt.close(fig)


def test_image_grid_grayscale_uses_fixed_scale():
    fig = image_grid([np.full((4, 4), 0.2), np.full((4, 4), 10, dtype=np.uint8)])
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    assert fig.axes[1].images[0].get_clim() == (0, 255)
    plt.close(fig)


def test_image_grid_batch_with_labels_and_layout(tmp_path):
    batch = np.random.default_rng(0).random((7, 3, 16, 16))  # like a torch batch N x C x H x W
    fig = image_grid(batch, labels=list(range(7)), ncols=3, title="batch", save_to=tmp_path / "g.png")
    assert len(fig.axes) == 7  # unused cells of the 3 x 3 grid are removed
    assert [ax.get_title() for ax in fig.axes] == [str(i) for i in range(7)]
    assert fig.axes[6].get_subplotspec().rowspan.start == 2
    _assert_png(tmp_path / "g.png")
    plt.close(fig)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        ([], None, "images is empty"),
        ([np.zeros((4, 4))], ["a", "b"], "labels has 2 values but images has 1"),
        ([np.zeros((4, 4, 2))], None, r"unsupported image shape \(4, 4, 2\)"),
    ],
)
def test_image_grid_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        image_grid(images, labels)


# --------------------------------------------------------------------------- #
# monitoring figures
# --------------------------------------------------------------------------- #
TIMES = pd.date_range("2024-01-01", periods=6, freq="h")
CONF = [0.95, 0.4, 0.88, 0.99, 0.7, 0.5]


def test_confidence_over_time_colours_by_label_and_draws_threshold(tmp_path):
    labels = ["bicycle", "motorcycle", "bicycle", "bicycle", "motorcycle", "bicycle"]
    fig = confidence_over_time(TIMES, CONF, threshold=0.8, labels=labels, save_to=tmp_path / "t.png")
    (ax,) = fig.axes
    assert [len(c.get_offsets()) for c in ax.collections] == [4, 2]
    (threshold_line,) = ax.lines
    assert threshold_line.get_ydata()[0] == 0.8
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["bicycle", "motorcycle"]
    _assert_png(tmp_path / "t.png")
    plt.close(fig)


def test_confidence_over_time_plain_accepts_strings():
    fig = confidence_over_time([str(t) for t in TIMES], CONF)
    (ax,) = fig.axes
    assert len(ax.collections) == 1 and len(ax.lines) == 0 and ax.get_legend() is None
    plt.close(fig)


def test_confidence_over_time_rejects_bad_input():
    with pytest.raises(ValueError, match="confidences has 2 values but timestamps has 6"):
        confidence_over_time(TIMES, [0.1, 0.2])
    with pytest.raises(ValueError, match="labels has 1 values but timestamps has 6"):
        confidence_over_time(TIMES, CONF, labels=["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]; 2 value"):
        confidence_over_time(TIMES[:3], [0.5, 1.5, np.nan])


def test_confidence_histogram_counts_below_and_above(tmp_path):
    fig = confidence_histogram(CONF, threshold=0.8, bins=10, save_to=tmp_path / "h.png")
    (ax,) = fig.axes
    assert len(ax.patches) == 10
    assert sum(p.get_height() for p in ax.patches) == len(CONF)
    assert [t.get_text() for t in ax.texts] == ["3 below / 3 at or above 0.8"]
    assert ax.lines[0].get_xdata()[0] == 0.8
    _assert_png(tmp_path / "h.png")
    plt.close(fig)


def test_confidence_histogram_without_threshold():
    fig = confidence_histogram(CONF)
    ax = fig.axes[0]
    assert len(ax.patches) == 20 and len(ax.texts) == 0 and len(ax.lines) == 0
    plt.close(fig)


# --------------------------------------------------------------------------- #
# bar_chart
# --------------------------------------------------------------------------- #
def test_bar_chart_first_name_on_top_with_values(tmp_path):
    fig = bar_chart(["cat", "dog", "fox"], [0.7, 0.2, 0.1], xlabel="probability", save_to=tmp_path / "b.png")
    (ax,) = fig.axes
    assert [p.get_width() for p in ax.patches] == [0.7, 0.2, 0.1]
    assert ax.yaxis_inverted()
    assert [t.get_text() for t in ax.texts] == ["0.700", "0.200", "0.100"]
    _assert_png(tmp_path / "b.png")
    plt.close(fig)


def test_bar_chart_length_mismatch():
    with pytest.raises(ValueError, match="values has 1 values but names has 2"):
        bar_chart(["a", "b"], [1.0])


# --------------------------------------------------------------------------- #
# accuracy_bars: any profile's numbers, in a figure of a sane size
# --------------------------------------------------------------------------- #
MODELS = ["mlp_baseline", "mlp_improved", "mlp_bn_onecycle", "mlp_bn_onecycle_aug", "cnn"]


@pytest.mark.parametrize("accuracies, zoomed", [
    ([0.32, 0.41, 0.55, 0.60, 0.67], False),        # a tiny run on the stand-in (the 4224 x 333 px sliver)
    ([0.9725, 0.9757, 0.9841, 0.9868, 0.9962], True),  # a full run on MNIST
    ([0.11, 0.10, 0.12, 0.09, 0.10], True),         # chance level
    ([1.0, 1.0, 1.0, 1.0, 1.0], True),
    ([0.0, 0.0, 0.0, 0.0, 0.0], False),
])
def test_accuracy_bars_keep_every_bar_and_label_inside_a_sane_figure(accuracies, zoomed, tmp_path):
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained_layout's "axes sizes collapsed" is a UserWarning
        fig = accuracy_bars(dict(zip(MODELS, accuracies)), title="Test accuracy per model", xlabel="test accuracy",
                            save_to=tmp_path / "a.png")
        fig.canvas.draw()
    (ax,) = fig.axes
    left, right = ax.get_xlim()
    for bar, accuracy in zip(ax.patches, accuracies):
        assert left <= bar.get_x() and bar.get_x() + bar.get_width() == pytest.approx(accuracy * 100)
        assert accuracy * 100 <= right
    assert (left > 0) == zoomed and ("axis starts at" in ax.get_xlabel()) == zoomed
    assert [t.get_text() for t in ax.texts] == [f"{a * 100:.2f}" for a in accuracies]
    axes_box = ax.get_window_extent()
    for text in ax.texts:  # the value labels lie inside the axes, not off to the side of the figure
        box = text.get_window_extent()
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, text.get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == MODELS
    width, height = Image.open(tmp_path / "a.png").size
    assert 1 / 4 <= width / height <= 4 and max(width, height) < 3000, (width, height)
    plt.close(fig)


def test_accuracy_bars_reject_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        accuracy_bars({})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        accuracy_bars({"a": 97.5})  # a percentage, not an accuracy
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        accuracy_bars({"a": float("nan")})


def test_loss_curves_tick_whole_epochs_only():
    """A one- or three-epoch run (the tiny profile, a short fine-tuning) shows epoch 1, 2, 3, not 0.96 or 1.5."""
    for epochs in (1, 3):
        fig = loss_curves({"train loss": [0.5] * epochs, "valid accuracy": [0.9] * epochs})
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (epochs, ticks)
        plt.close(fig)


def test_reliability_diagram_draws_the_diagonal_and_one_line_per_model(tmp_path):
    bins = [{"confidence": 0.3, "accuracy": 0.5, "photos": 4}, {"confidence": 0.9, "accuracy": 0.95, "photos": 40}]
    fig = reliability_diagram({"before": bins, "after": bins[::-1]}, title="t", save_to=tmp_path / "r.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and [t.get_text() for t in ax.get_legend().get_texts()] == [
        "perfectly calibrated", "before", "after"]
    assert (tmp_path / "r.png").stat().st_size > 1000
