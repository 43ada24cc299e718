"""The full learning run on synthetic spine MIPs (CPU), with the lr = 0 contrast.

    .venv/bin/python benchmarks/learning.py [--epochs 16] [--threads 2] [--out DIR]

Writes 40 train / 10 val / 10 test synthetic 256 x 128 MIPs (napari-vertebra synth --size 256 128),
trains the shipped smoke configuration (ResNet-18-FPN from scratch) and evaluates on the test split
(Dice per vertebra, identification rate, with and without the anatomical order fix),
then trains with lr = 0 for the contrast (1 epoch by default: with lr = 0 the weights
never move, only the BatchNorm statistics do). Prints one table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, epochs: int, lr: float | None, seed: int = 0, reuse: bool = False) -> dict:
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.evaluate import evaluate_predictor
    from napari_vertebra.model.predict import TEST_SETTINGS, Predictor
    from napari_vertebra.model.train import train

    over = {"epochs": epochs, "seed": seed}
    if lr is not None:
        over["lr"] = lr
    cfg = load_config("smoke", over)
    run_dir = out / f"run_lr{cfg.lr}"
    t0 = time.time()
    if reuse and (run_dir / "last.pt").is_file():  # evaluate an earlier run again
        import csv

        with (run_dir / "log.csv").open() as f:
            t0 -= float(list(csv.DictReader(f))[-1]["time_s"])
    else:
        train(cfg, out / "data", run_dir)
    t_train = time.time() - t0
    res = {"lr": cfg.lr, "epochs": epochs, "train_s": t_train}
    for order in (True, False):
        # inference settings of the current smoke.yaml (also for runs trained before a change)
        p = Predictor(
            run_dir / "last.pt", order=order, settings={k: getattr(cfg, k) for k in TEST_SETTINGS}
        )
        m = evaluate_predictor(p, out / "data" / "test")
        tag = "" if order else "_noorder"
        res[f"dice{tag}"] = m["mean_dice"]
        res[f"id{tag}"] = m["id_rate"]
        res[f"mask_mAP{tag}"] = m["mask_mAP"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="evaluate runs already in --out")
    ap.add_argument(
        "--lr0-epochs",
        type=int,
        default=1,
        help="epochs of the lr = 0 contrast (its weights never move; 0 skips it)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from napari_vertebra.synth import write_synth

    out = args.out or Path(tempfile.mkdtemp(prefix="vertebra_learning_"))
    if not (args.reuse and (out / "data").is_dir()):
        write_synth(out / "data", 60, size=(256, 128), seed=args.seed + 11, fractions=(40, 10, 10))
    rows = [run(out, args.epochs, None, args.seed, args.reuse)]
    if args.lr0_epochs:
        rows.append(run(out, args.lr0_epochs, 0.0, args.seed, args.reuse))
    print(f"\nlearning run on {out} ({torch.get_num_threads()} threads, CPU)")
    print(f"{'lr':>8} {'epochs':>6} {'train s':>8} {'Dice':>6} {'id':>6} {'mask mAP':>8} "
          f"{'Dice*':>6} {'id*':>6}   (* without the order fix)")  # fmt: skip
    for r in rows:
        print(
            f"{r['lr']:>8g} {r['epochs']:>6} {r['train_s']:>8.0f} {r['dice']:>6.3f} "
            f"{r['id']:>6.3f} {r['mask_mAP']:>8.3f} {r['dice_noorder']:>6.3f} "
            f"{r['id_noorder']:>6.3f}"
        )


if __name__ == "__main__":
    main()
