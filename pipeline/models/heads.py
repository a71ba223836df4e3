"""Task heads: seed embeddings [B, hidden] -> the task's prediction."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The spec's task type names and their short forms.
TASK_TYPES = {
    "binary": "binary",
    "binary_classification": "binary",
    "multiclass": "multiclass",
    "multiclass_classification": "multiclass",
    "regression": "regression",
    "link_prediction": "link_prediction",
}


class TaskHead(nn.Module):
    r"""Maps seed embeddings to logits, values or target scores.

    With :math:`\mathrm{MLP}(\mathbf{z}) = W_2\,\mathrm{ReLU}(\mathrm{LN}(W_1 \mathbf{z} + b_1)) + b_2`:

    - binary: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}` (a logit)
    - multiclass: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}^C` (logits)
    - regression: :math:`\hat y = \mathrm{MLP}(\mathbf{z}) \in \mathbb{R}`
    - link_prediction: :math:`s_{b,k} = \mathrm{MLP}(\mathbf{z}_b)^\top \mathbf{e}_k + c_k`,
      with a learned embedding :math:`\mathbf{e}_k` and bias :math:`c_k` per target row
      (the bias carries popularity; :meth:`set_target_prior` starts it at log counts).

    Args:
        task_type (str): ``binary``, ``multiclass``, ``regression`` or
            ``link_prediction`` (the spec's ``*_classification`` names work too).
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
        if task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {task_type!r}; valid: {', '.join(TASK_TYPES)}")
        self.task_type = TASK_TYPES[task_type]
        if self.task_type == "multiclass" and (num_classes is None or num_classes < 2):
            raise ValueError(f"multiclass head needs num_classes >= 2, got {num_classes}")
        if self.task_type == "link_prediction" and (num_targets is None or num_targets < 1):
            raise ValueError(f"link_prediction head needs num_targets >= 1, got {num_targets}")
        out = {"binary": 1, "regression": 1, "multiclass": num_classes, "link_prediction": hidden}[
            self.task_type
        ]
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
        if self.task_type == "link_prediction":
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
    def set_target_prior(self, counts: Tensor) -> None:
        """Start the per-target bias at log(1 + count): targets seen often in training
        labels score higher before the embeddings have learned anything."""
        if self.target_bias is None:
            raise ValueError(f"set_target_prior applies to link_prediction heads, not {self.task_type}")
        if counts.shape != self.target_bias.shape:
            raise ValueError(
                f"counts has shape {tuple(counts.shape)}, expected ({self.target_bias.numel()},)"
            )
        self.target_bias.copy_(torch.log1p(counts.to(self.target_bias).clamp(min=0)))

    def forward(self, z: Tensor) -> Tensor:
        out = self.mlp(z)
        if self.task_type == "link_prediction":
            return out @ self.target_emb.weight.t() + self.target_bias
        if self.task_type == "multiclass":
            return out
        return out.squeeze(-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.task_type}, out={self.mlp[-1].out_features})"
