"""What a task kind is: the one table (`TASK_KINDS`) that every stage reads.

A task's `type` in the spec names one `TaskKind`. The kind owns everything that differs
between binary classification, multiclass classification, regression and link
prediction: the label's SQL type and tensor dtype, the per-split label statistic, the
width of the model head and how its output becomes a score, the training loss, the
metrics (and which direction is better), the plots, the LightGBM objective and the
column that batch predictions write. Nothing outside this module compares a task's type;
code asks `task.kind` instead.

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
    """

    name: str
    metrics: tuple[str, ...]
    label_sql_type: str | None = "INTEGER"
    label_stat: str = "label_mean"
    ranks_targets: bool = False
    scalar_output: bool = True
    gbdt_objective: str = "binary"

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

    def __repr__(self) -> str:
        return f"TaskKind({self.name})"


class Binary(TaskKind):
    name = "binary_classification"
    metrics = ("auroc", "average_precision", "accuracy", "f1")
    label_stat = "positive_rate"

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
