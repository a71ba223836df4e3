"""The LightGBM models' family: features computed in DuckDB as of each example's cutoff,
a booster saved in LightGBM's text format, scoring by rebuilding the same features."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

from optuna.distributions import FloatDistribution, IntDistribution

from pipeline.data.sqlutil import q
from pipeline.models.gbdt import GBDTConfig, load_gbdt, predict_gbdt, save_gbdt, train_gbdt
from pipeline.evaluate import MetricWarning
from pipeline.training.family import FitOutcome, ModelEntry, ModelFamily, TrialOutcome

GBDT_SPACE = {
    "num_leaves": IntDistribution(8, 128, log=True),
    "learning_rate": FloatDistribution(0.01, 0.2, log=True),
    "min_child_samples": IntDistribution(5, 100, log=True),
    "feature_fraction": FloatDistribution(0.5, 1.0),
}


class GBDTFamily(ModelFamily):
    name = "gbdt"
    asset_kind = "lightgbm"
    config_class = GBDTConfig
    launchpad_prefix = "gbdt_"
    # The run's seed is the run's; the thread count is the machine's.
    launchpad_skip = ("seed", "num_threads")

    def search_space(self, entry: ModelEntry) -> dict:
        return {**GBDT_SPACE, **entry.space}

    def fit(self, entry, config, prep, checkpoint_dir, *, progress, log):
        with prep.connect() as con:
            res = train_gbdt(con, prep.spec, prep.task, flat=entry.flat, config=config)
        metric = prep.task.metric
        history = [{"epoch": r.get("round", k + 1), f"val_{metric}": r[f"val_{metric}"]}
                   for k, r in enumerate(res.history)]
        path = save_gbdt(res.model, checkpoint_dir / f"seed{config.seed}")
        return FitOutcome(asdict(config), res.val_metrics, res.test_metrics, history,
                          res.test_true, res.test_pred, str(path))

    def trial(self, entry, config, prep, workdir):
        """train_gbdt on a temporary view of the task table without its test rows: the
        features, the early stopping on val and the val metrics are those of a full run."""
        task = prep.task
        view = f"tune_{task.name}_train_val"
        with prep.connect() as con:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {q(view)} AS SELECT * FROM "
                        f"main.{q(f'task_{task.name}')} WHERE split IN ('train', 'val')")
            try:
                with warnings.catch_warnings():
                    # the empty test split's metrics are NaN by construction; nothing to report
                    warnings.filterwarnings("ignore", message="test: ", category=MetricWarning)
                    res = train_gbdt(con, prep.spec, task, flat=entry.flat, config=config,
                                     task_table=view)
            finally:
                con.execute(f"DROP VIEW IF EXISTS {q(view)}")
        history = [{k: v for k, v in row.items() if k == "epoch" or k.startswith("val_")}
                   for row in res.history]
        return TrialOutcome(res.val_metrics, res.model.best_iteration, history)

    def score_live(self, entry, prep, checkpoint, device):
        with prep.connect() as con:
            return predict_gbdt(con, prep.spec, prep.task, load_gbdt(Path(checkpoint)),
                                f"task_{prep.task.name}_live")

    def score_rows(self, entry, con, spec, task, graph, checkpoint, meta, entity, cutoff, device):
        con.execute("""CREATE OR REPLACE TEMP TABLE _score_pairs AS
                       SELECT DISTINCT __entity_id, cutoff FROM _score_rows""")
        try:
            scores = predict_gbdt(con, spec, task, load_gbdt(Path(checkpoint)), "_score_pairs")
            # predict_gbdt answers in (cutoff, __entity_id) order; map each row to its pair.
            index = con.sql("""SELECT p.__k FROM _score_rows r JOIN
                                 (SELECT __entity_id, cutoff,
                                         row_number() OVER (ORDER BY cutoff, __entity_id) - 1 AS __k
                                  FROM _score_pairs) p USING (__entity_id, cutoff)
                               ORDER BY r.__row""").to_arrow_table().column(0).to_numpy()
        finally:
            con.execute("DROP TABLE IF EXISTS _score_pairs")
        return scores[index]

    def explain(self, entry, prep, checkpoint, entity, cutoff, device="cpu"):
        """LightGBM's `pred_contrib` of each row's features, grouped back to the path,
        table and column each feature reads (`pipeline.training.gbdt_attribution`)."""
        import numpy as np
        import polars as pl
        import pyarrow as pa

        from pipeline.models.gbdt import build_features
        from pipeline.training.gbdt_attribution import contributions

        task = prep.task
        if task.kind.ranks_targets:
            raise ValueError(f"{entry.name} on {task.name}: LightGBM scores candidate pairs; "
                             "explanations cover tasks that score one entity per row")
        model = load_gbdt(Path(checkpoint))
        rows = pa.table({"__row": np.arange(len(entity), dtype=np.int64),
                         "__entity_id": np.asarray(entity, dtype=np.int64),
                         "cutoff": pa.array(np.asarray(cutoff, dtype=np.int64) * 1_000_000,
                                            pa.timestamp("us"))})
        with prep.connect() as con:
            con.register("_explain_in", rows)
            try:
                con.execute("CREATE OR REPLACE TEMP TABLE _explain_rows AS "
                            "SELECT DISTINCT __entity_id, cutoff FROM _explain_in")
                frame, names = build_features(con, prep.spec, task, "_explain_rows", model.flat,
                                              model.config)
                # build_features answers in (cutoff, __entity_id) order; map rows to it.
                index = con.sql("""SELECT p.__k FROM _explain_in r JOIN
                                     (SELECT __entity_id, cutoff, row_number() OVER
                                        (ORDER BY cutoff, __entity_id) - 1 AS __k
                                      FROM _explain_rows) p USING (__entity_id, cutoff)
                                   ORDER BY r.__row""").to_arrow_table().column(0).to_numpy()
            finally:
                con.execute("DROP TABLE IF EXISTS _explain_rows")
                con.unregister("_explain_in")
        if names != model.feature_names:
            raise ValueError(f"{entry.name} on {task.name}: the features differ from the "
                             "model's; retrain the model")
        x = frame.select(pl.col(names).cast(pl.Float64)).to_numpy()[index]
        return contributions(prep.spec, task.entity_table, model, x)


GBDT = GBDTFamily()
