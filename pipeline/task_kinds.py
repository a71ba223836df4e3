"""What a task kind is: the one table (`TASK_KINDS`) that every stage reads.

A task's `type` in the spec names one `TaskKind`. The kind owns everything that differs
between binary classification, multiclass classification, regression and link
prediction: the label's SQL type and tensor dtype, the per-split label statistic, the
width of the model head and how its output becomes a score, the training loss, the
metrics (and which direction is better), the plots, the LightGBM objective and the
column that batch predictions write, and what RelBench's leaderboard scores it by (its
one metric per kind and the prediction column of its files). Nothing outside this module
compares a task's type; code asks `task.kind` instead.

Adding a task kind is one subclass here and one entry in `TASK_KINDS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Metrics for which a smaller value is better (errors); every other metric is a score.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})


class TaskKind:
    """The behaviour of one kind of task (a subclass per kind; see `TASK_KINDS`).

    Attributes:
        name: the spec's `type`.
        metrics: the metrics computed for it; the first is the default `metric`.
        label_sql_type: the SQL type the label column is cast to (None: the label SQL
            names target rows instead of a label, link prediction).
        label_stat: the name of the per-split label statistic in task summaries.
        ranks_targets: examples have a set of target rows, not one label.
        scalar_output: the head gives one number per example ([B], not [B, C]).
        gbdt_objective: LightGBM's objective (link prediction: binary, on candidate pairs).
        relbench_metric: the one metric relbench 3.0.2 scores this kind by (roc_auc, nmae,
            map at eval_k); None where its leaderboard scores none (multiclass), and such a
            task gets no prediction file.
    """

    name: str
    metrics: tuple[str, ...]
    label_sql_type: str | None = "INTEGER"
    label_stat: str = "label_mean"
    ranks_targets: bool = False
    scalar_output: bool = True
    gbdt_objective: str = "binary"
    relbench_metric: str | None = None

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    # -- labels -----------------------------------------------------------------
    def label_tensor(self, values: np.ndarray):
        """The labels of a split as the tensor the loss takes ([n] float32 by default)."""
        import torch

        return torch.from_numpy(values).float()

    def label_scale(self, train_labels) -> tuple[float, float]:
        """(mean, std) by which model outputs are scaled back to the label's units."""
        return 0.0, 1.0

    def scale_labels(self, y, mean: float, std: float):
        """Labels in the units the loss compares head outputs with."""
        return y

    def num_classes(self, task, train_labels) -> int | None:
        """Classes of a classifier with more than one output (None for other kinds)."""
        return None

    def check_split(self, task_name: str, split: str, stats: dict) -> str | None:
        """A problem with one split's label statistics that stops the task, in words."""
        return None

    # -- the model's head and loss --------------------------------------------------
    def head_outputs(self, hidden: int, num_classes: int | None, num_targets: int | None) -> int:
        """Width of the head MLP's last layer."""
        return 1

    def loss(self, out, y, metric: str):
        """Training loss of head outputs `out` against labels `y` (already scaled)."""
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out, y)

    def to_scores(self, out, y_mean: float, y_std: float):
        """Head outputs -> what predictions report (probabilities, values, scores)."""
        return out

    # -- evaluation -----------------------------------------------------------------
    def compute_metrics(self, y_true, y_score, split: str | None = None, k: int = 10) -> dict:
        raise NotImplementedError

    def plots(self, y_true, scores, out_dir: Path) -> list[Path]:
        """Plots of test predictions besides the learning curves."""
        return []

    def prediction_columns(self, scores: np.ndarray, target_keys=None, k: int = 10) -> list:
        """[(name, Arrow array)] that `predictions_<task>` holds for `scores`, after the
        entity's keys and cutoff. `target_keys`: the target table's keys by `__id`."""
        import pyarrow as pa

        return [("score", pa.array(np.asarray(scores, dtype=np.float64)))]

    def gbdt_params(self, task, labels) -> dict:
        """LightGBM parameters this kind sets for `task` (objective, number of classes)."""
        return {"objective": self.gbdt_objective}

    # -- RelBench's leaderboard -----------------------------------------------------
    def relbench_predictions(self, scores, k: int | None = None) -> np.ndarray:
        """What a RelBench prediction file holds per test example: a probability of the
        positive class (binary), a value on the label's scale (regression), or the ids of
        the `k` best targets, best first, -1 where there are fewer (link prediction)."""
        return np.asarray(scores, dtype=np.float64)

    def relbench_score(self, y_true, predictions, train_std: float | None = None) -> dict:
        """{relbench_metric: value} of `predictions` (from `relbench_predictions`), computed
        as relbench 3.0.2 computes it; {} for a kind it does not score."""
        return {}

    def __repr__(self) -> str:
        return f"TaskKind({self.name})"


