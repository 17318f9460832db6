"""Measure DamageCNN configurations on the real ELPV cells: accuracy, macro-F1 and time.

Splits the 2,624 cells 75 / 25, stratified by damage level x cell type with this script's own
seed (not the project's official holdout), trains each configuration on the 75 % (validation is
carved from it inside `fit`) and scores the 25 %. Run from the repository root:

    .venv/bin/python benchmarks/vision_experiments.py                 # all configurations
    .venv/bin/python benchmarks/vision_experiments.py --only c128,bin128
    .venv/bin/python benchmarks/vision_experiments.py --decode-only   # images/s only

Results go to benchmarks/results/vision_experiments.json (git-ignored) and the terminal.
"""

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import elpv_dataset
import numpy as np
import torch

from compositional_ai.vision.images import decode_gray
from compositional_ai.vision.metrics import (
    classification_metrics,
    defect_probability_to_level,
    four_class_to_binary_proba,
    levels_to_binary,
)
from compositional_ai.vision.training import (
    EpochRecord,
    TrainConfig,
    fit,
    predict_proba,
    stratified_split,
)

SPLIT_SEED = 7321
HOLDOUT_FRACTION = 0.25
BASE = TrainConfig(image_size=96, epochs=30, num_threads=2, max_seconds=600.0)

# name -> (task, config). "levels" trains the 4-class model; "binary" trains defective vs not.
CONFIGS: dict[str, tuple[str, TrainConfig]] = {
    "c96": ("levels", BASE),
    "bin96": ("binary", BASE),
    "c128": ("levels", replace(BASE, image_size=128)),
    "bin128": ("binary", replace(BASE, image_size=128)),
    "c96_dihedral": ("levels", replace(BASE, augment="dihedral")),
    "c96_noaug": ("levels", replace(BASE, augment="none")),
    "c96_w24": ("levels", replace(BASE, width=24)),
    "c96_unweighted": ("levels", replace(BASE, class_weighting="none")),
    "c192": ("levels", replace(BASE, image_size=192)),
    # Measured on a quiet machine (2.7 s an epoch at 96 px, 4.8 s at 128 px with 2 threads),
    # so the 10-minute budget allows longer runs at a higher resolution.
    "c128_e60": ("levels", replace(BASE, image_size=128, epochs=60, patience=15)),
    "c160_e50": ("levels", replace(BASE, image_size=160, epochs=50, patience=15)),
    "c192_e40": ("levels", replace(BASE, image_size=192, epochs=40, patience=12)),
    "c128_e60_dihedral": (
        "levels",
        replace(BASE, image_size=128, epochs=60, patience=15, augment="dihedral"),
    ),
    "c128_e60_w24": ("levels", replace(BASE, image_size=128, epochs=60, patience=15, width=24)),
    # No validation carve-out: every training cell trains, and the last epoch of the cosine
    # schedule is the model (validation loss on 295 cells swung too much to pick an epoch).
    "c96_all": ("levels", replace(BASE, val_fraction=0.0)),
    "c128_all": ("levels", replace(BASE, image_size=128, epochs=40, val_fraction=0.0)),
    "c96_all_w24": ("levels", replace(BASE, val_fraction=0.0, width=24)),
    "c96_all_unweighted": ("levels", replace(BASE, val_fraction=0.0, class_weighting="none")),
    "c128_all_dihedral": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, augment="dihedral"),
    ),
    "c128_all_unweighted": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, class_weighting="none"),
    ),
    "c160_all": ("levels", replace(BASE, image_size=160, epochs=30, val_fraction=0.0)),
    # Flips plus a small rotation, zoom and shift per image.
    "c128_all_affine": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, augment="affine"),
    ),
    "c128_all_affine_e60": (
        "levels",
        replace(BASE, image_size=128, epochs=60, val_fraction=0.0, augment="affine"),
    ),
    "c96_all_affine_e60": (
        "levels",
        replace(BASE, image_size=96, epochs=60, val_fraction=0.0, augment="affine"),
    ),
    # A second, narrow stride-2 convolution in front: twice the side for little more compute.
    "c192_all_stem2": (
        "levels",
        replace(BASE, image_size=192, epochs=40, val_fraction=0.0, stem_convs=2),
    ),
    "c256_all_stem2": (
        "levels",
        replace(BASE, image_size=256, epochs=40, val_fraction=0.0, stem_convs=2),
    ),
    "c160_all_affine": (
        "levels",
        replace(BASE, image_size=160, epochs=40, val_fraction=0.0, augment="affine"),
    ),
    # Twice the width (about 3.5x the compute of width 16): is capacity the limit?
    "c96_all_w32": ("levels", replace(BASE, val_fraction=0.0, width=32)),
    # Regularisers of the targets rather than the images: label smoothing, mixup.
    "c128_all_ls": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, label_smoothing=0.1),
    ),
    "c128_all_mixup": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, mixup=0.4),
    ),
    # Stronger weight decay (AdamW's 1e-4 is light for a network trained from scratch).
    "c128_all_wd": (
        "levels",
        replace(BASE, image_size=128, epochs=40, val_fraction=0.0, weight_decay=0.05),
    ),
}
# What a plain run measures; the others are there for --only.
DEFAULT_RUN = ("c96", "bin96")


