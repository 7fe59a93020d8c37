"""`diffusionvl recipe NAME --out DIR`: the studies that build the shipped models, end to end and resumable.

    diffusionvl recipe minivl --out runs/minivl     # MiniVL: AR source, its translation, a baseline, evaluation
    diffusionvl recipe smollm2 --out runs/smollm2   # SmolLM2-135M-Instruct translated by self-distillation
"""

import argparse
import importlib

RECIPES = {
    "minivl": ("MiniVL: train an AR Qwen2.5-VL, translate it, train a diffusion baseline, evaluate all three",
               "minivl.recipe"),
    "smollm2": ("SmolLM2-135M-Instruct: self-distillation data, LoRA block-diffusion finetune, comparison with "
                "the AR source", "smollm2.recipe"),
}


def _module(name: str):
    return importlib.import_module(f".{RECIPES[name][1]}", __package__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    studies = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (help_text, _) in RECIPES.items():
        _module(name).add_arguments(studies.add_parser(name, help=help_text, description=help_text))


def main(args: argparse.Namespace) -> None:
    _module(args.name).main(args)
