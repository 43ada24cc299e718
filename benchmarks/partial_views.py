"""Naming the right level on partial views, measured the field's way (issue 11).

    .venv/bin/python benchmarks/partial_views.py [--epochs 6] [--columns 12] [--views 5]
        [--test-columns 8] [--arms paper-resize,paper-fixed,extended-resize,extended-fixed]
        [--train-rates 0.15,0.30,0.35] [--threads 2] [--device cpu] [--out DIR] [--reuse]
        [--config smoke] [--weights FILE|none]

    # on a GPU, the paper's architecture and COCO start (docs/levels.md, "A GPU run"):
    python benchmarks/partial_views.py --config paper --weights model_final_a3ec72.pkl \
        --epochs 24 --columns 200 --views 4 --test-columns 20 \
        --arms paper-fixed,extended-fixed --seed 0

Synthetic sagittal MIPs at 1 mm per pixel (napari_vertebra.synth.synth_column: whole
vertebrae, patient scale +-10 %, 11/12/13 thoracic and 5/6 lumbar, short last ribs, the
sacrum) and the paper's partial views of 4..17 vertebrae. Training columns over-sample
transitional spines (11 thoracic 15 %, 13 thoracic 30 %, 6 lumbar 35 %;
``--train-rates``) so that T13 and L6 are seen at all in a CPU-sized set; the decoder
divides that training share out (``level_class_prior``) and weighs the variants by their
population frequencies. The test
columns are drawn apart (other seeds), with their spine variants in fixed numbers
(11 / 13 thoracic 15 % each, 6 lumbar 25 %: :func:`stratified`; 6 columns give 3 normal,
one 11T, one 13T, one 6L), each with its full column and partial views. The confidence
figures are also given with each variant weighted to its population share
(:func:`population_weights`), the prior the decoder assumes.

Each arm trains the same configuration (``--config``, default the shipped smoke one:
ResNet-18-FPN from scratch; ``paper`` on a GPU) for the same number of epochs on the
same images, changing only:
- the class set: ``paper`` (T1..L5; C7, T13, L6 and the sacrum unlabelled) or
  ``extended`` (C7, T1..T13, L1..L6, S1);
- the scale: ``resize`` (the old way: the short side to ``min_size``, smoke's 256 px,
  the long side at most ``max_size``) or ``fixed`` (the config's ``pixels_per_mm``,
  paper's 1.7; smoke has none and gets 1.0 with images up to 704 px: a full column fits).

Then, on the held-apart test images, the VerSe identification rate (a true vertebra is
identified when the prediction carrying its label lies within 20 mm of its centroid and
it is the closest true vertebra; mean over images) for: views with a landmark (C7, the
sacrum, or the thoracolumbar junction visible), views without one, full columns,
transitional spines, and the share of T13 / L6 vertebrae named as such on extra forced
columns: all of them, and those on views that show what it takes to count them (C7..L1
for a T13, the last thoracic vertebra..sacrum for an L6; see :func:`countable`). Each
arm is also decoded at ``min_score`` 0 ("@0") and without the class prior ("/no
prior"). The level confidence (model/levels.py) is checked against the truth: the share
of views called certain (confidence >= --certain) and their identification rate, for
several ``level_evidence_weight`` values, and the weight the val split would pick.
Prints the tables; the train time of each arm is the CPU (or GPU) budget. ``--reuse``
evaluates the runs already in ``--out`` again (same data, no training).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ARMS = ("paper-resize", "paper-fixed", "extended-resize", "extended-fixed")
#: the training columns: transitional spines over-sampled so that T13 and L6 are seen
#: at all in a CPU-sized set (--train-rates changes it; a lighter mix, 10 / 10 / 15 %,
#: made no consistent difference to identification over two seeds and named fewer
#: countable T13 / L6: docs/levels.md)
TRAIN_RATES = {
    "thoracic_rates": {11: 0.15, 12: 0.55, 13: 0.30},
    "lumbar_rates": {5: 0.65, 6: 0.35},
}
#: the test columns: transitional spines over-sampled less than in training (T13 and L6
#: have their own row on forced columns)
TEST_RATES = {
    "thoracic_rates": {11: 0.15, 12: 0.70, 13: 0.15},
    "lumbar_rates": {5: 0.75, 6: 0.25},
}
#: level_evidence_weight values checked; the first, the config's default, gives the tables
WEIGHTS = (0.5, 1.0, 0.7, 0.3)


def rates_of(text: str) -> dict:
    """``--train-rates`` "T11,T13,L6" (shares of columns with 11 / 13 thoracic and 6
    lumbar vertebrae) as synth_column_dataset's thoracic_rates / lumbar_rates."""
    try:
        t11, t13, l6 = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--train-rates wants three shares T11,T13,L6; got {text!r}") from None
    if min(t11, t13, l6) < 0 or t11 + t13 >= 1 or l6 >= 1:
        raise SystemExit(f"--train-rates: shares must be >= 0 and leave room for 12T / 5L: {text}")
    return {
        "thoracic_rates": {11: t11, 12: 1 - t11 - t13, 13: t13},
        "lumbar_rates": {5: 1 - l6, 6: l6},
    }


