"""`diffusionvl recipe NAME --out DIR`: the studies that build the shipped models, end to end and resumable.

    diffusionvl recipe minivl --out runs/minivl     # MiniVL: AR source, its translation, a baseline, evaluation
    diffusionvl recipe smollm2 --out runs/smollm2   # SmolLM2-135M-Instruct translated by self-distillation
    diffusionvl recipe smollm2 --ablation --out runs/smollm2-ablation   # evaluation/ablation.py's steps
"""

import argparse
import importlib

RECIPES = {  # name: (help, its package, whether it has an ablation module)
    "minivl": ("MiniVL: train an AR Qwen2.5-VL, translate it, train a diffusion baseline, evaluate all three",
               "minivl", True),
    "smollm2": ("SmolLM2-135M-Instruct: self-distillation data, LoRA block-diffusion finetune, comparison with "
                "the AR source", "smollm2", True),
}


def _module(name: str, part: str = "recipe"):
    return importlib.import_module(f".{RECIPES[name][1]}.{part}", __package__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    studies = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (help_text, _, ablation) in RECIPES.items():
        study = studies.add_parser(name, help=help_text, description=help_text)
        _module(name).add_arguments(study)
        if ablation:
            study.add_argument("--ablation", nargs="?", const="all", metavar="STEPS",
                               help="run the ablation (evaluation/ablation.py) in OUT/<step>: every step, or those "
                               "named (comma-separated, e.g. 5-confidence); the other options apply to every step")


def main(args: argparse.Namespace) -> None:
    if getattr(args, "ablation", None):
        from .evaluation.ablation import parse_steps

        study = _module(args.name, "ablation")
        steps = parse_steps(args.ablation, study.STEPS)  # checked before anything runs
        print(study.run_ablation(_module(args.name).config_from(args), steps))
        print(f"table: {args.out}/ablation.md")
        return
    _module(args.name).main(args)
