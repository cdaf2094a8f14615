"""`make bench-distill`: what a teacher adds, over several seeds (a script and its output, not a timed test).

One teacher (DigitsCNN width 32, trained on the digits train split) and a student ~4x smaller (DigitsCNN width 16),
trained from the same initialisation on 20 labelled images per class, with and without the teacher's soft targets
(T=8, alpha=0.1), for 40 epochs, once per seed. Reports test accuracy and cross-entropy of each, the per-seed
difference, and their mean ± std; writes bench/distill_results.md (and .json). One seed on a 99% task moves one
digit at a time and differs between CPUs (AVX2 vs AVX-512 round differently): only the spread over seeds says
whether distillation helps.

    python bench/distill.py [--seeds 0,1,2,3,4]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from edgeship.compress.distill import DistillConfig, distill
from edgeship.compress.train import TrainConfig, eval_nll, evaluate, train_classifier
from edgeship.data import DataSource, load_data
from edgeship.examples import DigitsCNN, digits_cnn

HERE = Path(__file__).resolve().parent


def few_labels(train: DataSource, per_class: int, seed: int = 0) -> DataSource:
    rng = np.random.default_rng(seed)
    idx = [i for c in range(10) for i in rng.choice(np.flatnonzero(train.y == c), per_class, replace=False)]
    return train.subset(sorted(idx))


def run_seed(teacher, digits: dict, seed: int, per_class: int = 20, epochs: int = 40) -> dict:
    """Student with and without the teacher, same init, data and seed; test accuracy and cross-entropy of each."""
    train = few_labels(digits["train"], per_class, seed)
    torch.manual_seed(seed)
    student = DigitsCNN(16)
    alone = copy.deepcopy(student)
    train_classifier(alone, train, digits["val"], TrainConfig(epochs=epochs, lr=2e-3, batch_size=32, seed=seed, patience=None))
    kd = distill(teacher, student, train, digits["val"], DistillConfig(temperature=8, alpha=0.1, epochs=epochs, lr=2e-3,
                                                                       batch_size=32, seed=seed, patience=None)).spec.module
    test = digits["test"]
    return {"seed": seed, "acc_alone": evaluate(alone, test), "acc_kd": evaluate(kd, test),
            "nll_alone": eval_nll(alone, test), "nll_kd": eval_nll(kd, test)}


def train_teacher(digits: dict):
    spec = digits_cnn()
    torch.manual_seed(0)
    train_classifier(spec.module, digits["train"], digits["val"], TrainConfig(epochs=20, lr=2e-3, patience=6))
    return spec


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args()
    torch.set_num_threads(1)
    digits = {s: load_data("digits", digits_cnn(), s) for s in ("train", "val", "test")}
    teacher = train_teacher(digits)
    rows = [run_seed(teacher, digits, int(s)) for s in args.seeds.split(",")]
    gain = [100 * (r["acc_kd"] - r["acc_alone"]) for r in rows]
    dnll = [r["nll_alone"] - r["nll_kd"] for r in rows]
    flags = sorted({f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp")
                    if f in Path("/proc/cpuinfo").read_text(errors="ignore").split()} if Path("/proc/cpuinfo").exists() else [])
    lines = [f"# Distillation over seeds: digits, 20 labels per class, DigitsCNN 32 -> 16", "",
             f"teacher test accuracy {evaluate(teacher.module, digits['test']):.2%}; {platform.machine()}, CPU flags: {' '.join(flags) or 'n/a'}", "",
             "| seed | alone top-1 | distilled top-1 | gain (points) | alone NLL | distilled NLL |", "|---|---|---|---|---|---|"]
    for r, g in zip(rows, gain):
        lines.append(f"| {r['seed']} | {r['acc_alone']:.2%} | {r['acc_kd']:.2%} | {g:+.2f} | {r['nll_alone']:.4f} | {r['nll_kd']:.4f} |")
    gm, gs = mean_std(gain)
    nm, ns = mean_std(dnll)
    lines += ["", f"gain: {gm:+.2f} ± {gs:.2f} points (mean ± std over {len(rows)} seeds); "
                  f"cross-entropy lower by {nm:.4f} ± {ns:.4f} nats; distilled better in {sum(g > 0 for g in gain)} of {len(rows)} seeds"]
    text = "\n".join(lines) + "\n"
    (HERE / "distill_results.md").write_text(text)
    (HERE / "distill_results.json").write_text(json.dumps({"rows": rows, "gain_points": [gm, gs], "nll_drop": [nm, ns]}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
