"""One rank of a multi-process training run, started by torchrun (see distributed.py).

`python -m pipeline.training.worker JOB_DIR`: loads the job file that the launching
`Trainer` wrote (weights only, memory-mapped), joins the process group, runs the same
`Trainer.fit` and, on rank 0, hands the result back through JOB_DIR.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch_geometric.data import HeteroData

from pipeline.data.spec import TaskSpec
from pipeline.data.tasks import Examples
from pipeline.training.distributed import COLLECTIVE_TIMEOUT, resolve_device
from pipeline.training.trainer import Trainer, TrainConfig
from pipeline.training.zoo import model_entry


def trainer_inputs(payload: dict) -> tuple[HeteroData, dict, TaskSpec, dict[str, Examples], TrainConfig]:
    """The inverse of `job_payload`: (graph, feature metadata, task, splits, config)."""
    data = HeteroData()
    for node_type, attrs in payload["nodes"].items():
        data[node_type].update(attrs)
    for edge in payload["edges"]:
        data[tuple(edge["type"])].update(edge["attrs"])
    task = TaskSpec(**{**payload["task"], "horizon": timedelta(seconds=payload["task"]["horizon"])})
    splits = {name: Examples(**ex) for name, ex in payload["splits"].items()}
    config = TrainConfig(**payload["config"])
    return data, json.loads(payload["feature_meta"]), task, splits, config


def _exit_without(launcher: int, job: Path) -> None:
    """End this rank if the launching process disappears, and remove its job directory.

    A launcher killed outright (SIGKILL, an OOM kill) can neither stop torchrun, which
    would train on for nobody, nor remove the copy of the graph it wrote; a rank that
    exits makes torchrun stop the others and exit.
    """
    def watch() -> None:
        while True:
            time.sleep(2)
            try:
                os.kill(launcher, 0)
            except ProcessLookupError:
                # No message: whoever would have read it went with the launcher (and
                # writing to its closed pipe would fail before the exit).
                shutil.rmtree(job, ignore_errors=True)
                os._exit(1)
            except PermissionError:
                pass  # alive, under another user

    threading.Thread(target=watch, name="relgraph-launcher-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """One rank (started by torchrun, which sets RANK, LOCAL_RANK, WORLD_SIZE)."""
    job = Path(argv[0])
    # Memory-mapped: the ranks share the graph's pages.
    payload = torch.load(job / "job.pt", weights_only=True, mmap=True)
    _exit_without(payload["launcher"], job)
    data, feature_meta, task, splits, cfg = trainer_inputs(payload)
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    trainer = Trainer(data, feature_meta, task, splits, cfg, Path(payload["checkpoint_dir"]),
                      build=model_entry(cfg.model).build, progress=False,
                      log=lambda msg: print(msg, flush=True))
    result = trainer.fit()
    if trainer.rank == 0:
        tmp = job / "result.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, job / "result.pkl")
    # Teardown. No rank closes its connections while rank 0 is still evaluating: hence
    # the barrier. Then the DDP wrapper goes first, while the process group is still
    # registered: were it the group's last owner, the group's destructor would run
    # holding the GIL and wait for gloo's worker thread, which may itself be waiting for
    # the GIL (a deadlock at exit, seen here in about one run of three).
    dist.barrier()
    del trainer
    gc.collect()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
