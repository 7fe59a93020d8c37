"""The ablation both studies run (`recipe smollm2 --ablation`, `recipe minivl --ablation`): what keeps the source
added to a translation one piece at a time, with the same data, budget and seeds, so each step differs from the
one before it by one option:

1. the recipe as first shipped (block-causal context, the block-diffusion loss alone);
2. + causal context (`context_attention="causal"`): the clean stream attends as the source does;
3. + the AR loss on the clean stream;
4. + distillation from the source at the masked positions;
5. + the confidence term;
6. (studies that finetune with LoRA) + draft-only adapters (`lora_scope="noisy"`): the adapters act on the noisy
   stream alone, so the clean stream and the causal mode are the source itself. The AR loss goes with this step:
   it would train a stream that no longer has anything to train.
7. (the same studies) + suffix noise (`noise_pattern="suffix"`): a block's known tokens are always a prefix, the
   only layout the speculative drafter (draft-only adapters' use) ever sees.

Here: the steps, their configs, the finished steps' results, and the report (table and curves).
"""

import json
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
STEP_NAMES = tuple(name for name, _, _ in STEPS)
DRAFT_ONLY = ("6-draft-only", "+ draft-only adapters", {"lora_scope": "noisy", "ar_loss_weight": 0.0})
SUFFIX_NOISE = ("7-suffix-noise", "+ suffix noise", {"noise_pattern": "suffix"})


def step_configs(config, study_steps=STEPS) -> list[tuple[str, str, object]]:
    """(folder name, label, config) of every step of `study_steps`, each config's `out` being OUT/<step>; a step
    adds its options to those of the steps before it. `config` is a study's recipe config (a dataclass with
    these fields)."""
    options, steps = {}, []
    for name, label, added in study_steps:
        options = {**options, **added}
        steps.append((name, label, replace(config, out=str(Path(config.out) / name), **options)))
    return steps


def parse_steps(text: str, study_steps=STEPS) -> list[str] | None:
    """`--ablation` as given: "all" -> None (every step), else the comma-separated step names, checked."""
    if text == "all":
        return None
    names, known = text.split(","), [name for name, _, _ in study_steps]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown ablation step(s) {unknown}; the steps are {', '.join(known)}.")
    return names


def finished_steps(config, study_steps=STEPS):
    """(name, label, results) of every step of `study_steps` whose run has written OUT/<step>/results.json."""
    for name, label, step in step_configs(config, study_steps):
        path = Path(step.out) / "results.json"
        if path.is_file():
            yield name, label, json.loads(path.read_text())


def write_report(root: Path, table: str, series: list, ylabel: str) -> str:
    """The study's table to ROOT/ablation.md and, once some step has a curve, its plot to ROOT/ablation.png."""
    (root / "ablation.md").write_text(table)
    if any(points for _, points in series):
        plot_curves(series, root / "ablation.png", ylabel)
    return table


def plot_curves(series: list[tuple[str, list[tuple[float, float]]]], path: Path, ylabel: str) -> None:
    """One line per (label, [(training tokens, score)]) into the PNG `path` (matplotlib, the `bench` extra)."""
    require_extra("bench", "the ablation's plot", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4))
    for label, points in series:
        points = sorted(points)
        axes.plot([x / 1e3 for x, _ in points], [y for _, y in points], marker="o", label=label)
    axes.set_xlabel("training tokens (thousands)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
