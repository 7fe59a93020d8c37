"""`diffusionvl recipe smollm2 --ablation --out DIR`: the translation with what keeps the source added one piece
at a time, on one data set with the same budget and seeds, so each row of the table differs from the one above
it by one option:

1. the recipe as first shipped (block-causal context, the block-diffusion loss alone);
2. + causal context (`--context-attention causal`): the clean stream attends as the source does;
3. + the AR loss on the clean stream (`--ar-loss-weight`);
4. + distillation from the source at the masked positions (`--distill-weight`);
5. + the confidence term (`--confidence-weight`).

Each step is a whole `recipe smollm2` run in DIR/<step> (resumable; a finished step is skipped), all reading the
one DIR/data. The table (DIR/ablation.md) and the curves of token F1 against training tokens (DIR/ablation.png,
with matplotlib) are rebuilt from whatever steps have finished.
"""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..errors import require_extra

WEIGHTS = {"ar_loss_weight": 1.0, "distill_weight": 1.0, "confidence_weight": 0.2}
STEPS = (
    ("1-shipped", "as first shipped", {"context_attention": "block_causal", "ar_loss_weight": 0.0,
                                       "distill_weight": 0.0, "confidence_weight": 0.0}),
    ("2-causal", "+ causal context", {"context_attention": "causal"}),
    ("3-ar", "+ AR loss", {"ar_loss_weight": WEIGHTS["ar_loss_weight"]}),
    ("4-distill", "+ distillation", {"distill_weight": WEIGHTS["distill_weight"]}),
    ("5-confidence", "+ confidence", {"confidence_weight": WEIGHTS["confidence_weight"]}),
)
TOLERANCE = 0.05  # the speed column: the most tokens per forward within this much token F1 of static


def step_configs(config) -> list[tuple[str, str, object]]:
    """(folder name, label, RecipeConfig) of every step; each adds its options to those of the steps before it."""
    options, steps = {}, []
    for name, label, added in STEPS:
        options = {**options, **added}
        steps.append((name, label, replace(config, out=str(Path(config.out) / name), **options)))
    return steps


def run_ablation(config, only: list[str] | None = None) -> str:
    """Every step (or those named in `only`) after the shared data; returns the table as Markdown."""
    from .recipe import make_data, run

    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    make_data(config, root)
    for name, _, step in step_configs(config):
        if only and name not in only:
            continue
        folder = Path(step.out)
        folder.mkdir(exist_ok=True)
        if not (folder / "data").exists():
            os.symlink(root / "data", folder / "data", target_is_directory=True)
        ar, shared = folder / "eval" / "ar.json", root / "ar.json"  # the AR row is the same for every step
        if shared.is_file() and not ar.is_file():
            ar.parent.mkdir(exist_ok=True)
            shutil.copy(shared, ar)
        if not (folder / "results.json").is_file():
            run(step)
        if not shared.is_file():
            shutil.copy(ar, shared)
    finished = summaries(config)
    table = markdown(finished)
    (root / "ablation.md").write_text(table)
    if any(summary["curve"] for summary in finished):
        plot(finished, root / "ablation.png")
    return table


def summaries(config) -> list[dict]:
    """One summary per finished step: static decoding, the causal mode, the fastest setting within TOLERANCE."""
    rows = []
    for name, label, step in step_configs(config):
        path = Path(step.out) / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        by_name = {row["name"]: row for row in results["rows"]}
        static = by_name["static"]
        close = [row for row in results["rows"][1:] if row["name"] != "causal mode (KV cache)"
                 and row["token_f1"] >= static["token_f1"] - TOLERANCE]
        fastest = max(close, key=lambda row: row["tokens_per_forward"])
        rows.append({"name": name, "label": label, "static": static, "fastest": fastest,
                     "causal": by_name.get("causal mode (KV cache)"), "curve": results["curve"]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| step | static F1 | static exact | perplexity ratio | causal-mode F1 | fastest within 0.05 F1 | "
             "its F1 | its tokens/forward |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        static, fastest, causal = row["static"], row["fastest"], row["causal"]
        causal_f1 = f"{causal['token_f1']:.3f}" if causal else "-"
        lines.append(f"| {row['label']} | {static['token_f1']:.3f} | {static['exact_match']:.3f} | "
                     f"{static['perplexity_ratio']:.2f} | {causal_f1} | {fastest['name']} | "
                     f"{fastest['token_f1']:.3f} | {fastest['tokens_per_forward']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Token F1 (static, the first held-out prompts) against training tokens, one line per step."""
    require_extra("bench", "the ablation's plot", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4))
    for row in rows:
        points = sorted((c["training_tokens"], c["token_f1"]) for c in row["curve"])
        axes.plot([x / 1e3 for x, _ in points], [y for _, y in points], marker="o", label=row["label"])
    axes.set_xlabel("training tokens (thousands)")
    axes.set_ylabel("token F1 against the source (static)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