def load_cells() -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Raw PNG bytes, damage levels and types (0 mono, 1 poly) of every ELPV cell."""
    root = Path(elpv_dataset.__file__).parent / "data"
    paths, probabilities, types = [], [], []
    for line in (root / "labels.csv").read_text().splitlines():
        path, probability, cell_type = line.split()
        paths.append(root / path)
        probabilities.append(float(probability))
        types.append(1 if cell_type == "poly" else 0)
    data = [p.read_bytes() for p in paths]
    return data, defect_probability_to_level(np.array(probabilities)), np.array(types)


def measure_decode(data: list[bytes], sizes: tuple[int, ...]) -> dict:
    results = {}
    for size in sizes:
        for workers in (1, 2):
            started = time.perf_counter()
            decode_gray(data, size, num_workers=workers)
            seconds = time.perf_counter() - started
            results[f"{size}px_{workers}workers"] = {
                "seconds": round(seconds, 2),
                "images_per_second": round(len(data) / seconds),
            }
            print(f"decode {size}px, {workers} worker(s): {len(data) / seconds:.0f} images/s")
    return results


def score(task: str, levels: np.ndarray, proba: np.ndarray) -> dict:
    """4-class metrics (levels task only) and binary metrics (defective = level >= 2)."""
    binary_true = levels_to_binary(levels)
    if task == "levels":
        four = classification_metrics(levels, proba.argmax(1), 4)
        binary_pred = (four_class_to_binary_proba(proba) >= 0.5).astype(np.int64)
    else:
        four = None
        binary_pred = proba.argmax(1)
    return {"four": four, "binary": classification_metrics(binary_true, binary_pred, 2)}


def run_config(
    name: str, task: str, config: TrainConfig, pixels: np.ndarray, levels: np.ndarray, split
) -> dict:
    train_idx, test_idx = split
    num_classes = 4 if task == "levels" else 2
    targets = levels if task == "levels" else levels_to_binary(levels)

    def progress(record: EpochRecord) -> None:
        print(
            f"  {name} epoch {record.epoch}: train loss {record.train_loss:.3f}, "
            f"val loss {record.val_loss:.3f}, val acc {record.val_accuracy:.3f}, "
            f"{record.seconds:.1f}s",
            flush=True,
        )

    result = fit(
        pixels[train_idx],
        targets[train_idx],
        num_classes=num_classes,
        config=config,
        on_epoch=progress,
    )
    started = time.perf_counter()
    proba = predict_proba(result.model, pixels[test_idx])
    predict_seconds = time.perf_counter() - started
    scores = {"plain": score(task, levels[test_idx], proba)}
    started = time.perf_counter()
    scores["tta"] = score(
        task, levels[test_idx], predict_proba(result.model, pixels[test_idx], tta=True)
    )
    tta_seconds = time.perf_counter() - started
    epoch_seconds = [h.seconds for h in result.history]
    row = {
        "name": name,
        "task": task,
        "config": asdict(config),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_reason": result.stopped_reason,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "train_seconds": result.train_seconds,
        "predict_seconds": predict_seconds,
        "predict_tta_seconds": tta_seconds,
        "scores": scores,
        "history": [h.as_dict() for h in result.history],
    }
    for kind, found in scores.items():
        acc4 = "  -   " if found["four"] is None else f"{found['four']['accuracy']:.4f}"
        f14 = "  -   " if found["four"] is None else f"{found['four']['macro_f1']:.4f}"
        print(
            f"{name:16s} {kind:5s} acc4={acc4} macroF1={f14} "
            f"acc2={found['binary']['accuracy']:.4f} f1(defective)="
            f"{found['binary']['per_class'][1]['f1']:.4f} epochs={len(result.history)} "
            f"best={result.best_epoch} ({result.stopped_reason}) "
            f"s/epoch={row['seconds_per_epoch']:.1f} total={result.train_seconds:.0f}s",
            flush=True,
        )
    return row


def correct_for_class_weights(proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Undo the prior shift a class-weighted loss gives the probabilities, renormalised.

    A loss weighted by w_c fits the posterior of a population whose class priors are scaled by
    w_c; dividing by w_c returns to the training population, whose argmax maximises accuracy.
    """
    corrected = proba / weights[None, :]
    return corrected / corrected.sum(axis=1, keepdims=True)


