"""Task heads: seed embeddings [B, hidden] -> the task's prediction."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.task_kinds import task_kind

class TaskHead(nn.Module):
    r"""Maps seed embeddings to logits, values or target scores.

    With :math:`\mathrm{MLP}(\mathbf{z}) = W_2\,\mathrm{ReLU}(\mathrm{LN}(W_1 \mathbf{z} + b_1)) + b_2`:

    - binary: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}` (a logit)
    - multiclass: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}^C` (logits)
    - regression: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}`
    - link_prediction: :math:`s_{b,k} = \mathrm{MLP}(\mathbf{z}_b)^\top \mathbf{e}_k + c_k`,
      with a learned embedding :math:`\mathbf{e}_k` and bias :math:`c_k` per target row
      (the bias carries popularity; :meth:`set_target_prior` starts it at its log-odds).

    Args:
        task_type (str): the spec's task type, a key of
            :data:`pipeline.task_kinds.TASK_KINDS`.
        hidden (int): Size of the seed embeddings.
        num_classes (int, optional): C, for multiclass. (default: ``None``)
        num_targets (int, optional): Rows of the target table, for link
            prediction. (default: ``None``)

    Shapes:
        - **input:** :math:`[B, \text{hidden}]`
        - **output:** binary and regression :math:`[B]`; multiclass :math:`[B, C]`;
          link_prediction :math:`[B, \text{num\_targets}]`
    """

    def __init__(
        self, task_type: str, hidden: int, num_classes: int | None = None, num_targets: int | None = None
    ):
        super().__init__()
        self.kind = task_kind(task_type)
        out = self.kind.head_outputs(hidden, num_classes, num_targets)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
        if self.kind.ranks_targets:
            self.target_emb = nn.Embedding(num_targets, hidden)
            self.target_bias = nn.Parameter(torch.zeros(num_targets))
        else:
            self.target_emb = None
            self.target_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.target_emb is not None:
            # Small so that the initial scores are dominated by the bias (popularity).
            nn.init.normal_(self.target_emb.weight, std=0.02)
            nn.init.zeros_(self.target_bias)

    @torch.no_grad()
    def set_target_prior(self, counts: Tensor, examples: int) -> None:
        r"""Start each target's bias at the log-odds of its training frequency,
        :math:`c_k = \log\frac{n_k + 1/2}{N - n_k + 1/2}` for a target that is a true
        target of :math:`n_k` of :math:`N` training examples: before the embeddings have
        learned anything, every score is the calibrated popularity of its target."""
        if self.target_bias is None:
            raise ValueError(f"set_target_prior applies to link_prediction heads, not {self.kind.name}")
        if counts.shape != self.target_bias.shape:
            raise ValueError(
                f"counts has shape {tuple(counts.shape)}, expected ({self.target_bias.numel()},)"
            )
        n = counts.to(self.target_bias).clamp(0, examples)
        self.target_bias.copy_(torch.log((n + 0.5) / (examples - n + 0.5)))

    def forward(self, z: Tensor) -> Tensor:
        out = self.mlp(z)
        if self.target_emb is not None:
            return out @ self.target_emb.weight.t() + self.target_bias
        return out.squeeze(-1) if self.kind.scalar_output else out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.kind.name}, out={self.mlp[-1].out_features})"


class TargetHistory(nn.Module):
    r"""Identity-aware link scores: how, and how recently, each target row occurs in a
    seed's own sample.

    A two-tower score :math:`\mathrm{MLP}(\mathbf{z}_b)^\top \mathbf{e}_k` can only
    recommend again what a customer bought before if the customer's 64 numbers remember
    every product it bought. Here the seed's sampled subgraph says so directly. For seed
    :math:`b`, target row :math:`k` and edge type :math:`j` (the one edge from a sampled
    target node to its parent: an order item, a review, a return), let :math:`c_{b,k,j}`
    count the nodes of the target type in :math:`b`'s subgraph that are row :math:`k`
    and were reached through :math:`j`, and :math:`a_{b,k,j}` the days from the most
    recent of their parents to the seed's cutoff (:math:`\infty` when the parent table
    has no time or there is no such node). With

    .. math::
        \mathbf{f}_{b,k} = \big[\log(1 + c_{b,k,j}),\; e^{-a_{b,k,j}/30},\;
                               e^{-a_{b,k,j}/365}\big]_{j}

    the score gains

    .. math::
        h_{b,k} = \begin{cases} W_2\,\mathrm{ReLU}(W_1 \mathbf{f}_{b,k} + b_1) + b_2
                  & \text{if some } c_{b,k,j} > 0 \\ 0 & \text{otherwise.} \end{cases}

    The counts come from the same time-respecting sample as the rest of the model, so
    only rows up to the seed's cutoff count. This is the identity awareness of ID-GNN
    (You et al., "Identity-aware Graph Neural Networks", AAAI 2021), which RelBench's
    recommendation baselines use, reduced to counts and recency of the target's
    appearances so that it works with every graph model alike.

    Args:
        target_type (str): The target table's node type.
        edge_types (list[tuple[str, str, str]]): The edge types whose source is the
            target type, in a fixed order (:math:`j` indexes them).
        entity_type (str): The seeds' node type (it holds ``seed_time``).
        hidden (int): Width of the small MLP. (default: ``16``)

    Shapes:
        - **input:** a sampled batch (``batch[target_type].n_id``, ``.batch``; parents'
          ``time``; ``batch[entity_type].seed_time``) with :math:`B` seeds, and the
          number of target rows :math:`K`
        - **output:** :math:`[B, K]`, zero wherever the seed's sample lacks the target
    """

    SCALES_DAYS = (30.0, 365.0)

    def __init__(self, target_type: str, edge_types: list[tuple[str, str, str]], entity_type: str,
                 hidden: int = 16):
        super().__init__()
        if not edge_types or any(et[0] != target_type for et in edge_types):
            raise ValueError(f"TargetHistory needs edge types out of {target_type!r}, got {edge_types}")
        self.target_type, self.entity_type = target_type, entity_type
        self.edge_types = [tuple(et) for et in edge_types]
        width = len(edge_types) * (1 + len(self.SCALES_DAYS))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def features(self, batch, num_targets: int) -> tuple[Tensor, Tensor]:
        """(flat pair index b * K + k [P], features f [P, J * 3]) of the pairs that occur."""
        store = batch[self.target_type]
        n, n_paths = int(store.num_nodes or 0), len(self.edge_types)
        device = batch[self.entity_type].seed_time.device
        path = torch.full((n,), -1, dtype=torch.long, device=device)
        parent_time = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        for j, et in enumerate(self.edge_types):  # a handful of edge types, not rows
            if et not in batch.edge_types or not batch[et].edge_index.numel():
                continue
            src, dst = batch[et].edge_index
            path[src] = j
            if "time" in batch[et[2]]:
                parent_time[src] = batch[et[2]].time[dst].double()
        # the seeds themselves have no parent; a target row newer than the model's targets
        # (a test graph that reaches past the training graph) has no score to add to
        keep = ((path >= 0) & (store.n_id < num_targets if n else path >= 0)).nonzero().squeeze(1)
        seed = store.batch[keep] if n else keep
        age = (batch[self.entity_type].seed_time[seed].double() - parent_time[keep]) / 86_400.0
        pair = seed * num_targets + (store.n_id[keep] if n else keep)
        key, inverse, count = torch.unique(pair * n_paths + path[keep], return_inverse=True,
                                           return_counts=True)
        # the most recent parent per (pair, path); no time -> never
        newest = torch.full((key.numel(),), float("inf"), dtype=torch.float64, device=device)
        newest = newest.scatter_reduce(0, inverse, torch.nan_to_num(age, nan=float("inf")), "amin")
        pairs, pair_of_key = torch.unique(key // n_paths, return_inverse=True)
        col = key % n_paths
        feats = torch.zeros(pairs.numel(), n_paths * (1 + len(self.SCALES_DAYS)), device=device)
        feats[pair_of_key, col] = torch.log1p(count.float())
        for i, scale in enumerate(self.SCALES_DAYS, start=1):
            feats[pair_of_key, i * n_paths + col] = torch.exp(-newest.clamp(min=0) / scale).float()
        return pairs, feats

    def forward(self, batch, num_seeds: int, num_targets: int) -> Tensor:
        pairs, feats = self.features(batch, num_targets)
        weight = self.mlp[0].weight
        out = torch.zeros(num_seeds * num_targets, device=weight.device, dtype=weight.dtype)
        if pairs.numel():
            out = out.index_put((pairs,), self.mlp(feats).squeeze(-1).to(out.dtype))
        return out.view(num_seeds, num_targets)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.target_type}, paths={len(self.edge_types)})"
