"""DistributedDataParallel training through torchrun, on CPU (gloo): two processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from napari_vertebra.model.build import load_checkpoint
from napari_vertebra.model.data import epoch_steps

ROOT = Path(__file__).resolve().parents[2]

#: Rank 1 alone asks to stop after its first step: the decision must reach rank 0 too.
_STOP_ON_ONE_RANK = """
import sys, threading
import torch.distributed as dist
from napari_vertebra.model.config import load_config
from napari_vertebra.model.device import dist_info
from napari_vertebra.model.train import train

cfg_path, data, run = sys.argv[1:4]
rank = dist_info().rank
stop = threading.Event()

def progress(fraction, message):
    if rank == 1 and message.startswith("epoch 1/2 step 1/"):
        stop.set()

out = train(load_config(cfg_path), data, run, progress=progress, stop=stop, device="cpu")
print(f"rank {rank} stopped {out['stopped']}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_processes_stop_on_one_rank_and_resume(tiny_data, tiny_overrides, tmp_path):
    """The launch of training/torchrun.sh, with gloo on CPU instead of NCCL on GPUs: each
    rank trains on its share of the data (4 train images, batch 1, 2 ranks: two steps per
    epoch). One rank alone sees the stop request after the first step; both stop there
    (the decision is all-reduced), rank 0 writes a checkpoint in the middle of epoch 1
    with both ranks' random states, and the run resumes under torchrun through the
    command line, with more epochs, taking exactly the steps an uninterrupted run takes."""
    over = {**tiny_overrides, "batch_size": 1, "epochs": 2}
    over.pop("max_steps_per_epoch")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(over), encoding="utf-8")
    script = tmp_path / "stop_on_rank1.py"
    script.write_text(textwrap.dedent(_STOP_ON_ONE_RANK), encoding="utf-8")
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def launch(*args: str) -> str:
        p = subprocess.run(
            [*torchrun, *args],
            env=env,
            capture_output=True,
            timeout=400,  # a rank left waiting in all-reduce would hang until then
            check=False,
            encoding="utf-8",
            errors="replace",
        )
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout

    out = launch(str(script), str(cfg), str(tiny_data), str(run))
    assert "rank 0 stopped True" in out and "rank 1 stopped True" in out
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]) == (0, 1, 1)
    assert ckpt["world"] == 2 and len(ckpt["rng"]) == 2
    assert not (run / "log.csv").exists()  # no epoch finished

    launch(str(ROOT / "training" / "train.py"), "--config", str(cfg), "--data",
           str(tiny_data), "-o", str(run), "--device", "cpu", "--resume",
           "--epochs", "3")  # fmt: skip
    ckpt = load_checkpoint(run / "last.pt")
    steps, _ = epoch_steps(4, 1, 2)
    assert steps == 2
    assert ckpt["epoch"] == 3 and ckpt["step"] == 3 * steps
    assert max(int(s["step"]) for s in ckpt["optimizer"]["state"].values()) == 3 * steps
    # no "module." prefix: the checkpoint loads into a plain model
    assert not any(k.startswith("module.") for k in ckpt["model"])
    with open(run / "log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    # the learning rate of the global batch: lr x 2 processes (lr_scaling: linear)
    assert float(rows[0]["lr"]) == pytest.approx(2 * over["lr"])


@pytest.mark.slow
def test_collective_stop_decision(tmp_path):
    """stop_requested all-reduces the flag: a rank that does not see it stops too."""
    script = tmp_path / "flag.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torch.distributed as dist
            from napari_vertebra.model.engine import stop_requested

            dist.init_process_group("gloo")
            rank = dist.get_rank()

            class Flag:
                def __init__(self, v):
                    self.v = v

                def is_set(self):
                    return self.v

            both = [stop_requested(Flag(rank == r), torch.device("cpu"), True) for r in (0, 1)]
            none = stop_requested(Flag(False), torch.device("cpu"), True)
            print(f"rank {rank} {both} {none}", flush=True)
            dist.destroy_process_group()
            """
        ),
        encoding="utf-8",
    )
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=300,
        check=False, encoding="utf-8", errors="replace",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} [True, True] False" in p.stdout
