"""Metrics and plots for every task type.

The metric functions (each task kind in `pipeline.task_kinds` calls its own) give the
numbers that MLflow records as `val_<metric>` and `test_<metric>`; the plots are PNG files that go into MLflow artifacts and Dagster metadata.
Plots use matplotlib's object-oriented API (`Figure`, never pyplot), so they touch no
global backend state and can run in any thread.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    r2_score,
    roc_auc_score,
    roc_curve,
)


class MetricWarning(UserWarning):
    """A metric is undefined on this split (for example AUROC with no positives)."""


def _warn(split: str | None, message: str) -> None:
    warnings.warn(f"{split or 'unnamed split'}: {message}", MetricWarning, stacklevel=4)


# ---------------------------------------------------------------------------- metrics

def _check_lengths(y_true: np.ndarray, y_score: np.ndarray) -> None:
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} examples but y_score has {len(y_score)}")


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray, split: str | None) -> dict:
    if y_score.ndim == 2 and y_score.shape[1] == 2:
        y_score = y_score[:, 1]
    _check_lengths(y_true, y_score)
    y = y_true.astype(np.int64)
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError(f"binary labels must be 0 or 1; found {np.unique(y)[:5].tolist()}")
    n, pos = len(y), int(y.sum())
    pred = (y_score >= 0.5).astype(np.int64)
    tp = int((pred & y).sum())
    fp = int((pred & (1 - y)).sum())
    fn = pos - tp
    # F1 = 2TP / (2TP + FP + FN); 0/0 (no positives, none predicted) is undefined.
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    out = {"auroc": math.nan, "average_precision": math.nan,
           "accuracy": float((pred == y).mean()) if n else math.nan, "f1": f1}
    if n == 0:
        _warn(split, "0 examples: every metric is NaN")
    elif pos in (0, n):
        _warn(split, f"{n} examples and {pos} positives: a single class, so auroc"
                     f"{' and average_precision are' if pos == 0 else ' is'} undefined (NaN)")
        if pos == n:  # every example is positive: any ranking has precision 1
            out["average_precision"] = 1.0
    else:
        out["auroc"] = float(roc_auc_score(y, y_score))
        out["average_precision"] = float(average_precision_score(y, y_score))
    return out


def multiclass_metrics(y_true: np.ndarray, y_score: np.ndarray, split: str | None) -> dict:
    if y_score.ndim != 2:
        raise ValueError(f"multiclass y_score must be [n, num_classes]; got shape {y_score.shape}")
    _check_lengths(y_true, y_score)
    y = y_true.astype(np.int64)
    num_classes = y_score.shape[1]
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (y_score has {num_classes} "
                         f"columns); found {int(y.min())}..{int(y.max())}")
    if len(y) == 0:
        _warn(split, "0 examples: every metric is NaN")
        return {"accuracy": math.nan, "f1": math.nan, "auroc": math.nan}
    pred = y_score.argmax(axis=1)
    # Macro F1 over the classes that occur in the labels or the predictions.
    onehot_true = np.eye(num_classes, dtype=np.int64)[y]
    onehot_pred = np.eye(num_classes, dtype=np.int64)[pred]
    tp = (onehot_true & onehot_pred).sum(axis=0)
    support = onehot_true.sum(axis=0) + onehot_pred.sum(axis=0)
    seen = support > 0
    f1 = float((2 * tp[seen] / support[seen]).mean())
    # One-vs-rest AUROC, macro-averaged over the classes that have both positives and
    # negatives in this split (the others have no defined AUROC).
    counts = onehot_true.sum(axis=0)
    defined = np.flatnonzero((counts > 0) & (counts < len(y)))
    if len(defined):
        auroc = float(np.mean([roc_auc_score(onehot_true[:, c], y_score[:, c]) for c in defined]))
    else:
        auroc = math.nan
        _warn(split, f"{len(y)} examples all of class {int(y[0])}: auroc is undefined (NaN)")
    return {"accuracy": float((pred == y).mean()), "f1": f1, "auroc": auroc}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, split: str | None) -> dict:
    if y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y_pred = y_pred[:, 0]
    _check_lengths(y_true, y_pred)
    if len(y_true) == 0:
        _warn(split, "0 examples: every metric is NaN")
        return {"mae": math.nan, "rmse": math.nan, "r2": math.nan}
    err = y_pred - y_true
    out = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
           "r2": math.nan}
    if len(y_true) < 2 or np.all(y_true == y_true[0]):
        _warn(split, f"{len(y_true)} examples with a constant target: r2 is undefined (NaN)")
    else:
        out["r2"] = float(r2_score(y_true, y_pred))
    return out


def _relevance_csr(y_true) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [n+1], target ids [nnz]) of the true targets of each example."""
    if hasattr(y_true, "tocsr"):  # scipy.sparse
        m = y_true.tocsr()
        return m.indptr.astype(np.int64), m.indices.astype(np.int64)
    if hasattr(y_true, "to_arrow"):  # polars Series of lists
        y_true = y_true.to_arrow()
    if isinstance(y_true, pa.ChunkedArray):
        y_true = y_true.combine_chunks()
    if isinstance(y_true, (pa.ListArray, pa.LargeListArray)):
        offsets = y_true.offsets.to_numpy().astype(np.int64)
        values = y_true.values.to_numpy(zero_copy_only=False).astype(np.int64)
        return offsets - offsets[0], values[offsets[0]:offsets[-1]]
    lengths = np.fromiter(map(len, y_true), dtype=np.int64, count=len(y_true))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    values = (np.concatenate([np.asarray(v, dtype=np.int64) for v in y_true])
              if indptr[-1] else np.zeros(0, dtype=np.int64))
    return indptr, values


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """[n, min(k, T)] column ids of the k largest scores per row, best first.

    Ties are broken towards the smaller id; NaN scores rank last.
    """
    scores = np.where(np.isnan(scores), -np.inf, scores)
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(y_true, y_score, split: str | None, k: int) -> dict:
    names = (f"map_at_{k}", f"recall_at_{k}", f"ndcg_at_{k}")
    indptr, targets = _relevance_csr(y_true)
    n = len(indptr) - 1
    y_score = np.asarray(y_score)
    if y_score.ndim != 2 or len(y_score) != n:
        raise ValueError(f"link prediction y_score must be [n={n}, num_targets] scores or "
                         f"[n={n}, k] top ids; got shape {y_score.shape}")
    if np.issubdtype(y_score.dtype, np.integer):
        top = y_score[:, :k].astype(np.int64)
    else:
        top = top_k_ids(y_score.astype(np.float64), k)
    if top.shape[1] < k:  # fewer candidates than k: pad with "no target"
        top = np.concatenate([top, np.full((n, k - top.shape[1]), -1, np.int64)], axis=1)

    # Membership of (example, target) pairs through one flat key per pair: key = row * T + id.
    width = int(max(targets.max(initial=-1), top.max(initial=-1))) + 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    relevant = np.unique(rows * width + targets)
    num_relevant = np.bincount(relevant // max(width, 1), minlength=n)
    valid = top >= 0
    keys = np.where(valid, np.arange(n, dtype=np.int64)[:, None] * width + top,
                    -1 - np.arange(top.size, dtype=np.int64).reshape(top.shape))
    # A target listed twice in one example's top ids counts once (its first position).
    first = np.zeros(top.size, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True
    hits = (np.isin(keys, relevant) & valid & first.reshape(top.shape)).astype(np.float64)

    has = num_relevant > 0
    if not has.all():
        _warn(split, f"{int((~has).sum())} of {n} examples have no true target and are left "
                     "out of the ranking metrics")
    if not has.any():
        return dict.fromkeys(names, math.nan)
    hits, count = hits[has], num_relevant[has].astype(np.float64)
    positions = np.arange(1, k + 1, dtype=np.float64)
    # AP@k = sum_j P@j * rel_j / min(k, |relevant|) (RelBench's normalization).
    precision = np.cumsum(hits, axis=1) / positions
    ap = (precision * hits).sum(axis=1) / np.minimum(count, k)
    recall = hits.sum(axis=1) / count
    # NDCG@k = sum_j rel_j / log2(j + 1) over the ideal DCG of min(k, |relevant|) hits.
    discount = 1.0 / np.log2(positions + 1)
    ideal = np.cumsum(discount)[np.minimum(count, k).astype(np.int64) - 1]
    ndcg = (hits * discount).sum(axis=1) / ideal
    return dict(zip(names, (float(ap.mean()), float(recall.mean()), float(ndcg.mean()))))


# ---------------------------------------------------------------------------- plots

def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_curves(history: list[dict], metric: str, path, lower_is_better: bool = False) -> Path:
    """Training loss and validation metric by epoch, the best epoch marked.

    `history` holds one dict per epoch (or boosting round) with keys `epoch`,
    `val_<metric>` and optionally `train_loss`, the names MLflow records.
    """
    key = f"val_{metric}"
    if not any(key in h for h in history):
        raise ValueError(f"history has no '{key}' values to plot ({len(history)} entries)")
    points = [(h.get("epoch", i), h[key]) for i, h in enumerate(history)
              if h.get(key) is not None and not math.isnan(h[key])]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if points:
        epochs, values = np.array([p[0] for p in points]), np.array([p[1] for p in points], float)
        best = int(values.argmin() if lower_is_better else values.argmax())
        ax.plot(epochs, values, color="tab:blue", label=key)
        ax.axvline(epochs[best], color="tab:gray", linestyle="--",
                   label=f"best epoch {epochs[best]} ({values[best]:.4f})")
    else:  # e.g. AUROC of a validation split with one class
        ax.text(0.5, 0.5, f"{key} is undefined (NaN) at every epoch", ha="center",
                va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key, color="tab:blue")
    losses = [(h.get("epoch", i), h["train_loss"]) for i, h in enumerate(history)
              if h.get("train_loss") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if losses:
        ax2 = ax.twinx()
        le, lv = zip(*losses)
        ax2.plot(le, lv, color="tab:orange", label="train_loss")
        ax2.set_ylabel("train_loss", color="tab:orange")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(f"training curve ({metric})")
    return _save(fig, path)


def plot_roc_pr(y_true, y_score, path) -> Path:
    """ROC and precision-recall curves side by side.

    Binary: `y_score` [n] probabilities of class 1. Multiclass ([n, C] scores): the
    micro-averaged one-vs-rest curves.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 2:
        onehot = np.eye(y_score.shape[1], dtype=np.int64)[y_true.astype(np.int64)]
        y_true, y_score = onehot.ravel(), y_score.ravel()
    fig = Figure(figsize=(10, 4))
    roc_ax, pr_ax = fig.subplots(1, 2)
    classes = np.unique(y_true)
    if len(classes) < 2:
        for ax in (roc_ax, pr_ax):
            ax.text(0.5, 0.5, f"undefined: {len(y_true)} examples, all of class "
                              f"{classes.tolist()}", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(y_true, y_score)
        roc_ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(y_true, y_score):.4f}")
        roc_ax.plot([0, 1], [0, 1], color="tab:gray", linestyle=":")
        precision, recall, _ = precision_recall_curve(y_true, y_score)
        pr_ax.plot(recall, precision,
                   label=f"AP {average_precision_score(y_true, y_score):.4f}")
        pr_ax.axhline(y_true.mean(), color="tab:gray", linestyle=":", label="base rate")
        roc_ax.legend(loc="lower right")
        pr_ax.legend(loc="best")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    return _save(fig, path)


def plot_pred_vs_true(y_true, y_pred, path) -> Path:
    """Scatter of predictions against true values, with the line y = x."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_true))
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if len(y_true) > 20_000:  # too many points to see in a scatter: show the density
        ax.hexbin(y_true, y_pred, gridsize=60, bins="log", cmap="viridis")
    else:
        ax.scatter(y_true, y_pred, s=6, alpha=0.4, rasterized=True)
    finite = np.concatenate([y_true, y_pred])
    finite = finite[np.isfinite(finite)]
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        ax.plot([lo, hi], [lo, hi], color="tab:red", linestyle="--", label="y = x")
        ax.legend(loc="upper left")
    ax.set(xlabel="true", ylabel="predicted", title=f"predicted vs true ({len(y_true)} examples)")
    return _save(fig, path)


def _mean_std(value) -> tuple[float, float]:
    """A result cell as (mean, std): accepts a number, (mean, std) or {'mean', 'std'}."""
    if isinstance(value, Mapping):
        return float(value["mean"]), float(value.get("std", 0.0) or 0.0)
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1]) if len(value) > 1 else 0.0
    return float(value), 0.0


def plot_model_comparison(results: dict[str, dict], metric: str, path,
                          lower_is_better: bool = False) -> Path:
    """Bar chart of each model's `<split>_<metric>` (mean over seeds, std as error bar).

    `results` maps model -> {"val_auroc": {"mean": m, "std": s}, "test_auroc": ...}
    (the split alone, {"val": ..., "test": ...}, works too); a cell may also be a plain
    number or a (mean, std) pair.
    """
    models = list(results)

    def cell(model: str, split: str):
        row = results[model]
        return row.get(f"{split}_{metric}", row.get(split, math.nan))

    splits = [s for s in ("train", "val", "test")
              if any(f"{s}_{metric}" in results[m] or s in results[m] for m in models)]
    if not splits:
        raise ValueError(f"no model has a '<split>_{metric}' result "
                         f"(models: {', '.join(models) or 'none'})")
    fig = Figure(figsize=(max(5, 1.2 * len(models) + 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(splits)
    x = np.arange(len(models))
    for i, split in enumerate(splits):
        cells = [_mean_std(cell(m, split)) for m in models]
        means, stds = zip(*cells)
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=split)
    ax.set_xticks(x, models, rotation=30, ha="right")
    arrow = "lower is better" if lower_is_better else "higher is better"
    ax.set(ylabel=metric, title=f"{metric} by model ({arrow})")
    ax.legend()
    return _save(fig, path)


def _cell(value) -> str:
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if value is None:
        return ""
    if isinstance(value, (Mapping, tuple, list)):
        mean, std = _mean_std(value)
        return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def metrics_markdown(rows: Sequence[Mapping] | Mapping[str, Mapping]) -> str:
    """A markdown table with one row per model and one column per metric.

    `rows` is a list of dicts (each with a `model` key) or a mapping model -> metrics.
    Cells: numbers with 4 decimals, `mean ± std` for (mean, std) pairs, `n/a` for NaN.
    """
    if isinstance(rows, Mapping):
        rows = [{"model": name, **metrics} for name, metrics in rows.items()]
    columns = list(dict.fromkeys(["model"] + [c for r in rows for c in r]))
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
