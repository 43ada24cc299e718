"""Train the starter model in one command: real scans -> 3D-augmented MIPs -> Mask R-CNN.

    .venv/bin/python training/starter.py -o runs/starter            # the repo's 4 real scans, CPU
    .venv/bin/python training/starter.py VERSE_OR_TOTALSEG_FOLDER [more ...] \\
        -o runs/starter --device cuda --aug 10 --steps 40000            # your scans, a GPU

Inputs: pairs CSVs (``scan,ct,labels,convention``; default ``data/ct/scans.csv``),
folders in the VerSe or TotalSegmentator layout, or COCO files. Each CT with its label
map gives its own MIP and ``--aug`` MIPs of random 3D changes of the scan
(napari_vertebra.core.augment), each with ``--views`` partial views of 4..17 vertebrae;
all go to the training split. The ``starter`` configuration (napari_vertebra/configs/
starter.yaml) then trains for about ``--steps`` optimizer steps (on 2 CPU cores about
1.25 s a step: the default 4000 steps take about 90 minutes). ``--ship`` writes
RUN/last.pt as the package's starter model (napari_vertebra/weights/starter.pt, weights
in half precision), with the figures of ``--figures`` (a metrics JSON of
benchmarks/real_scans.py, measured on scans left out) as the validation figures every
naming is shown with. See docs/starter_model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(inputs: list[str], out: Path, aug: int, views: int, seed: int) -> Path:
    """The training data folder (``out/train``, val = train) of ``inputs``."""
    from napari_vertebra.annotation.dataset import build_dataset, read_pairs_csv

    if (out / "train" / "annotations.json").is_file():
        print(f"reusing the dataset in {out}")
        return out
    items: list = []
    for i in inputs:
        items += read_pairs_csv(i) if i.endswith(".csv") else [i]
    t = time.time()
    build_dataset(
        items, out, views_per_image=views, seed=seed, fractions=(1, 0, 0),
        augment_3d=aug, class_set="extended", progress=_bar("dataset"),
    )  # fmt: skip
    print(f"dataset built in {time.time() - t:.0f} s: {out}")
    return out


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message[:40])
        bar.refresh()

    return progress


def train(data: Path, run: Path, steps: int, device: str, seed: int, config: str) -> dict:
    """Train the starter configuration for about ``steps`` steps; the trainer's result."""
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.train import train as run_training

    n = len(json.loads((data / "train" / "annotations.json").read_text())["images"])
    cfg = load_config(config)
    epochs = max(1, round(steps / max(1, n // cfg.batch_size)))
    cfg = cfg.replace(epochs=epochs, seed=seed)
    print(f"training {config}: {n} images, {epochs} epochs (~{steps} steps) on {device}")
    t = time.time()
    out = run_training(cfg, data, run, device=device, verbose=True)
    print(f"trained in {(time.time() - t) / 60:.1f} min: {run}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="pairs CSVs, VerSe/TotalSegmentator folders, COCO")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "runs" / "starter")
    p.add_argument("--aug", type=int, default=60, help="3D augmentations per scan")
    p.add_argument("--views", type=int, default=4, help="partial views per MIP")
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (about)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--config", default="starter", help="a shipped configuration or a YAML")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ship", action="store_true", help="write the package's starter.pt")
    p.add_argument("--figures", type=Path, help="benchmark metrics JSON to ship with it")
    args = p.parse_args()
    inputs = args.inputs or [str(ROOT / "data" / "ct" / "scans.csv")]
    data = build(inputs, args.output / "dataset", args.aug, args.views, args.seed)
    run = args.output / "run"
    if not (run / "last.pt").is_file():
        train(data, run, args.steps, args.device, args.seed, args.config)
    if args.ship:
        from napari_vertebra.model.starter import STARTER_NAME, export_starter

        figures = json.loads(args.figures.read_text()) if args.figures else None
        out = ROOT / "napari_vertebra" / "weights" / STARTER_NAME
        export_starter(run / "last.pt", out, figures, note=f"trained by {' '.join(sys.argv)}")
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
