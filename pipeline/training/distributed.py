"""Multi-process training with torch.distributed: devices, sharding, collectives, launcher.

`Trainer.fit()` with `TrainConfig.nproc = N > 1` calls `launch`, which writes the
trainer's inputs (graph, examples, task, config) to a private temporary directory and
starts N workers with torchrun (`python -m torch.distributed.run --standalone`). Each
worker (pipeline/training/worker.py, run with `-m`) loads them memory-mapped, joins the process
group (gloo on CPU, NCCL on CUDA, one GPU per rank) and runs the same `Trainer.fit`, in
which DistributedDataParallel averages the gradients. Rank 0 evaluates, early-stops,
writes the checkpoints and hands its `TrainResult` back; the launching process returns
it, so the caller (and its MLflow logging) cannot tell one process from N but by speed.

How an epoch is split (`epoch_shard`): the train split is permuted with the epoch's seed,
cut into global batches of `batch_size`, and rank r takes positions r, r + N, ... of
every global batch. A global batch is therefore the same whatever N is, every example is
in exactly one rank's part, and every rank takes the same number of steps, so no rank
waits in an all-reduce that another never starts, and nothing is padded. Ranks may hold
one example more or less per step; each rank's loss is weighted by its share of the
global batch so that DDP's average over ranks is the mean loss over the global batch.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
# Rank 0 evaluates and writes checkpoints while the other ranks wait in a collective;
# that wait may be long on a big validation split. A rank that dies does not leave the
# others waiting this long: torchrun stops every worker as soon as one fails.
COLLECTIVE_TIMEOUT = timedelta(hours=6)
# torch prefixes the traceback of an exception on a rank with "[rank<r>]: ".
_RANK_ERROR = re.compile(r"\[rank\d+\]: [\w.]*(Error|Exception)\b")


def group() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a hash of `parts` (one independent stream per rank and step)."""
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def check_shardable(n: int, batch_size: int, world: int) -> None:
    """Every rank needs an example at every step: at least `world` examples and batch size."""
    if world < 1:
        raise ValueError(f"nproc must be at least 1, got {world}")
    if n < world:
        raise ValueError(f"the train split has {n} examples, fewer than the {world} processes "
                         f"that would share it; use nproc <= {n}")
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is split across {world} processes and must be "
                         f"at least {world}")


def epoch_shard(n: int, batch_size: int, world: int, rank: int, seed: int) -> list[tuple[Tensor, int]]:
    """This rank's part of one epoch: per step, (indices into the split, global batch size).

    perm = randperm(n) seeded with `seed` (the same on every rank); global batch k is
    perm[k*batch_size : (k+1)*batch_size], and a last one with fewer than `world`
    examples joins the one before it (so no rank is ever empty); rank r takes
    global_batch[r::world]. Sizes: ceil((g - r) / world) of a global batch of g.
    """
    check_shardable(n, batch_size, world)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
        del bounds[-2]
    return [(perm[a:b][rank::world], b - a) for a, b in zip(bounds, bounds[1:])]


def all_sum(t: Tensor) -> Tensor:
    """`t` summed over all ranks, in place (a no-op outside a process group)."""
    if group()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_int(value: int, device: torch.device) -> list[int]:
    """One integer from every rank, in rank order."""
    world = group()[1]
    if world == 1:
        return [int(value)]
    out = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(out, torch.tensor([int(value)], dtype=torch.long, device=device))
    return [int(t) for t in out]


def broadcast_ints(values: list[int], device: torch.device) -> list[int]:
    """Rank 0's `values` on every rank."""
    if group()[1] == 1:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device that `name` ("auto", "cpu", "cuda", "cuda:1") means on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available here")
    return device


def worker_device(name: str) -> torch.device:
    """The device of this rank: its own GPU (LOCAL_RANK) under CUDA, else the CPU."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index is not None and group()[1] > 1:
        raise ValueError(f"device '{name}' names one GPU, but {group()[1]} processes need one each; "
                         f"use device 'cuda' (or 'auto')")
    return torch.device("cuda", local)


# -- launcher ------------------------------------------------------------------------
def launch(trainer):
    """Run `trainer.fit()` (a pipeline.training.trainer.Trainer) in `trainer.config.nproc`
    processes (pipeline/training/worker.py); rank 0's TrainResult.

    Worker output (rank 0's epoch lines, torchrun's messages) goes to `trainer.log`.
    """
    cfg = trainer.config
    n = cfg.nproc
    check_shardable(len(trainer.splits["train"]), cfg.batch_size, n)
    if resolve_device(cfg.device).type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"nproc={n} on CUDA needs {n} GPUs (one per process); this machine has "
                         f"{torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory(prefix="relgraph-ddp-") as tmp:  # mode 0700: ours alone
        job = Path(tmp)
        torch.save(job_payload(trainer), job / "job.pt")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n}", "-m", "pipeline.training.worker", str(job)]
        # The workers import this checkout's pipeline/, installed or not.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        tail: deque[str] = deque(maxlen=40)
        errors: list[str] = []  # "[rank1]: ValueError: ...": what a failing rank raised
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                if _RANK_ERROR.match(line) and len(errors) < 10:
                    errors.append(line)
                trainer.log(line)
            code = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C, a Dagster run terminated): take the workers down with us.
            _stop(proc)
            raise
        if code != 0 or not (job / "result.pkl").exists():
            raise RuntimeError(f"distributed training of {cfg.model} with {n} processes failed "
                               f"(exit code {code}): " + "\n".join(errors or ["no rank raised"])
                               + "\nlast output:\n" + "\n".join(tail))
        with open(job / "result.pkl", "rb") as f:
            return pickle.load(f)  # written by our own rank 0 into our private directory


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the job file ------------------------------------------------------------------
def job_payload(trainer) -> dict:
    """What a rank needs to build the same Trainer, as tensors, numbers, strings, lists
    and dicts only, so that the rank loads it with `torch.load(weights_only=True)`:
    no class is unpickled, not even our own."""
    data = trainer.data
    task = asdict(trainer.task)
    task["horizon"] = trainer.task.horizon.total_seconds()
    return {"nodes": {t: data[t].to_dict() for t in data.node_types},
            "edges": [{"type": list(et), "attrs": data[et].to_dict()} for et in data.edge_types],
            "feature_meta": json.dumps(trainer.feature_meta), "task": task,
            "splits": {name: asdict(ex) for name, ex in trainer.splits.items()},
            "config": asdict(trainer.config), "checkpoint_dir": str(trainer.checkpoint_dir),
            "launcher": os.getpid()}