class Binary(TaskKind):
    name = "binary_classification"
    metrics = ("auroc", "average_precision", "accuracy", "f1")
    label_stat = "positive_rate"
    relbench_metric = "roc_auc"

    def relbench_predictions(self, scores, k=None):
        scores = np.asarray(scores, dtype=np.float64)
        return scores[:, -1] if scores.ndim == 2 else scores  # [n, 2]: the positive class

    def relbench_score(self, y_true, predictions, train_std=None):
        from sklearn.metrics import roc_auc_score

        return {"roc_auc": float(roc_auc_score(np.asarray(y_true), predictions))}

    def check_split(self, task_name: str, split: str, stats: dict) -> str | None:
        positives = round(stats["positive_rate"] * stats["examples"])
        if positives == 0 or positives == stats["examples"]:
            return (f"task {task_name}: the {split} split has {positives} positive labels out "
                    f"of {stats['examples']}; a binary task needs both classes")
        return None

    def to_scores(self, out, y_mean, y_std):
        import torch

        return torch.sigmoid(out)

    def compute_metrics(self, y_true, y_score, split=None, k=10):
        from pipeline.evaluate import binary_metrics

        return binary_metrics(np.asarray(y_true), np.asarray(y_score, dtype=np.float64), split)

    def plots(self, y_true, scores, out_dir):
        from pipeline.evaluate import plot_roc_pr

        return [plot_roc_pr(np.asarray(y_true), np.asarray(scores), out_dir / "roc_pr.png")]


class Multiclass(TaskKind):
    name = "multiclass_classification"
    metrics = ("accuracy", "f1", "auroc")
    scalar_output = False
    gbdt_objective = "multiclass"

    def label_tensor(self, values):
        import torch

        return torch.from_numpy(values).long()

    def head_outputs(self, hidden, num_classes, num_targets):
        if num_classes is None or num_classes < 2:
            raise ValueError(f"multiclass head needs num_classes >= 2, got {num_classes}")
        return num_classes

    def loss(self, out, y, metric):
        import torch.nn.functional as F

        return F.cross_entropy(out, y)

    def to_scores(self, out, y_mean, y_std):
        import torch

        return torch.softmax(out, -1)

    def num_classes(self, task, train_labels):
        return task.num_classes or int(train_labels.max()) + 1

    def prediction_columns(self, scores, target_keys=None, k=10):
        import pyarrow as pa

        return [("probability", pa.array(scores.max(1).astype(np.float64))),
                ("predicted_class", pa.array(scores.argmax(1)))]

    def compute_metrics(self, y_true, y_score, split=None, k=10):
        from pipeline.evaluate import multiclass_metrics

        return multiclass_metrics(np.asarray(y_true), np.asarray(y_score, dtype=np.float64), split)

    def gbdt_params(self, task, labels):
        return {"objective": self.gbdt_objective, "num_class": self.num_classes(task, labels)}


class Regression(TaskKind):
    name = "regression"
    metrics = ("mae", "rmse", "r2")
    label_sql_type = "DOUBLE"
    gbdt_objective = "regression"
    relbench_metric = "nmae"

    def relbench_score(self, y_true, predictions, train_std=None):
        """MAE divided by `train_std`, the standard deviation (ddof=1) of the labels of
        RelBench's train table (`pipeline.data.tasks.relbench_train_labels`)."""
        if train_std is None:
            raise ValueError("nmae needs the standard deviation of the train labels")
        mae = float(np.mean(np.abs(np.asarray(y_true, dtype=np.float64) - predictions)))
        return {"nmae": mae / float(train_std)}

    def label_scale(self, train_labels):
        # Targets are standardized with train statistics for a stable loss.
        return float(train_labels.mean()), float(train_labels.std().clamp_min(1e-6))

    def scale_labels(self, y, mean, std):
        return (y - mean) / std

    def loss(self, out, y, metric):
        import torch.nn.functional as F

        return F.l1_loss(out, y) if metric == "mae" else F.mse_loss(out, y)

    def to_scores(self, out, y_mean, y_std):
        return out * y_std + y_mean

    def compute_metrics(self, y_true, y_score, split=None, k=10):
        from pipeline.evaluate import regression_metrics

        return regression_metrics(np.asarray(y_true, dtype=np.float64),
                                  np.asarray(y_score, dtype=np.float64), split)

    def plots(self, y_true, scores, out_dir):
        from pipeline.evaluate import plot_pred_vs_true

        return [plot_pred_vs_true(np.asarray(y_true), np.asarray(scores),
                                  out_dir / "pred_vs_true.png")]

    def gbdt_params(self, task, labels):
        return {"objective": "regression_l1" if task.metric == "mae" else self.gbdt_objective}