def run_ensemble(
    name: str,
    config: TrainConfig,
    members: int,
    pixels: np.ndarray,
    levels: np.ndarray,
    split,
    *,
    prior_correction: bool = False,
) -> dict:
    """Train `members` 4-class models that differ only by seed; score each and their averages."""
    train_idx, test_idx = split
    probabilities, rows = [], []
    for member in range(members):
        member_config = replace(config, seed=config.seed + member)
        result = fit(pixels[train_idx], levels[train_idx], num_classes=4, config=member_config)
        proba = predict_proba(result.model, pixels[test_idx], tta=True)
        if prior_correction:
            proba = correct_for_class_weights(proba, np.asarray(result.class_weights))
        probabilities.append(proba)
        plain = score("levels", levels[test_idx], predict_proba(result.model, pixels[test_idx]))
        mean = np.mean(probabilities, axis=0)
        found = {
            "member": score("levels", levels[test_idx], proba),
            "member_plain": plain,
            "ensemble": score("levels", levels[test_idx], mean),
        }
        rows.append(
            {
                "member": member,
                "holdout_proba": np.round(proba, 6).tolist(),
                "class_weights": list(result.class_weights),
                "train_seconds": result.train_seconds,
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "scores": found,
            }
        )
        print(
            f"{name} member {member}: plain acc4={plain['four']['accuracy']:.4f} "
            f"acc2={plain['binary']['accuracy']:.4f}; tta acc4="
            f"{found['member']['four']['accuracy']:.4f} "
            f"acc2={found['member']['binary']['accuracy']:.4f}; ensemble of {member + 1} (tta) "
            f"acc4={found['ensemble']['four']['accuracy']:.4f} "
            f"macroF1={found['ensemble']['four']['macro_f1']:.4f} "
            f"acc2={found['ensemble']['binary']['accuracy']:.4f}; "
            f"{result.train_seconds:.0f}s, {len(result.history)} epochs",
            flush=True,
        )
    return {"name": name, "config": asdict(config), "members": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated configuration names", default="")
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("--epochs", type=int, help="override every configuration's epochs")
    parser.add_argument(
        "--ensemble", type=int, default=0, help="train N seeds of each configuration and average"
    )
    parser.add_argument(
        "--prior-correction",
        action="store_true",
        help="divide ensemble probabilities by the class weights before scoring",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument(
        "--no-budget", action="store_true", help="ignore max_seconds (for runs on a shared CPU)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/vision_experiments.json")
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(DEFAULT_RUN)
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {sorted(CONFIGS)}")

    torch.set_num_threads(args.threads)
    data, levels, types = load_cells()
    print(
        f"{len(data)} cells, levels {np.bincount(levels).tolist()}, load average {os.getloadavg()}"
    )
    sizes = tuple(sorted({CONFIGS[n][1].image_size for n in names}))
    report: dict = {"runs": []}
    if args.decode_only:
        measure_decode(data, (96, 128))
        return
    strata = levels * 2 + types
    split = stratified_split(strata, HOLDOUT_FRACTION, np.random.default_rng(SPLIT_SEED))
    report["split"] = {"seed": SPLIT_SEED, "train": len(split[0]), "test": len(split[1])}
    decoded = {size: decode_gray(data, size, num_workers=2) for size in sizes}
    for name in names:
        task, config = CONFIGS[name]
        if args.epochs:
            config = replace(config, epochs=args.epochs)
        config = replace(config, num_threads=args.threads)
        if args.no_budget:
            config = replace(config, max_seconds=None)
        if args.ensemble:
            if task != "levels":
                parser.error("--ensemble takes 4-class (levels) configurations only")
            run = run_ensemble(
                name,
                config,
                args.ensemble,
                decoded[config.image_size],
                levels,
                split,
                prior_correction=args.prior_correction,
            )
        else:
            run = run_config(name, task, config, decoded[config.image_size], levels, split)
        report["runs"].append(run)
        report["load_average_after"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
