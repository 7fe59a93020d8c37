"""`diffusionvl recipe smollm2 --ablation --out DIR`: the ablation of `evaluation.ablation` on the SmolLM2 study.
Each step is a whole `recipe smollm2` run in DIR/<step> (resumable; a finished step is skipped), all reading the
one DIR/data and sharing the AR row. The table (DIR/ablation.md) and the curves of token F1 against training
tokens (DIR/ablation.png) are rebuilt from whatever steps have finished.
"""

import os
import shutil
from pathlib import Path

from ..evaluation.ablation import (DRAFT_ONLY, STEPS as SHARED_STEPS, SUFFIX_NOISE, finished_steps, step_configs,
                                   write_report)

TOLERANCE = 0.05  # the speed columns: the most tokens per forward within this much token F1 of static
CAUSAL_ROW = "causal mode (KV cache)"
STEPS = SHARED_STEPS + (DRAFT_ONLY, SUFFIX_NOISE)  # the study finetunes with LoRA: its adapters may be draft-only


def run_ablation(config, only: list[str] | None = None) -> str:
    """Every step (or those named in `only`) after the shared data; returns the table as Markdown."""
    from .recipe import make_data, run

    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    make_data(config, root)
    for name, _, step in step_configs(config, STEPS):
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
    series = [(row["label"], [(c["training_tokens"], c["token_f1"]) for c in row["curve"]]) for row in finished]
    return write_report(root, markdown(finished), series, "token F1 against the source (static)")


def summaries(config) -> list[dict]:
    """One summary per finished step: static decoding, the causal mode, the fastest setting within TOLERANCE."""
    rows = []
    for name, label, results in finished_steps(config, STEPS):
        by_name = {row["name"]: row for row in results["rows"]}
        static = by_name["static"]
        close = [row for row in results["rows"][1:]
                 if row["name"] != CAUSAL_ROW and row["token_f1"] >= static["token_f1"] - TOLERANCE]
        fastest = max(close, key=lambda row: row["tokens_per_forward"])
        rows.append({"name": name, "label": label, "static": static, "fastest": fastest,
                     "causal": by_name.get(CAUSAL_ROW), "curve": results["curve"]})
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
