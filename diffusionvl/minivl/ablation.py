"""`diffusionvl recipe minivl --ablation --out DIR`: the ablation of `evaluation.ablation` on the MiniVL study.

What does not change between the steps is made once in DIR: the data, the random initialisation, the AR source
minivl-ar and the diffusion baseline trained from scratch, and their evaluations. Each step then is a `recipe
minivl` run in DIR/<step> that finds those (linked) and trains and evaluates its own translation only (resumable;
a finished step is skipped). The table (DIR/ablation.md) and the curves of mean exact match against training
tokens (DIR/ablation.png) are rebuilt from whatever steps have finished.
"""

import os
import shutil
from pathlib import Path

from ..evaluation.ablation import STEPS, finished_steps, step_configs, write_report
from .evaluate import F1_TASKS
from .generator import TASKS

SHARED = ("data", "init", "minivl-ar", "init-baseline", "baseline-dvlm")
LONG = "scene"  # the long-answer task: the speed column is measured on it
TOLERANCE = 0.01  # the speed column: the most tokens per forward within one point of static


def shared_stages(config, root: Path) -> None:
    """The parts every step shares, in DIR: data, init, minivl-ar, the baseline, and the two evaluations."""
    from .recipe import baseline_steps, evaluate_model, initial_model, make_data, run_training, settings, translated

    make_data(config, root)
    data = root / "data"
    init = initial_model(config, root)
    run_training(config, root, "minivl-ar", init, data / "train.json", "autoregressive", config.ar_steps,
                 config.ar_learning_rate)
    scratch = translated(config, init, root / "init-baseline", "block_causal")
    run_training(config, root, "baseline-dvlm", scratch, data / "train.json", "diffusion",
                 baseline_steps(config, root), config.ar_learning_rate)
    evaluate_model(config, root, root / "minivl-ar", "minivl-ar", {})
    evaluate_model(config, root, root / "baseline-dvlm", "baseline-dvlm", settings(config)[0][1])


def run_ablation(config, only: list[str] | None = None) -> str:
    """Every step (or those named in `only`) after the shared stages; returns the table as Markdown."""
    from .recipe import run

    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    shared_stages(config, root)
    for name, _, step in step_configs(config, STEPS):
        if only and name not in only:
            continue
        folder = Path(step.out)
        (folder / "eval").mkdir(parents=True, exist_ok=True)
        for part in SHARED:
            if not (folder / part).exists():
                os.symlink(root / part, folder / part, target_is_directory=True)
        for evaluated in ("minivl-ar.json", "baseline-dvlm.json"):
            if not (folder / "eval" / evaluated).is_file():
                shutil.copy(root / "eval" / evaluated, folder / "eval" / evaluated)
        if not (folder / "results.json").is_file():
            run(step)
    finished = summaries(config)
    series = [(row["label"], [(c["training_tokens"], c["mean_exact_match"]) for c in row["training_curve"]])
              for row in finished]
    return write_report(root, markdown(finished), series, "mean exact match (static, test samples)")


def summaries(config) -> list[dict]:
    """One summary per finished step: static decoding and the fastest setting within TOLERANCE of it."""
    rows = []
    for name, label, results in finished_steps(config, STEPS):
        static = results["curve"][0]
        close = [entry for entry in results["curve"]
                 if entry["mean_exact_match"] >= static["mean_exact_match"] - TOLERANCE
                 and entry["tasks"][LONG]["exact_match"] >= static["tasks"][LONG]["exact_match"] - TOLERANCE]
        fastest = max(close, key=lambda entry: entry["tasks"][LONG]["tokens_per_forward"])
        rows.append({"name": name, "label": label, "ar": results["models"]["ar"], "static": static,
                     "fastest": fastest, "training_curve": results.get("training_curve", [])})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["step", "mean", *TASKS, *(f"{task} F1" for task in F1_TASKS), "vs AR (points)",
            f"fastest within 1 point on mean and {LONG}", "its mean", f"its {LONG}", f"its {LONG} tokens/forward"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for row in rows:
        static, fastest, ar = row["static"], row["fastest"], row["ar"]
        cells = [row["label"], f"{100 * static['mean_exact_match']:.1f}"]
        cells += [f"{100 * static['tasks'][task]['exact_match']:.1f}" for task in TASKS]
        cells += [f"{100 * static['tasks'][task]['token_f1']:.1f}" for task in F1_TASKS]
        cells += [f"{100 * (static['mean_exact_match'] - ar['mean_exact_match']):+.1f}", fastest["name"],
                  f"{100 * fastest['mean_exact_match']:.1f}", f"{100 * fastest['tasks'][LONG]['exact_match']:.1f}",
                  f"{fastest['tasks'][LONG]['tokens_per_forward']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
