"""The training path on CUDA: graph tensors, sampler, models, bf16 autocast and metrics.

Runs only where torch sees a CUDA device (`pytest tests/test_gpu.py` on a GPU machine);
everywhere else every test is skipped with that reason. The data is the synthetic shop at
1,000 customers of tests/test_distributed.py (its `shop` fixture).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from test_distributed import shop  # noqa: F401  (the module-scoped fixture)

from pipeline.graph.sampling import make_loader
from pipeline.training.distributed import resolve_device
from pipeline.training.trainer import TrainConfig, build_predictor
from pipeline.training.zoo import GRAPH_MODELS, make_trainer, model_entry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; this machine has none")

SMALL = TrainConfig(hidden=32, epochs=2, max_steps_per_epoch=3, batch_size=256, device="cuda")


def test_auto_device_is_cuda():
    assert resolve_device("auto").type == "cuda"


def test_sampler_samples_on_the_gpu(shop):
    data, _, task, splits = shop
    gpu = data.to("cuda")
    ex = splits["train"]
    batch = next(iter(make_loader(gpu, task.entity_table, ex.entity.cuda(), ex.cutoff.cuda(),
                                  list(SMALL.fanouts), batch_size=64, strategy="last")))
    for t in batch.node_types:
        assert batch[t].batch.is_cuda and batch[t].degree.is_cuda, t
    for et in batch.edge_types:
        assert batch[et].edge_index.is_cuda, et


@pytest.mark.parametrize("model", GRAPH_MODELS)
def test_every_graph_model_trains_on_cuda_in_bf16(shop, tmp_path, model):
    data, meta, task, splits = shop
    trainer = make_trainer(data, meta, task, splits, dataclasses.replace(SMALL, model=model),
                      tmp_path, progress=False)
    assert next(trainer.model.parameters()).is_cuda
    result = trainer.fit()
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert 0.0 <= result.val_metrics["auroc"] <= 1.0 and 0.0 <= result.test_metrics["auroc"] <= 1.0
    torch.cuda.synchronize()
    print(f"{model}: {result.train_seeds_per_s:,.0f} train seeds/s on {torch.cuda.get_device_name(0)}")


@pytest.mark.parametrize("model", GRAPH_MODELS)
def test_cuda_and_cpu_give_the_same_scores(shop, model):
    """Same weights, same sample: fp32 scores agree across devices."""
    data, meta, task, splits = shop
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, model=model)
    net = build_predictor(model_entry(cfg.model).build, cfg, meta, data.metadata(), task).eval()
    ex = splits["val"]

    def scores(device: str) -> torch.Tensor:
        loader = make_loader(data.to(device), task.entity_table, ex.entity.to(device),
                             ex.cutoff.to(device), list(cfg.fanouts), batch_size=128, strategy="last")
        with torch.no_grad():
            return torch.cat([net.to(device)(b.to(device)).float().cpu() for b in loader])

    torch.testing.assert_close(scores("cuda"), scores("cpu"), atol=2e-3, rtol=1e-3)
