"""Decoding benchmark on a toy model trained here in about a minute of CPU time.

    python -m diffusionvl.bench            # or: diffusionvl bench

A tiny Qwen2 learns the copy task of `toy.py` autoregressively, is translated and finetuned with block
diffusion, then every decoder answers the same prompts, one prompt at a time. Prompts have a fixed length by
default: the copy offset is then constant, and a model this small learns the task in under a minute. Decoders: the AR source model (greedy,
KV cache), block decoding with the static, dynamic and threshold policies, and full-sequence LLaDA-V style
decoding. Wall times are medians over interleaved runs in one process, reported with NFE and tokens per
forward, which do not depend on the machine.
"""

import argparse
import copy
import json
import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, Qwen2Config

from .baselines import autoregressive_generate, full_sequence_generate
from .model import DiffusionVL
from .toy import FIRST, SEPARATOR, SPAN, toy_answer, train_toy

EOT, MASK, VOCAB = 2, 63, 64


def build_models(args):
    torch.manual_seed(args.seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=EOT, pad_token_id=0,
    )
    ar = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    lengths, repeat = (args.min_prompt, args.max_prompt), args.repeat
    with tqdm(total=args.ar_steps, desc="AR pretraining") as bar:
        train_toy(ar, args.ar_steps, 4e-3, EOT, seed=args.seed, lengths=lengths, repeat=repeat, progress=bar)
    source = copy.deepcopy(ar).eval()
    model = DiffusionVL.from_autoregressive(ar, mask_token_id=MASK, block_size=args.block_size)
    with tqdm(total=args.diffusion_steps, desc="diffusion finetuning") as bar:
        train_toy(model, args.diffusion_steps, 2e-3, EOT, seed=args.seed + 1, lengths=lengths, repeat=repeat, progress=bar)
    return source, model.eval()


def decoders(source, model, args) -> dict:
    common = dict(max_new_tokens=args.max_new_tokens, steps=args.steps, return_dict_in_generate=True)
    total_steps = -(-args.max_new_tokens // args.block_size) * args.steps  # the static policy's step budget
    return {
        "AR (greedy, KV cache)": lambda ids: autoregressive_generate(source, ids, args.max_new_tokens, EOT, 0),
        "block, static": lambda ids: model.generate(ids, **common),
        "block, dynamic": lambda ids: model.generate(
            ids, remasking_strategy="low_confidence_dynamic", confidence_threshold=args.threshold, **common
        ),
        "block, threshold": lambda ids: model.generate(
            ids, remasking_strategy="threshold", confidence_threshold=args.threshold, **common
        ),
        "full sequence (LLaDA-V style)": lambda ids: full_sequence_generate(
            model, ids, args.max_new_tokens, args.block_size, total_steps
        ),
    }


def measure(decode, prompts, answers) -> dict:
    start = time.perf_counter()
    outputs = [decode(prompt[None]) for prompt in prompts]
    seconds = time.perf_counter() - start
    produced = [out.sequences[0][: (out.sequences[0] != 0).sum()].tolist() for out in outputs]
    return {
        "seconds": seconds,
        "tokens": sum(len(p) for p in produced),
        "nfe": sum(out.nfe for out in outputs),
        "correct": sum(p == a for p, a in zip(produced, answers)),
    }


def run(args) -> list[dict]:
    source, model = build_models(args)
    g = torch.Generator().manual_seed(args.seed + 2)
    prompts, answers = [], []
    for _ in range(args.prompts):
        k = int(torch.randint(args.min_prompt, args.max_prompt + 1, (1,), generator=g))
        prompt = torch.randint(FIRST, FIRST + SPAN, (k,), generator=g).tolist()
        prompts.append(torch.tensor(prompt + [SEPARATOR]))
        answers.append(toy_answer(prompt, args.repeat, EOT)[: args.max_new_tokens])
    methods = decoders(source, model, args)
    runs = {name: [] for name in methods}
    for name, decode in methods.items():  # warm-up
        measure(decode, prompts[:2], answers[:2])
    for _ in tqdm(range(args.runs), desc="timed runs"):
        for name, decode in methods.items():  # interleaved, so drift of the machine hits every method alike
            runs[name].append(measure(decode, prompts, answers))
    rows = []
    for name, results in runs.items():
        first = results[0]
        seconds = statistics.median(r["seconds"] for r in results)
        rows.append({
            "method": name,
            "accuracy": first["correct"] / len(prompts),
            "nfe_per_prompt": first["nfe"] / len(prompts),
            "tokens_per_forward": first["tokens"] / first["nfe"],
            "tokens_per_second": first["tokens"] / seconds,
            "median_seconds": seconds,
        })
    for row in rows:
        row["speedup_vs_full_sequence"] = rows[-1]["median_seconds"] / row["median_seconds"]
        row["speedup_vs_ar"] = rows[0]["median_seconds"] / row["median_seconds"]
    return rows


def table(rows: list[dict], args) -> str:
    head = (
        f"toy copy task, {args.prompts} prompts, answers up to {args.max_new_tokens} tokens, block size "
        f"{args.block_size}, {args.steps} steps per block, threshold {args.threshold}, median of {args.runs} runs, "
        f"torch {torch.__version__} on {torch.get_num_threads()} CPU threads\n\n"
        "| method | exact match | NFE / prompt | tokens / forward | ms / prompt | tokens / s | vs full sequence | vs AR |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = [
        f"| {r['method']} | {r['accuracy']:.2f} | {r['nfe_per_prompt']:.1f} | {r['tokens_per_forward']:.2f} | "
        f"{1000 * r['median_seconds'] / args.prompts:.1f} | {r['tokens_per_second']:.0f} | {r['speedup_vs_full_sequence']:.2f}x | {r['speedup_vs_ar']:.2f}x |"
        for r in rows
    ]
    return head + "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-size", type=int, default=8, help="tokens per diffusion block")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per block")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of dynamic/threshold")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    parser.add_argument("--repeat", type=int, default=6, help="the answer repeats the shifted prompt this often")
    parser.add_argument("--min-prompt", type=int, default=8, help="shortest prompt (tokens before the separator)")
    parser.add_argument("--max-prompt", type=int, default=8, help="longest prompt")
    parser.add_argument("--prompts", type=int, default=16, help="prompts each decoder answers")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; times are their median")
    parser.add_argument("--ar-steps", type=int, default=300, help="AR training steps of the toy model")
    parser.add_argument("--diffusion-steps", type=int, default=500, help="block-diffusion finetuning steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and prompts")
    parser.add_argument("--json", help="also write the rows to this JSON file")


def write_json(path, rows: list[dict], args: argparse.Namespace) -> None:
    """The rows and the settings that produced them; only the benchmark's own options, never the CLI's plumbing
    (the command's runner function is not JSON)."""
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    settings.update(torch=torch.__version__, threads=torch.get_num_threads())
    with open(path, "w") as handle:
        json.dump({"settings": settings, "rows": rows}, handle, indent=2)


def main(args: argparse.Namespace) -> None:
    rows = run(args)
    print(table(rows, args))
    if args.json:
        write_json(args.json, rows, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