def make_data(
    out: Path,
    columns: int,
    views: int,
    test_columns: int,
    seed: int,
    train_rates: dict | None = None,
) -> dict:
    """Write extended-set and paper-set COCO splits of the same images; return the test
    images (extended labels) with their meta. ``train_rates``: the spine variants of the
    train and val columns (default :data:`TRAIN_RATES`)."""
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.core.labels import PAPER
    from napari_vertebra.synth import synth_column_dataset

    def paper_copy(images):
        out_ims = []
        for im in images:
            c = replace(im, annotations=[a for a in im.annotations if a.class_id in PAPER.ids])
            out_ims.append(c)
        return out_ims

    rates = TRAIN_RATES if train_rates is None else train_rates
    split = {
        "train": synth_column_dataset(
            columns, views, "extended", seed=seed, prefix="train", **rates
        ),
        "val": synth_column_dataset(
            max(3, columns // 4), 3, "extended", seed=seed + 1, prefix="val", **rates
        ),
        "test": [],
    }
    # the test columns by spine variant in fixed numbers (TEST_RATES, largest remainders):
    # a random draw of 6 columns once gave 6 transitional spines and no normal one
    for k, ((t, lum), count) in enumerate(stratified(test_columns, TEST_RATES).items()):
        split["test"] += synth_column_dataset(
            count, views * 2, "extended", seed=seed + 2 + 10 * k, prefix=f"test{t}T{lum}L",
            thoracic=t, lumbar=lum,
        )  # fmt: skip
    for name, images in split.items():
        write_coco(images, out / "extended" / name, class_set="extended")
        write_coco(paper_copy(images), out / "paper" / name, class_set="paper")
    # spines with a T13 or an L6 (the test columns rarely draw one): for the T13 / L6 row
    n_t = max(1, test_columns // 2)
    split["transitional"] = synth_column_dataset(
        n_t, views * 2, "extended", seed=seed + 3, prefix="t13", thoracic=13
    ) + synth_column_dataset(n_t, views * 2, "extended", seed=seed + 4, prefix="l6", lumbar=6)
    return split


def stratified(n: int, rates: dict) -> dict[tuple[int, int], int]:
    """``n`` columns shared among the spine variants (thoracic, lumbar) in proportion to
    ``rates`` (thoracic and lumbar independent), by largest remainders; variants with
    no column are left out."""
    share = {
        (t, lum): pt * pl
        for t, pt in rates["thoracic_rates"].items()
        for lum, pl in rates["lumbar_rates"].items()
    }
    exact = {v: n * p / sum(share.values()) for v, p in share.items()}
    count = {v: int(x) for v, x in exact.items()}
    for v in sorted(exact, key=lambda v: count[v] - exact[v])[: n - sum(count.values())]:
        count[v] += 1
    return {v: c for v, c in sorted(count.items()) if c}


def population_weights(variants: list[tuple[int, int]]) -> np.ndarray:
    """Per-image weights that give each spine variant of a test set its population share
    (spine.VARIANT_PRIORS, renormalised over the variants present): the test set
    over-samples transitional spines, whose views the decoder's population prior names
    as normal ones."""
    from napari_vertebra.model.spine import VARIANT_PRIORS

    present = sorted(set(variants))
    pop = np.array([VARIANT_PRIORS.get(v, 0.0) for v in present])
    pop = pop / pop.sum() if pop.sum() > 0 else np.full(len(present), 1 / len(present))
    counts = {v: variants.count(v) for v in present}
    w = np.array([pop[present.index(v)] / counts[v] for v in variants])
    return w / w.sum() * len(variants)


def arm_config(
    arm: str, epochs: int, seed: int, config: str = "smoke", weights: str | None = None
):
    """The training configuration of an arm: ``config`` (a shipped name or a YAML file)
    with the arm's class set and scale, the whole val split, and ``weights`` ("none":
    random; None: the config's own)."""
    from napari_vertebra.model.config import load_config

    cset, scale = arm.split("-")
    base = load_config(config)
    # the whole val split (the smoke config validates 4 images)
    over = {"epochs": epochs, "seed": seed, "class_set": cset, "val_max_images": None}
    if scale == "resize":
        over["pixels_per_mm"] = None
    elif base.pixels_per_mm is None:  # smoke: 1 px/mm, a full column (~600 rows) fits
        over.update(pixels_per_mm=1.0, max_size=704)
    if weights is not None:
        over["weights"] = None if weights.lower() == "none" else weights
    return load_config(config, over)


def _variant(meta: dict) -> tuple[int, int]:
    return int(meta.get("thoracic", 12)), int(meta.get("lumbar", 5))


def group_of(meta: dict) -> list[str]:
    """The table rows an image counts in."""
    groups = ["all"]
    if meta.get("view") == "full":
        groups.append("full")
    else:
        groups.append("landmark" if meta.get("landmarks") else "no landmark")
        groups.append("partial")
    if _variant(meta) != (12, 5):
        groups.append("transitional")
    return groups


def countable(meta: dict, level: str) -> bool:
    """Whether a view shows what it takes to count a T13 or an L6: nothing in a vertebra
    tells a T13 from a T12 or an L6 from an L5, only the count does. A T13 needs C7 and
    L1 in view (the thoracic vertebrae counted from C7), an L6 the last thoracic vertebra
    and the sacrum (the lumbar ones counted between them)."""
    vis = set(meta.get("visible", []))
    if level == "T13":
        return {"C7", "L1"} <= vis
    return {f"T{int(meta.get('thoracic', 12))}", "S1"} <= vis


def evaluate_arm(
    run_dir: Path,
    cfg,
    test_images: list,
    certain: float,
    min_score: float | None = None,
    class_prior: bool = True,
) -> dict:
    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.core.labels import class_id, class_name, get_class_set
    from napari_vertebra.model.metrics import centroids, identification
    from napari_vertebra.model.predict import Predictor

    cs = get_class_set(cfg.class_set)
    ms = cfg.min_score if min_score is None else float(min_score)
    predictor = Predictor(run_dir / "last.pt", min_score=ms)
    predictor.config = predictor.config.replace(level_class_prior=class_prior)
    rows: dict[str, list[float]] = {}
    trans = {"n": 0, "named": 0, "n_countable": 0, "named_countable": 0}
    calib = {w: [] for w in WEIGHTS}
    t0 = time.time()
    for im in test_images:
        anns = [a for a in im.annotations if a.class_id in cs.ids]
        if not anns:
            continue
        shape = (im.height, im.width)
        g_cls = np.array([a.class_id for a in anns])
        g_cen = centroids(np.stack([rasterize(a.polygons, shape) for a in anns]))
        det = predictor.detect(im.image, predictor.min_score)
        for w in WEIGHTS:
            predictor.config = predictor.config.replace(level_evidence_weight=w)
            pred = predictor.finish(det, shape)
            ident = identification(g_cls, g_cen, pred.classes, pred.centroids(), pred.scores)
            rate = float(ident.identified.mean())
            conf = pred.levels.confidence if pred.levels is not None and len(pred) else 0.0
            calib[w].append((conf, rate, _variant(im.meta)))
            if w != WEIGHTS[0]:
                continue
            for g in group_of(im.meta):
                rows.setdefault(g, []).append(rate)
            for k, c in enumerate(g_cls):  # transitional levels named as such
                if c in (class_id("T13"), class_id("L6")):
                    trans["n"] += 1
                    trans["named"] += int(ident.identified[k])
                    if countable(im.meta, class_name(c)):
                        trans["n_countable"] += 1
                        trans["named_countable"] += int(ident.identified[k])
    out = {g: (float(np.mean(v)), len(v)) for g, v in rows.items()}
    out["transitional_named"] = (
        (trans["named"] / trans["n"], trans["n"]) if trans["n"] else (None, 0)
    )
    out["transitional_countable"] = (
        (trans["named_countable"] / trans["n_countable"], trans["n_countable"])
        if trans["n_countable"]
        else (None, 0)
    )
    out["calibration"] = {}
    for w, pairs in calib.items():
        conf = np.array([p[0] for p in pairs])
        rate = np.array([p[1] for p in pairs])
        sure = conf >= certain
        out["calibration"][w] = {
            "share_certain": float(sure.mean()) if len(sure) else 0.0,
            "id_certain": float(rate[sure].mean()) if sure.any() else None,
            "id_uncertain": float(rate[~sure].mean()) if (~sure).any() else None,
            "mean_confidence": float(conf.mean()) if len(conf) else 0.0,
            "id_all": float(rate.mean()) if len(rate) else 0.0,
        }
        if pairs:  # the same with the spine variants at their population shares
            pw = population_weights([p[2] for p in pairs])
            out["calibration"][w].update(
                pop_id_all=float(np.average(rate, weights=pw)),
                pop_share_certain=float(np.average(sure, weights=pw)),
                pop_id_certain=float(np.average(rate[sure], weights=pw[sure]))
                if sure.any()
                else None,
            )
    out["eval_s"] = time.time() - t0
    out["min_score"] = ms
    # what training's validation said of the level confidence (stored in the checkpoint)
    out["val_check"] = {
        k: predictor.validation.get(f"val_level_{k}")
        for k in ("certain_share", "certain_id_rate", "uncertain_id_rate")
    }
    return out


def _f(v) -> str:
    return "    -" if v is None else f"{v:5.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--columns", type=int, default=12, help="training columns (scans)")
    ap.add_argument("--views", type=int, default=5, help="partial views per training column")
    ap.add_argument("--test-columns", type=int, default=8)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument(
        "--train-rates",
        default=None,
        help="shares of training columns with 11 / 13 thoracic and 6 lumbar vertebrae, "
        "'T11,T13,L6' (default 0.15,0.30,0.35)",
    )
    ap.add_argument(
        "--config",
        default="smoke",
        help="training configuration: a shipped name (smoke, paper) or a YAML file "
        "(default smoke: ResNet-18 from scratch, sized for a CPU)",
    )
    ap.add_argument(
        "--weights",
        default=None,
        help="starting weights file for --config (e.g. paper's COCO "
        "model_final_a3ec72.pkl), or 'none' for random weights (default: the config's)",
    )
    ap.add_argument("--certain", type=float, default=0.9, help="level confidence cut-off")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--reuse", action="store_true", help="evaluate the runs already in --out (no training)"
    )
    args = ap.parse_args()
    import torch

    from napari_vertebra.model.train import train

    torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="vertebra_partial_"))
    t0 = time.time()
    rates = rates_of(args.train_rates) if args.train_rates else None
    split = make_data(out / "data", args.columns, args.views, args.test_columns, args.seed, rates)
    # the same images again (same seeds) when reusing runs
    n = {k: len(v) for k, v in split.items()}
    print(f"data in {out / 'data'}: {n} images ({time.time() - t0:.0f} s)", flush=True)
    results = {}
    for arm in arms:
        cfg = arm_config(arm, args.epochs, args.seed, args.config, args.weights)
        run_dir = out / arm
        t = time.time()
        if args.reuse and (run_dir / "last.pt").is_file():
            import csv

            with (run_dir / "log.csv").open() as f:
                train_s = float(list(csv.DictReader(f))[-1]["time_s"])
        else:
            train(cfg, out / "data" / cfg.class_set, run_dir, device=args.device)
            train_s = time.time() - t
        # at the config's operating threshold, and at 0 (every detection, one per class,
        # named jointly: how well the levels are named, whatever the threshold)
        # and without the class prior (the training share of each class not divided out)
        for tag, ms, prior in (("", None, True), ("@0", 0.0, True), ("/no prior", None, False)):
            res = evaluate_arm(run_dir, cfg, split["test"], args.certain, ms, prior)
            forced = evaluate_arm(run_dir, cfg, split["transitional"], args.certain, ms, prior)
            res["transitional_named"] = forced["transitional_named"]
            res["transitional_countable"] = forced["transitional_countable"]
            val = evaluate_arm(run_dir, cfg, split["val"], args.certain, ms, prior)
            ids = {w: c["id_all"] for w, c in val["calibration"].items()}
            res["val_weight"] = max(ids, key=lambda w: (round(ids[w], 3), w))
            res["val_calibration"] = val["calibration"][WEIGHTS[0]]
            res["val_n"] = val["all"][1] if "all" in val else 0
            res["forced_transitional_all"] = forced["all"]
            res["train_s"] = train_s
            results[arm + tag] = res
        print(f"{arm}: trained {train_s:.0f} s, evaluated {res['eval_s']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        "\n(arm@0: the same model at min_score 0, every detection named jointly; "
        "arm/no prior: without dividing out the training share of each class)"
    )
    for name in ("train", "test"):
        variants: dict[str, int] = {}
        for im in split[name]:
            if im.meta.get("view") == "full":
                v = f"{im.meta['thoracic']}T+{im.meta['lumbar']}L"
                variants[v] = variants.get(v, 0) + 1
        # the test columns are few: their draw of variants moves the 'all' figures
        print(f"{name} columns by spine variant: {dict(sorted(variants.items()))}")
    print(
        f"\npartial views: {args.epochs} epochs of the {args.config} config on "
        f"{n['train']} images ({args.columns} columns + {args.views} views each), {dev}, "
        f"{torch.get_num_threads()} threads; test {n['test']} images of {args.test_columns} "
        "unseen columns; VerSe identification rate (mean over images)"
    )
    groups = ("landmark", "no landmark", "partial", "full", "transitional", "all")
    print(
        "(T13/L6: share of the T13 and L6 vertebrae named as such, on "
        f"{n['transitional']} extra images of columns with 13 thoracic or 6 lumbar vertebrae;"
        "\n countable: on the views that show what it takes to count them, C7..L1 for a T13,"
        f" the last thoracic vertebra..sacrum for an L6; level_evidence_weight {WEIGHTS[0]})"
    )
    print(
        f"{'arm':<25}{'train s':>8}"
        + "".join(f"{g:>14}" for g in groups)
        + f"{'T13/L6':>12}{'countable':>12}"
    )
    for arm, r in results.items():
        cells = "".join(
            f"{_f(r[g][0]) if g in r else '    -':>9} ({r[g][1] if g in r else 0:>3})"
            for g in groups
        )
        tn, tc = r["transitional_named"], r["transitional_countable"]
        print(
            f"{arm:<25}{r['train_s']:>8.0f}{cells}{_f(tn[0]):>7} ({tn[1]:>2})"
            f"{_f(tc[0]):>7} ({tc[1]:>2})"
        )
    print(
        f"\nlevel confidence (cut-off {args.certain}): share of test images called certain, "
        "identification among them / among the rest, mean confidence vs mean identification;"
        "\npopulation-weighted: the same with each spine variant's test images weighted to "
        "its population share (spine.VARIANT_PRIORS: 11T 5 %, 13T 1 %, 6L 5 %), which the "
        "decoder's prior assumes"
    )
    for arm, r in results.items():
        for w, c in r["calibration"].items():
            pop = (
                f"   population-weighted: id {c['pop_id_all']:5.2f}, certain "
                f"{c['pop_share_certain']:5.2f} at {_f(c['pop_id_certain'])}"
                if "pop_id_all" in c
                else ""
            )
            print(
                f"{arm:<25} weight {w:<4} certain {c['share_certain']:5.2f}  id certain "
                f"{_f(c['id_certain'])}  id rest {_f(c['id_uncertain'])}  mean conf "
                f"{c['mean_confidence']:5.2f} vs id {c['id_all']:5.2f}{pop}"
            )
    print(
        "\nwhat training's validation said (the checkpoint's val_level_* figures, on the "
        "images it validated; '-' for a run trained before they existed), the same check "
        f"on the whole val split (weight {WEIGHTS[0]}), and the test figures beside them:"
    )
    for arm, r in results.items():
        if "@" in arm or "/" in arm:
            continue  # validation decodes at the config's settings only
        v, c, vc = r["val_check"], r["calibration"][WEIGHTS[0]], r.get("val_calibration")
        share = "    -" if v["certain_share"] is None else f"{v['certain_share']:5.2f}"
        whole = (
            f"val split ({r.get('val_n', 0)}): certain {vc['share_certain']:5.2f} at "
            f"{_f(vc['id_certain'])}   "
            if vc
            else ""
        )
        print(
            f"{arm:<25} training's val: certain {share} at {_f(v['certain_id_rate'])}   "
            f"{whole}test: certain {c['share_certain']:5.2f} at {_f(c['id_certain'])}"
        )
    print(
        f"\nthe weight a user would pick on the val split ({n['val']} images, best "
        "identification), and what it gives on the test images:"
    )
    for arm, r in results.items():
        w = r["val_weight"]
        c = r["calibration"][w]
        print(
            f"{arm:<25} weight {w:<4} id {c['id_all']:5.2f}  certain {c['share_certain']:5.2f} "
            f"at {_f(c['id_certain'])}"
        )
    print(f"\nresults: {out / 'results.json'}  (total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
