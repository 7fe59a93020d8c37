"""`diffusionvl demo`: a few MiniVL test images answered by the shipped dVLM (streamed block by block) and by its
AR source, side by side, with the truth, NFE, tokens per forward and speed of each.

    diffusionvl demo [--samples 5] [--seed 0] [--save DIR] [--dvlm minivl-dvlm] [--ar minivl-ar]

Runs offline on the models inside the package. The dVLM decodes speculatively where it can
(decoding/speculative.py): its drafts are checked by the AR source (`--verifier ar`, the default when the AR is
loaded: the answers are then the AR's own, token for token) or by the dVLM's own causal mode (`--verifier self`, a
causal-context translation with logit shift); else with the dynamic policy (a step commits every token above the
threshold). `--strategy` picks another. The AR source decodes greedily with its KV cache. The totals line counts
how many of the dVLM's answers equal the AR's, word for word, and the speed of each.
"""

import argparse
from pathlib import Path

FALLBACK_STRATEGY, DEFAULT_THRESHOLD = "low_confidence_dynamic", 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=5, help="images to answer (the tasks in turn: 5 is one each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MiniVL test samples drawn")
    parser.add_argument("--save", metavar="DIR", help="write the images here as PNG files")
    parser.add_argument("--dvlm", default="minivl-dvlm", help="the block-diffusion model")
    parser.add_argument("--ar", default="minivl-ar", help="its autoregressive source ('none' to skip it)")
    parser.add_argument("--strategy",
                        choices=["low_confidence_static", "low_confidence_dynamic", "threshold", "speculative"],
                        help="the dVLM's unmasking policy (default: speculative where the model has a causal mode, "
                        f"else {FALLBACK_STRATEGY})")
    parser.add_argument("--verifier", choices=["ar", "self"], help="who checks speculative drafts: the AR source "
                        "(default when it is loaded) or the dVLM's own causal mode")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="confidence threshold")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per block (at most the block size)")


def _decoding(args, models: dict):
    """The dVLM's strategy, and the AR model that checks its speculative drafts (None: its own causal mode)."""
    from ..errors import DiffusionVLError
    from ..inference import can_speculate

    dvlm, ar = models["dVLM"][0].config, models.get("AR", (None,))[0]
    if args.verifier == "ar" and ar is None:
        raise DiffusionVLError("--verifier ar checks the drafts with the AR source, and --ar is 'none'; name the "
                               "AR model (--ar minivl-ar) or use --verifier self.")
    checker = args.verifier or ("ar" if ar is not None else "self")
    strategy = args.strategy or ("speculative" if can_speculate(dvlm, checker == "ar") else FALLBACK_STRATEGY)
    return strategy, ar if strategy == "speculative" and checker == "ar" else None


def _line(out, right: bool) -> str:
    mark = "right" if right else "WRONG"
    speed = out.tokens / max(out.seconds, 1e-9)
    return (f"  {'':<5} {mark}: {out.tokens} tokens, NFE {out.nfe}, {out.tokens_per_forward:.2f} tokens/forward, "
            f"{speed:.0f} tokens/s")


def main(args: argparse.Namespace) -> None:
    import torch
    from transformers import TextStreamer

    from ..decoding.config import DecodingConfig
    from ..errors import DiffusionVLError
    from ..evaluation.metrics import exact_match
    from ..inference import answer, chat_inputs, load
    from .generator import TASKS, sample
    from .models import image_size_of

    if args.samples < 1:
        raise DiffusionVLError(f"--samples must be a positive integer, got {args.samples}.")
    models = {"dVLM": load(args.dvlm)}
    if args.ar != "none":
        models["AR"] = load(args.ar)
    strategy, verifier = _decoding(args, models)
    print(f"dVLM decoding: {strategy}" + (
        "" if strategy != "speculative" else f", drafts checked by {args.ar}" if verifier is not None else
        ", drafts checked by its own causal mode"))
    config = DecodingConfig(max_new_tokens=64, steps=args.steps, remasking_strategy=strategy,
                            confidence_threshold=args.threshold)
    size = image_size_of(models["dVLM"][1])
    samples = [sample(TASKS[i % len(TASKS)], "test", args.seed, i // len(TASKS), size) for i in range(args.samples)]
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checks = {"dVLM": verifier}  # the AR decodes alone
    for name, (model, processor) in models.items():  # warm-up, so the first answer's speed is not the first call's
        answer(model, processor, chat_inputs(processor, [samples[0].question], [[samples[0].image]]), config,
               verifier=checks.get(name))
    totals = {name: [0, 0, 0.0, 0] for name in models}  # tokens, row forwards, seconds, right
    same = 0  # samples where the dVLM's answer equals the AR's
    for index, s in enumerate(samples, 1):
        where = ""
        if args.save:
            path = Path(args.save) / f"{s.id}.png"
            s.image.save(path)
            where = f"  ({path})"
        print(f"[{index}/{len(samples)}] {s.task}{where}\n  Q: {s.question}\n  truth: {s.answer}")
        texts = {}
        for name, (model, processor) in models.items():
            print(f"  {name:<5} ", end="", flush=True)
            streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            out = answer(model, processor, chat_inputs(processor, [s.question], [[s.image]]), config, streamer,
                         verifier=checks.get(name))
            right = bool(exact_match(out.texts[0], s.answer))  # scored as `diffusionvl eval` scores it
            texts[name] = out.texts[0]
            print(_line(out, right))
            total = totals[name]
            totals[name] = [total[0] + out.tokens, total[1] + out.row_forwards, total[2] + out.seconds,
                            total[3] + right]
        same += texts.get("AR") == texts["dVLM"]
        print()
    for name, (tokens, forwards, seconds, right) in totals.items():
        print(f"{name:<5} {right}/{len(samples)} right, {tokens / max(forwards, 1):.2f} tokens/forward, "
              f"{tokens / max(seconds, 1e-9):.0f} tokens/s")
    if "AR" in totals:
        print(f"the dVLM's answer equals the AR's on {same}/{len(samples)} samples")
