"""DistributedDataParallel training through torchrun, on CPU (gloo): two processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from napari_vertebra.model.build import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_data, tiny_overrides, tmp_path):
    """The launch of training/torchrun.sh, with gloo on CPU instead of NCCL on GPUs: each
    rank trains on its shard of the data (4 train images, batch 2, 2 ranks: one step per
    epoch instead of two), rank 0 writes the run, and the run resumes under torchrun."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_overrides), encoding="utf-8")
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "training" / "train.py"), "--config", str(cfg), "--data", str(tiny_data),
        "-o", str(run), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def launch(*extra: str) -> None:
        p = subprocess.run(
            [*cmd, *extra],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
            encoding="utf-8",
            errors="replace",
        )
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    launch("--epochs", "1")
    launch("--epochs", "2", "--resume")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2
    # no "module." prefix: the checkpoint loads into a plain model
    assert not any(k.startswith("module.") for k in ckpt["model"])
    with open(run / "log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [1, 2]  # one step per epoch per rank
