"""The graph models' family: fitted by the Trainer on the temporal graph, saved as
weights-only checkpoints, scored by sampling each row's subgraph at its cutoff."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import datetime, timezone

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline.data.tasks import Examples
from pipeline.graph.views import hide_columns
from pipeline.training.distributed import resolve_device
from pipeline.training.family import FitOutcome, ModelEntry, ModelFamily, TrialOutcome
from pipeline.training.trainer import TrainConfig, Trainer, load_predictor, predict_scores

# `fanout` is the first hop's fanout; each further hop takes half as many neighbours
# (16 with 3 layers -> (16, 8, 4), the shipped default), so `layers` and the fanouts match.
GRAPH_SPACE = {
    "hidden": CategoricalDistribution((32, 64, 128)),
    "layers": IntDistribution(1, 3),
    "fanout": CategoricalDistribution((8, 16, 32)),
    "lr": FloatDistribution(3e-4, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
}
# For the models that read `heads`; every hidden width above is divisible by each.
ATTENTION_SPACE = {"heads": CategoricalDistribution((2, 4, 8))}


class RegistryMismatch(ValueError):
    """The warehouse no longer gives the features a registered model was trained on."""


class GraphFamily(ModelFamily):
    name = "graph"
    asset_kind = "pytorch"
    config_class = TrainConfig
    # The run's seed is the run's; the device is the compute resource's; `model` is the entry.
    launchpad_skip = ("seed", "device", "model")
    # The rgt-only settings, as the Launchpad has named them since they were added.
    launchpad_names = {"max_tokens": "rgt_max_tokens", "global_tokens": "rgt_global_tokens",
                       "local_layers": "rgt_local_layers", "max_hops": "rgt_max_hops"}
    needs_graph = True

    def default_config(self, entry: ModelEntry) -> TrainConfig:
        return TrainConfig(model=entry.name)

    def config_from_launchpad(self, entry, values, seed, device):
        return replace(super().config_from_launchpad(entry, values, seed, device), device=device)

    def search_space(self, entry: ModelEntry) -> dict:
        return {**GRAPH_SPACE, **entry.space}

    def trial_config(self, entry, base, params):
        cfg = replace(base, model=entry.name, **{k: v for k, v in params.items() if k != "fanout"})
        if "fanout" in params or "layers" in params:
            first = params.get("fanout", base.fanouts[0])
            cfg = replace(cfg, fanouts=tuple(max(first >> i, 1) for i in range(cfg.layers)))
        return cfg

    def base_params(self, entry, base, space):
        params = {name: base.fanouts[0] if name == "fanout" else getattr(base, name)
                  for name in space}
        if self.trial_config(entry, base, params) != replace(base, model=entry.name):
            raise ValueError(f"{entry.name}: the base configuration is not a point of the search "
                             f"space (fanouts {base.fanouts} are not the first hop's fanout halved "
                             f"at each of {base.layers} layers); use such fanouts or search "
                             "'fanouts' apart")
        return params

    def fit(self, entry, config, prep, checkpoint_dir, *, progress, log):
        trainer = Trainer(prep.training_graph(), prep.graph.feature_meta, prep.task,
                          prep.examples(), config, checkpoint_dir, build=entry.build,
                          progress=progress, log=log, split_data={"test": prep.test_graph()})
        res = trainer.fit()
        return FitOutcome({**asdict(config), "num_parameters": res.num_parameters},
                          res.val_metrics, res.test_metrics, res.history, res.test_true,
                          res.test_scores, res.checkpoint, res.train_seeds_per_s)

    def trial(self, entry, config, prep, workdir):
        """`Trainer.fit`'s epoch loop without its checkpoints and without its final
        evaluation of test; the best epoch's val metrics are the ones `fit` reports (it
        reloads that epoch's weights and scores val with the same seeded sampler)."""
        if config.nproc != 1:
            raise ValueError(f"tune trains in one process; the base config has nproc={config.nproc}")
        trainer = Trainer(prep.training_graph(), prep.graph.feature_meta, prep.task,
                          prep.examples(("train", "val")), config, workdir, build=entry.build,
                          progress=False)
        metric = prep.task.metric
        history, best, best_epoch, bad, best_metrics = [], None, 0, 0, {}
        for epoch in range(1, config.epochs + 1):
            if bad >= config.patience:
                break
            loss, _ = trainer._train_epoch(epoch)
            metrics, _ = trainer.evaluate("val")
            history.append({"epoch": epoch, "train_loss": loss, f"val_{metric}": metrics[metric]})
            if trainer._better(metrics[metric], best):
                best, best_epoch, bad, best_metrics = metrics[metric], epoch, 0, metrics
            else:
                bad += 1
        return TrialOutcome(best_metrics, best_epoch, history)

    def score_live(self, entry, prep, checkpoint, device):
        dev = resolve_device(device)
        ex = prep.examples(("live",))["live"]
        graph, data = prep.graph, prep.scoring_graph()
        predictor, config, y_mean, y_std = load_predictor(checkpoint, entry.build, graph.feature_meta,
                                                          data.metadata(), prep.task, dev)
        return predict_scores(predictor, data, prep.task, ex, config, dev, y_mean, y_std)

    def score_rows(self, entry, con, spec, task, graph, checkpoint, meta, entity, cutoff, device):
        if _canonical(graph.encoders.to_dict()) != _canonical(meta["encoders"]):
            raise RegistryMismatch(
                f"{entry.name} on {task.name}: the warehouse's rows up to the model's fit "
                f"cutoff {meta['fit_cutoff']} differ from those it was trained on (the encoders "
                "came out different), so its features would not mean what they meant; retrain it")
        # No row after the newest requested cutoff can matter; the trainer scored its splits
        # on the same truncation (at the test cutoff), which makes the scores reproduce exactly.
        newest = datetime.fromtimestamp(int(cutoff.max()), timezone.utc).replace(tzinfo=None)
        data = hide_columns(graph.truncate(newest), graph.feature_meta, task.remove_columns)
        dev = resolve_device(device)
        predictor, config, y_mean, y_std = load_predictor(checkpoint, entry.build, graph.feature_meta,
                                                          data.metadata(), task, dev)
        # Batches are formed in (cutoff, entity) order, as the trainer's splits are.
        order = np.lexsort((entity, cutoff))
        ex = Examples(torch.from_numpy(entity[order]), torch.from_numpy(cutoff[order]), None)
        scores = predict_scores(predictor, data, task, ex, config, dev, y_mean, y_std)
        out = np.empty_like(scores)
        out[order] = scores
        return out

    def explain(self, entry, prep, checkpoint, entity, cutoff, device="cpu"):
        """Integrated gradients over each row's sampled subgraph from the average row of
        up to 256 validation examples (`pipeline.training.graph_attribution`), in the units
        of the model's output."""
        from pipeline.training.graph_attribution import integrated_gradients, reference_shares

        newest = datetime.fromtimestamp(int(np.max(cutoff)), timezone.utc).replace(tzinfo=None)
        data = prep.graph.truncate(newest)
        dev = resolve_device(device)
        predictor, config, y_mean, y_std = load_predictor(
            checkpoint, entry.build, prep.graph.feature_meta, data.metadata(), prep.task, dev)
        val = prep.examples(("val",))["val"]
        pick = torch.linspace(0, len(val) - 1, min(256, len(val))).long()
        reference = reference_shares(predictor, data, prep.task.entity_table, val.entity[pick],
                                     val.cutoff[pick], config, dev) if len(val) else None
        out = integrated_gradients(predictor, data, prep.graph.feature_meta,
                                   prep.task.entity_table, torch.as_tensor(entity),
                                   torch.as_tensor(cutoff), config, dev, reference)
        if y_std != 1.0 or y_mean != 0.0:  # regression trains on standardized labels
            out.frame = out.frame.with_columns(out.frame["value"] * y_std)
            out.scores, out.base = out.scores * y_std + y_mean, out.base * y_std + y_mean
        return out


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


GRAPH = GraphFamily()
