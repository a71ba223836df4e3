"""One training asset per (task, model); each is launchable from the UI's Launchpad."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.training.experiment import ALL_MODELS, GBDT_MODELS, RunContext, run_model
from pipeline.graph.features import FeatureConfig
from pipeline.graph.build import build_graph
from pipeline.models.gbdt import GBDTConfig
from pipeline.data.spec import DatasetSpec
from pipeline.data.tasks import encoder_fit_cutoff
from pipeline.training.trainer import TrainConfig

_TRAIN_DEFAULTS = TrainConfig()
_GBDT_DEFAULTS = GBDTConfig()


class TrainingConfig(dg.Config):
    """Launchpad config for one model; every field has a working default."""

    hidden: int = _TRAIN_DEFAULTS.hidden
    layers: int = _TRAIN_DEFAULTS.layers
    fanouts: list[int] = list(_TRAIN_DEFAULTS.fanouts)
    epochs: int = _TRAIN_DEFAULTS.epochs
    batch_size: int = _TRAIN_DEFAULTS.batch_size
    lr: float = _TRAIN_DEFAULTS.lr
    weight_decay: float = _TRAIN_DEFAULTS.weight_decay
    dropout: float = _TRAIN_DEFAULTS.dropout
    patience: int = _TRAIN_DEFAULTS.patience
    seed: int = 0
    seeds: int = 1
    max_steps_per_epoch: int = 0
    # graph models: processes that train together (torchrun + DDP; one GPU each on CUDA);
    # batch_size is the batch of all of them together. LightGBM models ignore it.
    nproc: int = 1
    # rgt only: tokens per seed, learned global tokens, message-passing rounds before attention
    rgt_max_tokens: int = _TRAIN_DEFAULTS.max_tokens
    rgt_global_tokens: int = _TRAIN_DEFAULTS.global_tokens
    rgt_local_layers: int = _TRAIN_DEFAULTS.local_layers
    gbdt_num_leaves: int = _GBDT_DEFAULTS.num_leaves
    gbdt_learning_rate: float = _GBDT_DEFAULTS.learning_rate
    gbdt_min_child_samples: int = _GBDT_DEFAULTS.min_child_samples
    gbdt_feature_fraction: float = _GBDT_DEFAULTS.feature_fraction


def training_assets(spec: DatasetSpec, models=ALL_MODELS) -> list[dg.AssetsDefinition]:
    return [_training_asset(spec, task, model) for task in spec.tasks for model in models]


def _training_asset(spec: DatasetSpec, task_name: str, model: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]

    @dg.asset(key=[spec.name, task_name, model],
              deps=[[spec.name, task_name], [spec.name, "graph"]],
              pool="gpu", group_name=spec.name,
              kinds={"lightgbm"} if model in GBDT_MODELS else {"pytorch"},
              description=f"{model} trained and evaluated on {task_name}; logged to MLflow.")
    def _train(context: dg.AssetExecutionContext, config: TrainingConfig, duckdb: DuckDBResource,
               paths: PathsResource, mlflow: MLflowResource,
               compute: ComputeResource) -> dg.MaterializeResult:
        p = paths.paths()
        with duckdb.get_connection() as con:
            graph = build_graph(con, spec, encoder_fit_cutoff(con, spec), FeatureConfig(), p.graphs / spec.name)
        tcfg = TrainConfig(model=model, hidden=config.hidden, layers=config.layers,
                           fanouts=tuple(config.fanouts), epochs=config.epochs,
                           batch_size=config.batch_size, lr=config.lr,
                           weight_decay=config.weight_decay, dropout=config.dropout,
                           patience=config.patience, seed=config.seed, device=compute.device,
                           max_steps_per_epoch=config.max_steps_per_epoch, nproc=config.nproc,
                           max_tokens=config.rgt_max_tokens, global_tokens=config.rgt_global_tokens,
                           local_layers=config.rgt_local_layers)
        gcfg = GBDTConfig(num_leaves=config.gbdt_num_leaves, learning_rate=config.gbdt_learning_rate,
                          min_child_samples=config.gbdt_min_child_samples,
                          feature_fraction=config.gbdt_feature_fraction)
        ctx = RunContext(paths=p, tracker=mlflow.tracker(p), dagster_run_id=context.run_id,
                         log=context.log.info, progress=False)
        result = run_model(duckdb.get_connection, spec, task, graph, model, tcfg, ctx,
                           seeds=config.seeds, gbdt_config=gcfg)
        metric = task.metric
        val, test = result["summary"][f"val_{metric}"], result["summary"][f"test_{metric}"]
        meta = {
            f"val_{metric}": val["mean"], f"test_{metric}": test["mean"],
            "seeds": len(result["runs"]), "experiment": result["experiment"],
            "seconds": sum(r["seconds"] for r in result["runs"]),
        }
        if config.seeds > 1:
            meta[f"test_{metric}_std"] = test["std"]
        curves = [pl for r in result["runs"][:1] for pl in r["plots"] if pl.endswith("curves.png")]
        if curves:
            meta["curves"] = dg.MetadataValue.path(curves[0])
        return dg.MaterializeResult(metadata=meta)

    return _train