class LinkPrediction(TaskKind):
    name = "link_prediction"
    metrics = ("map_at_10", "recall_at_10", "ndcg_at_10")
    label_sql_type = None
    label_stat = "targets_per_example"
    ranks_targets = True
    scalar_output = False
    relbench_metric = "map"

    def relbench_predictions(self, scores, k=None):
        from pipeline.evaluate import top_k_ids

        k = k or 10
        scores = np.asarray(scores)
        ids = (scores[:, :k].astype(np.int64) if scores.dtype.kind == "i"
               else top_k_ids(scores.astype(np.float64), k))
        if ids.shape[1] < k:
            ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, np.int64)], 1)
        return ids

    def relbench_score(self, y_true, predictions, train_std=None):
        """RelBench's MAP at eval_k (relbench/metrics.py `map`): hit j of example i when its
        j-th id is one of its true targets; examples without a true target left out;
        AP_i = sum_j precision@j * hit_j / min(|true_i|, eval_k)."""
        from pipeline.evaluate import _relevance_csr

        n, k = predictions.shape
        indptr, flat = _relevance_csr(y_true)
        width = int(max(flat.max(initial=-1), predictions.max(initial=-1))) + 2
        # one flat key per (example, target) pair: no loop over examples
        relevant = np.unique(np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)) * width + flat)
        count = np.bincount(relevant // width, minlength=n)
        hits = (np.isin(np.arange(n, dtype=np.int64)[:, None] * width + predictions, relevant)
                & (predictions >= 0)).astype(np.float64)
        keep = count > 0
        hits, count = hits[keep], count[keep]
        if not len(hits):
            return {"map": float("nan")}
        precision = np.cumsum(hits, axis=1) / (np.arange(k) + 1)
        return {"map": float(((precision * hits).sum(axis=1) / np.minimum(count, k)).mean())}

    def head_outputs(self, hidden, num_classes, num_targets):
        if num_targets is None or num_targets < 1:
            raise ValueError(f"link_prediction head needs num_targets >= 1, got {num_targets}")
        return hidden  # scored against one embedding per target row

    def compute_metrics(self, y_true, y_score, split=None, k=10):
        from pipeline.evaluate import ranking_metrics

        return ranking_metrics(y_true, y_score, split, k)

    def prediction_columns(self, scores, target_keys=None, k=10):
        import pyarrow as pa
        import pyarrow.compute as pc

        from pipeline.evaluate import top_k_ids

        ids = scores if scores.ndim == 2 and scores.dtype.kind == "i" else top_k_ids(scores, k)
        if isinstance(target_keys, pa.ChunkedArray):  # a column of a query's Arrow table
            target_keys = target_keys.combine_chunks()
        flat = ids.reshape(-1)
        values = target_keys.take(pa.array(np.where(flat < 0, 0, flat)))
        # -1 pads a short candidate list (LightGBM); it becomes a null target.
        values = pc.if_else(pa.array(flat < 0), pa.nulls(len(flat), target_keys.type), values)
        offsets = pa.array(np.arange(0, len(flat) + 1, ids.shape[1], dtype=np.int32))
        return [("top_targets", pa.ListArray.from_arrays(offsets, values))]


TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (Binary(), Multiclass(), Regression(),
                                                        LinkPrediction())}


def task_kind(name: str) -> TaskKind:
    """The kind named `name` (a spec's task `type`); a clear error for any other name."""
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r}; valid: {', '.join(TASK_KINDS)}") from None


def compute_metrics(task_type: str, y_true, y_score, split: str | None = None,
                    k: int = 10) -> dict[str, float]:
    """Metrics of one split of a task of type `task_type`.

    Args:
        task_type: a key of `TASK_KINDS`.
        y_true: binary: [n] in {0, 1}; multiclass: [n] class ids; regression: [n] floats;
            link prediction: the true target ids of each example, as a list of arrays,
            a scipy CSR matrix (columns = target ids) or a pyarrow/polars list column.
        y_score: binary: [n] probabilities of class 1 (or [n, 2]); multiclass: [n, C]
            class probabilities; regression: [n] predictions; link prediction: either a
            float [n, num_targets] score matrix or an integer [n, <=k] matrix of
            precomputed top-k target ids, best first, padded with -1.
        split: named in the warning when a metric is undefined ("val", "test").
        k: the cut-off of the ranking metrics (names end in `_at_<k>`).

    Undefined metrics (AUROC of a split with one class, R^2 of a constant target,
    ranking metrics of examples without any true target) are NaN and raise a
    `MetricWarning` that names the split and the counts; they never raise an exception.
    """
    return task_kind(task_type).compute_metrics(y_true, y_score, split, k)
