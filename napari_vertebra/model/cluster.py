"""Cluster job files for a run folder: a torchrun script and a Slurm job (no Qt).

:func:`write_cluster_job` writes ``RUN/job_config.yaml``, ``RUN/run.sh`` (torchrun on one
machine, resuming when ``last.pt`` exists) and ``RUN/job.sbatch`` (Slurm), so a run
prepared in napari can be copied to a GPU machine; "Load run" shows it back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["JOB_CONFIG_NAME", "write_cluster_job"]

JOB_CONFIG_NAME = "job_config.yaml"
_REPO_ROOT = Path(__file__).resolve().parents[2]


_RUN_SH = """#!/usr/bin/env bash
# Train napari-vertebra on a GPU machine with torchrun (one process per GPU), like
# training/torchrun.sh of the source tree. Written by napari's "Train model" widget on
# {date}. Copy this run folder{data_note} to the machine and run:  bash run.sh
# Run again (or re-submit the job) to continue from last.pt; DATA=/path bash run.sh uses
# another dataset folder; NGPU=2 sets the number of GPUs (default: all nvidia-smi lists).
set -euo pipefail
RUN="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
DATA="${{DATA:-{data}}}"
if [ -z "${{NGPU:-}}" ]; then
  NGPU="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
  [ "${{NGPU:-0}}" -ge 1 ] || NGPU=1
fi
EXTRA=()
if [ -f "$RUN/last.pt" ]; then EXTRA+=(--resume); fi
exec torchrun --standalone --nnodes=1 --nproc_per_node="$NGPU" \\
  -m napari_vertebra.cli train \\
  --config "$RUN/{config}" --data "$DATA" -o "$RUN" --device cuda ${{EXTRA[@]+"${{EXTRA[@]}}"}}
"""

_SBATCH = """#!/bin/bash
# Slurm job for napari-vertebra training; submit from this run folder:  sbatch job.sbatch
# Written by napari's "Train model" widget on {date}. Adjust partition, time and the
# environment activation to your cluster.
#SBATCH --job-name=napari-vertebra
#SBATCH --nodes=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(dirname "$0")}}"
# source /path/to/venv/bin/activate   # an environment with napari-vertebra[train]
export NGPU="${{SLURM_GPUS_ON_NODE:-1}}"
bash ./run.sh
"""


def write_cluster_job(
    run_dir: str | os.PathLike, config: Mapping[str, Any], data_dir: str | os.PathLike
) -> list[Path]:
    """Write ``RUN/job_config.yaml``, ``RUN/run.sh`` (torchrun) and ``RUN/job.sbatch``.

    ``data_dir`` inside ``run_dir`` is written relative to it (so the folder can be
    copied as a whole); elsewhere its absolute path is used (override with DATA=...).
    When the checkout has ``training/torchrun.sh`` or ``training/slurm.sbatch``, they
    are copied beside as references. Returns the written paths.
    """
    import yaml

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    try:
        rel = data.relative_to(run.resolve())
        data_text, data_note = f"$RUN/{rel.as_posix()}", " (it holds the dataset)"
    except ValueError:
        data_text, data_note = str(data), f" and the dataset {data}"
    date = time.strftime("%Y-%m-%d %H:%M")
    written = []
    cfg_path = run / JOB_CONFIG_NAME
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    cfg_path.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
    written.append(cfg_path)
    sh = run / "run.sh"
    sh.write_text(
        _RUN_SH.format(date=date, data=data_text, data_note=data_note, config=JOB_CONFIG_NAME),
        encoding="utf-8",
    )
    sh.chmod(0o755)
    written.append(sh)
    sb = run / "job.sbatch"
    sb.write_text(_SBATCH.format(date=date), encoding="utf-8")
    written.append(sb)
    for name in ("torchrun.sh", "slurm.sbatch"):
        src = _REPO_ROOT / "training" / name
        if src.is_file():
            dst = run / f"reference_{name}"
            dst.write_text(src.read_text(encoding="utf-8"))
            written.append(dst)
    return written
