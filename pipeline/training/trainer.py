"""Training loop for the graph models: device, AMP, early stopping, checkpoints, resume.

Every epoch is a pure function of (seed, epoch, weights at its start): its shuffle, its
neighbour samples and its dropout masks are seeded from (seed, epoch). So a run killed in
the middle of epoch k resumes from the checkpoint written after epoch k-1 and ends with
the same weights, and the same metrics, as a run that was never interrupted.

With `nproc` > 1 the same loop runs in that many processes under DistributedDataParallel
(pipeline/training/distributed.py: how the epoch is split, how the processes are started); rank 0
evaluates, early-stops for all of them and writes the checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pipeline.training import distributed
from pipeline.training.distributed import resolve_device
from pipeline.models.config import ModelConfig
from pipeline.models.heads import TargetHistory, TaskHead
from pipeline.graph.sampling import make_loader
from pipeline.data.spec import TaskSpec
from pipeline.data.tasks import Examples


@dataclass
class TrainConfig(ModelConfig):
    """One graph-model training run: the architecture (ModelConfig's fields) and how it is
    trained. Every field has a working default, written once (here or in ModelConfig)."""

    model: str = "sage"
    fanouts: tuple[int, ...] = (16, 8, 4)
    epochs: int = 12
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    device: str = "auto"
    strategy: str = "last"         # most recent neighbours: recency is what churn turns on
    max_steps_per_epoch: int = 0   # 0: the whole training split every epoch
    amp: bool = True               # bf16 autocast, on CUDA only
    nproc: int = 1                 # processes training together; batch_size is split across them

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fanouts = tuple(self.fanouts)  # JSON and the Launchpad give lists

    def key(self) -> str:
        """A short hash naming this configuration (checkpoints are per configuration)."""
        fields = asdict(self)
        # A field added after keys existed is left out while it holds its default, so the
        # keys written before it (and their checkpoints) stay valid; any other value (N
        # processes take other steps, another token cap is another model) gets its own.
        for f in dataclasses.fields(self):
            if f.name in LATER_FIELDS and fields[f.name] == f.default:
                del fields[f.name]
        blob = json.dumps(fields, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


LATER_FIELDS = ("nproc", "max_tokens", "global_tokens", "local_layers", "aggr", "norm", "act",
                "max_hops", "time_periods_days")


@dataclass
class TrainResult:
    model: str
    config: dict
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    best_epoch: int
    history: list[dict]
    seconds: float
    train_seeds_per_s: float
    checkpoint: str
    num_parameters: int
    val_scores: np.ndarray = field(repr=False, default=None)
    test_scores: np.ndarray = field(repr=False, default=None)
    val_true: object = field(repr=False, default=None)
    test_true: object = field(repr=False, default=None)
    # nproc > 1: per epoch, the train examples each rank took ("per_rank") and the fewest
    # and most times any one example was taken across ranks ("min", "max"; 1 and 1 when
    # every example was taken exactly once).
    coverage: list[dict] = field(default_factory=list)


class Predictor(nn.Module):
    """A graph model (seed embeddings [B, hidden]) followed by the task head; for link
    prediction, plus the seed's own history of each target (`TargetHistory`)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, history: TargetHistory | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.history = history

    def forward(self, batch) -> torch.Tensor:
        out = self.head(self.encoder(batch))
        if self.history is not None:
            out = out + self.history(batch, out.shape[0], out.shape[1]).to(out.dtype)
        return out


# Builds a graph model from a graph's schema and its configuration:
# (feature_meta, metadata, entity_type, config) -> module with forward(batch) -> [B, hidden].
GraphBuilder = Callable[[dict, tuple, str, ModelConfig], nn.Module]


def build_predictor(build: GraphBuilder, config: TrainConfig, feature_meta: dict, metadata,
                    task: TaskSpec, num_targets: int | None = None,
                    num_classes: int | None = None) -> Predictor:
    """The model `build` makes of `config`, with the task's head (the model table's
    entry for `config.model` holds `build`)."""
    encoder = build(feature_meta, metadata, task.entity_table, config)
    head = TaskHead(task.type, config.hidden, num_classes=num_classes, num_targets=num_targets)
    history = None
    if task.kind.ranks_targets:
        paths = [et for et in metadata[1] if et[0] == task.target_table]
        history = TargetHistory(task.target_table, paths, task.entity_table) if paths else None
    return Predictor(encoder, head, history)


def _link_targets(ex: Examples, idx: torch.Tensor, num_targets: int) -> torch.Tensor:
    """Multi-hot [len(idx), num_targets] of each example's true targets (no per-row loop)."""
    start, end = ex.target_ptr[idx], ex.target_ptr[idx + 1]
    counts = end - start
    rows = torch.repeat_interleave(torch.arange(idx.numel()), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    cols = ex.target_ids[torch.repeat_interleave(start, counts) + offsets]
    out = torch.zeros(idx.numel(), num_targets)
    out[rows, cols] = 1.0
    return out


def link_truth(ex: Examples) -> list[np.ndarray]:
    """True target ids per example, as the metric functions take them."""
    ptr, ids = ex.target_ptr.numpy(), ex.target_ids.numpy()
    return np.split(ids, ptr[1:-1])


class Trainer:
    """Trains one model on one task; `fit` returns a TrainResult.

    `data` is the graph that training and validation sample from; `split_data` may give
    another graph for a split (the test split under `test_context: rolling`, or a frozen
    graph with bare nodes: `PreparedTask.test_graph`).

    With `config.nproc` > 1, in a plain process the Trainer is a launcher: `fit` starts
    the processes (its own model stays on the CPU and gets the best weights at the end);
    inside the process group they form, it is one rank, and `fit` returns the result on
    rank 0 and None elsewhere.
    """

    def __init__(self, data, feature_meta: dict, task: TaskSpec, splits: dict[str, Examples],
                 config: TrainConfig, checkpoint_dir: Path, *, build: GraphBuilder,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 split_data: dict | None = None):
        self.task, self.splits, self.config, self.build = task, splits, config, build
        self.rank, self.world = distributed.group() if config.nproc > 1 else (0, 1)
        if self.world not in (1, config.nproc):
            raise ValueError(f"nproc={config.nproc}, but the process group has {self.world} processes")
        self.launcher = config.nproc > 1 and self.world == 1
        if self.launcher:
            self.device = torch.device("cpu")  # the workers use the GPUs, not this process
        else:
            self.device = distributed.worker_device(config.device) if self.world > 1 else \
                resolve_device(config.device)
        self.data = data.to(self.device)
        self.split_data = {split: g.to(self.device) for split, g in (split_data or {}).items()
                           if g is not data}
        self.progress, self.log = progress, log or (lambda msg: None)
        if self.rank != 0:
            self.progress, self.log = False, lambda msg: None
        self.checkpoint_dir = Path(checkpoint_dir)
        self.feature_meta = feature_meta
        self.num_targets = self.data[task.target_table].num_nodes if task.kind.ranks_targets else None
        self.num_classes = task.kind.num_classes(task, splits["train"].label)
        torch.manual_seed(config.seed)
        self.model = build_predictor(build, config, feature_meta, self.data.metadata(), task,
                                     self.num_targets, self.num_classes).to(self.device)
        if task.kind.ranks_targets:
            # popular targets start ahead (train labels only)
            self.model.head.set_target_prior(torch.bincount(splits["train"].target_ids,
                                                            minlength=self.num_targets),
                                             len(splits["train"]))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.y_mean, self.y_std = (task.kind.label_scale(splits["train"].label)
                                   if splits["train"].label is not None else (0.0, 1.0))
        # The module that takes training steps: under DDP a wrapper around the same
        # parameters, which averages their gradients over the ranks in backward(). Some
        # parameters take no part in a step (the last layer's updates of node types other
        # than the entity's, relations absent from a batch), hence find_unused_parameters.
        self.step_model = self.model
        if self.world > 1:
            self.step_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.coverage: list[dict] = []

    # -- batches --------------------------------------------------------------
    def _loader(self, ex: Examples, shuffle: bool, seed: int):
        return make_loader(self.data, self.task.entity_table, ex.entity.to(self.device),
                           ex.cutoff.to(self.device), list(self.config.fanouts),
                           batch_size=self.config.batch_size, shuffle=shuffle,
                           strategy=self.config.strategy, seed=seed)

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _loss(self, out: torch.Tensor, ex: Examples, idx: torch.Tensor) -> torch.Tensor:
        out, kind = out.float(), self.task.kind
        if kind.ranks_targets:
            y = _link_targets(ex, idx.cpu(), self.num_targets).to(out.device)
        else:
            y = kind.scale_labels(ex.label[idx].to(out.device), self.y_mean, self.y_std)
        return kind.loss(out, y, self.task.metric)

    # -- epochs ---------------------------------------------------------------
    def _step(self, batch, ex: Examples, idx: torch.Tensor, weight: float = 1.0) -> float:
        """One optimizer step on `batch` (examples `idx` of `ex`); the batch's mean loss.

        `weight` scales the loss that is back-propagated (see `_train_epoch_ranks`)."""
        with self._autocast():
            out = self.step_model(batch)
        loss = self._loss(out, ex, idx)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        seed = self.config.seed * 100_003 + epoch
        if self.world > 1:
            return self._train_epoch_ranks(epoch, seed)
        torch.manual_seed(seed)
        self.model.train()
        ex = self.splits["train"]
        loader = self._loader(ex, shuffle=True, seed=seed)
        total, seen, steps = 0.0, 0, 0
        bar = tqdm(loader, desc=f"{self.config.model} epoch {epoch}", leave=False,
                   disable=not self.progress, unit="batch")
        for batch in bar:
            batch = batch.to(self.device)
            idx = batch[self.task.entity_table].input_id.cpu()
            total += self._step(batch, ex, idx) * idx.numel()
            seen += idx.numel()
            steps += 1
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if self.config.max_steps_per_epoch and steps >= self.config.max_steps_per_epoch:
                break
        return total / max(seen, 1), seen

    def _train_epoch_ranks(self, epoch: int, seed: int) -> tuple[float, int]:
        """This rank's part of epoch `epoch` (see `distributed.epoch_shard`); the mean loss
        and the number of examples over all ranks.

        Rank r's loss over its n_r examples of a global batch of g is back-propagated with
        weight n_r * world / g: DDP averages gradients over the ranks, so the step follows
        the gradient of the mean loss over the whole global batch, as one process would.
        Dropout and neighbour samples are seeded from (seed, rank) and (seed, rank, step).
        """
        ex, cfg = self.splits["train"], self.config
        steps = distributed.epoch_shard(len(ex), cfg.batch_size, self.world, self.rank, seed)
        if cfg.max_steps_per_epoch:
            steps = steps[:cfg.max_steps_per_epoch]
        torch.manual_seed(distributed.derive_seed(seed, self.rank))
        self.step_model.train()
        counts = torch.zeros(len(ex), dtype=torch.long, device=self.device)
        total = 0.0
        for step, (part, global_size) in enumerate(steps):
            loader = make_loader(self.data, self.task.entity_table, ex.entity[part],
                                 ex.cutoff[part], list(cfg.fanouts),
                                 batch_size=part.numel(), shuffle=False, strategy=cfg.strategy,
                                 seed=distributed.derive_seed(seed, self.rank, step))
            batch = next(iter(loader)).to(self.device)
            # the examples this batch really holds, as indices into the split
            idx = part[batch[self.task.entity_table].input_id.cpu()]
            loss = self._step(batch, ex, idx, weight=idx.numel() * self.world / global_size)
            total += loss * idx.numel()
            counts.index_add_(0, idx.to(self.device), torch.ones_like(idx, device=self.device))
        per_rank = distributed.all_gather_int(int(counts.sum()), self.device)
        distributed.all_sum(counts)
        loss_sum = distributed.all_sum(torch.tensor([total], dtype=torch.float64, device=self.device))
        self.coverage.append({"epoch": epoch, "per_rank": per_rank,
                              "min": int(counts.min()), "max": int(counts.max())})
        seen = sum(per_rank)
        return float(loss_sum) / max(seen, 1), seen

    def predict(self, ex: Examples, data=None) -> np.ndarray:
        """Scores for every example of `ex`, in order (see `predict_scores`)."""
        return predict_scores(self.model, self.data if data is None else data, self.task, ex,
                              self.config, self.device, self.y_mean, self.y_std)

    def truth(self, ex: Examples):
        return link_truth(ex) if self.task.kind.ranks_targets else ex.label.numpy()

    def evaluate(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        ex = self.splits[split]
        scores = self.predict(ex, self.split_data.get(split))
        return self.task.kind.compute_metrics(self.truth(ex), scores), scores

    def _better(self, new: float, best: float | None) -> bool:
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return not math.isnan(new)
        return new < best if self.task.lower_is_better else new > best

    # -- checkpoints ----------------------------------------------------------
    def _ckpt_path(self, name: str) -> Path:
        return self.checkpoint_dir / self.config.key() / name

    def _save(self, name: str, state: dict) -> None:
        path = self._ckpt_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint

    def _load(self, name: str) -> dict | None:
        path = self._ckpt_path(name)
        if not path.exists():
            return None
        return torch.load(path, map_location=self.device, weights_only=True)

    def fit(self) -> TrainResult | None:
        if self.launcher:
            result = distributed.launch(self)
            best_state = self._load("best.pt")
            if best_state is not None:
                self.model.load_state_dict(best_state["model"])
            if "test" in self.split_data and result is not None:
                # the ranks scored test on the training graph; this split has its own
                result.test_metrics, result.test_scores = self.evaluate("test")
            return result
        cfg, metric = self.config, self.task.metric
        start_epoch, history, best, best_epoch, bad = 1, [], None, 0, 0
        state = self._load("last.pt")
        if state is not None and set(state["model"]) != set(self.model.state_dict()):
            # Same configuration, other parameters: written before this model changed.
            self.log(f"{self._ckpt_path('last.pt')}: written by another version of {cfg.model} "
                     f"(its parameters differ); training from scratch")
            state = None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
            best, best_epoch, bad = state["best"], state["best_epoch"], state["bad"]
            self.log(f"resuming {cfg.model} from epoch {state['epoch']} ({self._ckpt_path('last.pt')})")
        t0, train_seen, train_time = time.perf_counter(), 0, 0.0
        for epoch in range(start_epoch, cfg.epochs + 1):
            if bad >= cfg.patience:
                break
            te = time.perf_counter()
            loss, seen = self._train_epoch(epoch)
            train_time += time.perf_counter() - te
            train_seen += seen
            if self.rank != 0:
                bad, = distributed.broadcast_ints([bad], self.device)  # rank 0's decision
                continue
            val_metrics, _ = self.evaluate("val")
            value = val_metrics[metric]
            history.append({"epoch": epoch, "train_loss": loss, f"val_{metric}": value})
            if self._better(value, best):
                best, best_epoch, bad = value, epoch, 0
                self._save("best.pt", {"model": self.model.state_dict(), "epoch": epoch,
                                       "config": json.dumps(asdict(cfg)), "y_mean": self.y_mean,
                                       "y_std": self.y_std, "num_targets": self.num_targets or 0,
                                       "num_classes": self.num_classes or 0,
                                       "feature_meta": json.dumps(self.feature_meta)})
            else:
                bad += 1
            self._save("last.pt", {"model": self.model.state_dict(),
                                   "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                                   "history": json.dumps(history), "best": best,
                                   "best_epoch": best_epoch, "bad": bad})
            self.log(f"{cfg.model} epoch {epoch}: train_loss={loss:.4f} val_{metric}={value:.4f}"
                     f"{' (best)' if best_epoch == epoch else ''}")
            if self.world > 1:
                distributed.broadcast_ints([bad], self.device)
        if self.rank != 0:
            return None
        best_state = self._load("best.pt")
        if best_state is not None:
            self.model.load_state_dict(best_state["model"])
        val_metrics, val_scores = self.evaluate("val")
        test_metrics, test_scores = self.evaluate("test")
        return TrainResult(
            model=cfg.model, config=asdict(cfg), val_metrics=val_metrics,
            test_metrics=test_metrics, best_epoch=best_epoch, history=history,
            seconds=time.perf_counter() - t0,
            train_seeds_per_s=train_seen / train_time if train_time else float("nan"),
            checkpoint=str(self._ckpt_path("best.pt")),
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            val_scores=val_scores, test_scores=test_scores,
            val_true=self.truth(self.splits["val"]), test_true=self.truth(self.splits["test"]),
            coverage=self.coverage)


@torch.no_grad()
def predict_scores(model: nn.Module, data, task: TaskSpec, ex: Examples, config: TrainConfig,
                   device: torch.device, y_mean: float = 0.0, y_std: float = 1.0) -> np.ndarray:
    """Scores for every example, in order: probabilities (binary), values (regression),
    class probabilities [n, C] (multiclass) or link scores [n, num_targets]. Sampling
    uses the config's seed, so scoring twice gives the same numbers."""
    model.eval()
    data = data.to(device)
    loader = make_loader(data, task.entity_table, ex.entity.to(device), ex.cutoff.to(device),
                         list(config.fanouts), batch_size=config.batch_size, shuffle=False,
                         strategy=config.strategy, seed=config.seed)
    amp = config.amp and device.type == "cuda"
    outs = []
    for batch in loader:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(model(batch).float().cpu())
    out = torch.cat(outs) if outs else torch.empty(0)
    return task.kind.to_scores(out, y_mean, y_std).numpy()


def load_predictor(checkpoint: str | Path, build: GraphBuilder, feature_meta: dict, metadata,
                   task: TaskSpec, device: torch.device | None = None):
    """Rebuild a trained model from its best.pt: (predictor, config, y_mean, y_std)."""
    device = device or torch.device("cpu")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if "feature_meta" in state:
        changed = feature_changes(json.loads(state["feature_meta"]), feature_meta)
        if changed:
            raise ValueError(f"{checkpoint}: the graph's features differ from the ones the model "
                             f"was trained on ({'; '.join(changed)}); retrain the model on this graph")
    config = TrainConfig(**json.loads(state["config"]))
    model = build_predictor(build, config, feature_meta, metadata, task,
                            int(state["num_targets"]) or None, int(state["num_classes"]) or None)
    model.load_state_dict(state["model"])
    return model.to(device), config, float(state["y_mean"]), float(state["y_std"])


def feature_changes(trained: dict, current: dict) -> list[str]:
    """What differs between two graphs' feature metadata, per table, in words.

    Same widths with other columns would load without error and feed every weight the
    wrong column, so names and category counts are compared, not only shapes.
    """
    out = []
    for table in sorted(set(trained) | set(current)):
        if table not in current or table not in trained:
            out.append(f"table {table} {'is gone' if table not in current else 'is new'}")
            continue
        old, new = trained[table], current[table]
        for kind in ("num", "cat", "text", "ts"):
            was, now = old["names"][kind], new["names"][kind]
            added = [c for c in now if c not in was]
            gone = [c for c in was if c not in now]
            if added or gone:
                out.append(f"{table}: {kind} columns" + (f" new {added[:5]}" if added else "")
                           + (f" missing {gone[:5]}" if gone else ""))
            elif was != now:
                out.append(f"{table}: {kind} columns in another order")
        if old["cat"] != new["cat"] and old["names"]["cat"] == new["names"]["cat"]:
            out.append(f"{table}: category counts {old['cat']} became {new['cat']}")
    return out
