import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.sparse import csr_matrix

from pipeline.evaluate import (
    MetricWarning,
    metrics_markdown,
    plot_curves,
    plot_model_comparison,
    plot_pred_vs_true,
    plot_roc_pr,
    top_k_ids,
)
from pipeline.task_kinds import compute_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_binary_metrics_by_hand():
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): AUROC 3/4.
    # Ranking 0.8+, 0.4-, 0.35+, 0.1-: AP = (1/1 + 2/3) / 2.
    # Threshold 0.5 predicts [0, 0, 0, 1]: accuracy 3/4, TP 1, FP 0, FN 1: F1 = 2/3.
    m = compute_metrics("binary_classification", np.array([0, 0, 1, 1]),
                        np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_without_positives_is_nan_and_warns():
    with pytest.warns(MetricWarning, match=r"test: 3 examples and 0 positives"):
        m = compute_metrics("binary_classification", np.array([0, 0, 0]),
                            np.array([0.2, 0.7, 0.1]), split="test")
    assert math.isnan(m["auroc"]) and math.isnan(m["average_precision"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["f1"] == 0.0  # one false positive, no true positive


def test_binary_empty_split_warns():
    with pytest.warns(MetricWarning, match="val: 0 examples"):
        m = compute_metrics("binary_classification", np.array([]), np.array([]), split="val")
    assert all(math.isnan(v) for v in m.values())


def test_multiclass_metrics_by_hand():
    y = np.array([0, 1, 2, 2])
    scores = np.array([[0.7, 0.2, 0.1],
                       [0.3, 0.4, 0.3],
                       [0.1, 0.6, 0.3],
                       [0.2, 0.2, 0.6]])
    m = compute_metrics("multiclass_classification", y, scores)
    # argmax = [0, 1, 1, 2]: 3 of 4 right. F1 per class: 1, 2/3, 2/3.
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # OvR AUROC: class 0: 1.0; class 1: positive 0.4 vs 0.2, 0.6, 0.2 -> 2/3;
    # class 2: positives 0.3, 0.6 vs negatives 0.1, 0.3 -> (0.5 + 1 + 1 + 1) / 4.
    assert m["auroc"] == pytest.approx((1 + 2 / 3 + 3.5 / 4) / 3)


def test_multiclass_single_class_warns():
    with pytest.warns(MetricWarning, match="val: 2 examples all of class 1"):
        m = compute_metrics("multiclass_classification", np.array([1, 1]),
                            np.array([[0.2, 0.8], [0.6, 0.4]]), split="val")
    assert math.isnan(m["auroc"]) and m["accuracy"] == pytest.approx(0.5)


def test_regression_metrics_by_hand():
    m = compute_metrics("regression", np.array([1.0, 2.0, 3.0, 4.0]),
                        np.array([1.5, 2.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 2.25 / 5.0)


def test_regression_constant_target_warns():
    with pytest.warns(MetricWarning, match="train: 3 examples with a constant target"):
        m = compute_metrics("regression", np.ones(3), np.array([1.0, 2.0, 0.0]), split="train")
    assert math.isnan(m["r2"]) and m["mae"] == pytest.approx(2 / 3)


# Example 0: relevant {3, 7}, ranking 3 5 7 1: hits at 1 and 3, AP = (1 + 2/3) / 2.
# Example 1: relevant {2}, ranking 4 2: hit at 2, AP = (1/2) / 1.
MAP_BY_HAND = ((1 + 2 / 3) / 2 + 0.5) / 2
NDCG_BY_HAND = ((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)) + 1 / math.log2(3)) / 2


def test_link_metrics_from_top_ids_by_hand():
    top = np.array([[3, 5, 7, 1], [4, 2, -1, -1]])
    m = compute_metrics("link_prediction", [[3, 7], [2]], top)
    assert m["map_at_10"] == pytest.approx(MAP_BY_HAND)
    assert m["recall_at_10"] == pytest.approx(1.0)
    assert m["ndcg_at_10"] == pytest.approx(NDCG_BY_HAND)


def test_link_metrics_input_forms_agree():
    scores = np.zeros((2, 8))
    scores[0, [3, 5, 7, 1]] = [4, 3, 2, 1]
    scores[1, [4, 2]] = [2, 1]
    scores[1, [0, 1, 3, 5, 6, 7]] = -1.0  # keep the remaining ids below id 2
    truth_csr = csr_matrix((np.ones(3), ([0, 0, 1], [3, 7, 2])), shape=(2, 8))
    truth_arrow = pa.array([[3, 7], [2]], type=pa.list_(pa.int64()))
    for truth in (truth_csr, truth_arrow, [np.array([7, 3]), np.array([2])]):
        m = compute_metrics("link_prediction", truth, scores)
        assert m["map_at_10"] == pytest.approx(MAP_BY_HAND)
        assert m["ndcg_at_10"] == pytest.approx(NDCG_BY_HAND)


def test_map_normalizes_by_min_k_relevant():
    # 12 relevant targets, all 10 ranked ones relevant: AP@10 = 10 / min(10, 12) = 1,
    # recall = 10 / 12.
    top = np.arange(10)[None, :]
    m = compute_metrics("link_prediction", [list(range(12))], top)
    assert m["map_at_10"] == pytest.approx(1.0)
    assert m["recall_at_10"] == pytest.approx(10 / 12)
    assert m["ndcg_at_10"] == pytest.approx(1.0)


def test_link_duplicate_ids_count_once_and_empty_examples_warn():
    with pytest.warns(MetricWarning, match="val: 1 of 2 examples have no true target"):
        m = compute_metrics("link_prediction", [[1], []], np.array([[1, 1], [0, 1]]),
                            split="val")
    assert m["map_at_10"] == pytest.approx(1.0)
    assert m["recall_at_10"] == pytest.approx(1.0)


def test_top_k_ids_breaks_ties_by_id():
    scores = np.array([[0.5, 0.9, 0.5, np.nan, 0.1]])
    assert top_k_ids(scores, 3).tolist() == [[1, 0, 2]]
    assert top_k_ids(scores, 10).tolist() == [[1, 0, 2, 4, 3]]


def test_unknown_task_type():
    with pytest.raises(ValueError, match="unknown task type 'ranking'"):
        compute_metrics("ranking", np.zeros(1), np.zeros(1))


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def test_plots_write_pngs(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_auroc": v}
               for e, v in enumerate([0.6, 0.7, 0.75, 0.74])]
    assert _is_png(plot_curves(history, "auroc", tmp_path / "curves.png"))
    assert _is_png(plot_curves([{"epoch": 0, "val_mae": 2.0}, {"epoch": 1, "val_mae": 1.0}],
                               "mae", tmp_path / "gbdt.png"))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    assert _is_png(plot_roc_pr(y, rng.random(50), tmp_path / "sub" / "roc.png"))
    assert _is_png(plot_roc_pr(np.zeros(5), rng.random(5), tmp_path / "roc_one_class.png"))
    assert _is_png(plot_roc_pr(rng.integers(0, 3, 30), rng.random((30, 3)), tmp_path / "mc.png"))
    assert _is_png(plot_pred_vs_true(rng.random(40), rng.random(40), tmp_path / "pvt.png"))
    results = {"sage": {"val_auroc": {"mean": 0.8, "std": 0.01}, "test_auroc": (0.78, 0.02)},
               "lightgbm": {"val_auroc": 0.75, "test_auroc": 0.74}}
    assert _is_png(plot_model_comparison(results, "auroc", tmp_path / "cmp.png"))
    by_split = {"sage": {"val": {"mean": 0.8, "std": 0.01}, "test": {"mean": 0.7, "std": 0.0}}}
    assert _is_png(plot_model_comparison(by_split, "auroc", tmp_path / "cmp2.png"))
    undefined = [{"epoch": 1, "val_auroc": float("nan")}]
    assert _is_png(plot_curves(undefined, "auroc", tmp_path / "nan_curve.png"))


def test_plot_model_comparison_without_results_raises(tmp_path):
    with pytest.raises(ValueError, match="no model has a '<split>_mae' result"):
        plot_model_comparison({"sage": {"val_auroc": 0.5}}, "mae", tmp_path / "x.png")


def test_plot_curves_without_metric_raises(tmp_path):
    with pytest.raises(ValueError, match="no 'val_auroc' values"):
        plot_curves([{"epoch": 0, "train_loss": 1.0}], "auroc", tmp_path / "x.png")


def test_metrics_markdown():
    md = metrics_markdown([
        {"model": "sage", "val_auroc": 0.81234, "test_auroc": (0.8, 0.01)},
        {"model": "light|gbm", "val_auroc": float("nan"), "epochs": 12},
    ])
    lines = md.strip().split("\n")
    assert lines[0] == "| model | val_auroc | test_auroc | epochs |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| sage | 0.8123 | 0.8000 ± 0.0100 |  |"
    assert lines[3] == "| light\\|gbm | n/a |  | 12 |"
    assert metrics_markdown({"sage": {"val_auroc": 0.5}}).split("\n")[2] == "| sage | 0.5000 |"
