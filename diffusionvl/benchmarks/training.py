"""Training benchmark: the cheap noisy stream (SPEC §2.6) against the full two-stream objective, or, with
`--draft-only`, a frozen clean stream run first without autograd against one pass (modeling/streams.py).

    python -m diffusionvl.benchmarks.training            # or: diffusionvl bench-train [--draft-only]

VLM-shaped batches: every sample holds an image of several hundred tokens, a short question and a short
answer, so most blocks carry no supervision and the cheap layout drops them from the noisy stream. Both
variants see the same batches and noise draws, interleaved in one process; the losses are checked equal.
Reported: median step time (forward + backward), tokens/s, the bytes autograd keeps for the backward pass
(activation memory, measured on any device) and, on a GPU, peak allocated memory.
"""

import argparse
import json
import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..model import DiffusionVL, vision_inputs

IMAGE, MASK, EOT = 250, 255, 2


def build(args) -> DiffusionVL:
    half = args.hidden // args.heads // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=256, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=EOT, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                          "mrope_section": [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=args.hidden),
        image_token_id=IMAGE)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(args.device)
    model = DiffusionVL.from_autoregressive(model, mask_token_id=MASK, block_size=args.block_size).train()
    if args.draft_only:  # the SmolLM2 recipe's adapters, on the noisy stream; everything else frozen (PEFT's rule)
        from ..modeling.lora import add_lora
        from ..smollm2.recipe import LORA_TARGETS

        add_lora(model, 16, 32, LORA_TARGETS.split(","), scope="noisy")
    return model


def variants(args) -> dict[str, dict]:
    """name -> the diffusion_loss options of each compared variant; the second is the one under test."""
    if args.draft_only:
        return {"one pass": {"noisy_stream": "cheap", "clean_first": False},
                "clean first": {"noisy_stream": "cheap", "clean_first": True}}
    return {"full": {"noisy_stream": "full"}, "cheap": {"noisy_stream": "cheap"}}


def batch(args, generator: torch.Generator):
    """(ids, labels, images): an image of grid x grid merged tokens, a question and an answer per sample."""
    grid = args.image_side
    tokens = grid * grid
    rows = []
    for _ in range(args.batch_size):
        question = torch.randint(3, 200, (args.question,), generator=generator).tolist()
        answer = torch.randint(3, 200, (args.answer,), generator=generator).tolist() + [EOT]
        rows.append(([IMAGE] * tokens + question + [1], answer))
    ids = torch.tensor([p + a for p, a in rows])
    labels = ids.clone()
    labels[:, : tokens + args.question + 1] = -100
    pixels = torch.randn(args.batch_size * 4 * tokens, 3 * 2 * 14 * 14, generator=generator)
    grid_thw = torch.tensor([[1, 2 * grid, 2 * grid]] * args.batch_size)
    device = args.device
    return ids.to(device), labels.to(device), vision_inputs(pixels.to(device), grid_thw.to(device))


def step(model, noisy, vision, options: dict) -> tuple[float, float, int]:
    """One forward + backward. Returns (seconds, loss, bytes saved for backward)."""
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.diffusion_loss(noisy, vision, **options).loss
    loss.backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.detach().item(), saved[0]


def run(args) -> list[dict]:
    """Time both variants on the same batches and noise; every step checks that their losses are equal."""
    model, compared = build(args), variants(args)
    generator = torch.Generator().manual_seed(0)
    results = {name: {"seconds": [], "saved": 0, "peak": 0} for name in compared}
    largest_gap = 0.0
    for index in tqdm(range(args.warmup + args.steps), desc=f"training steps ({' + '.join(compared)})"):
        ids, labels, vision = batch(args, generator)
        noisy = model.add_noise(ids, labels, generator=torch.Generator(args.device).manual_seed(index))
        losses = []
        for name, options in compared.items():
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            seconds, loss, saved = step(model, noisy, vision, options)
            losses.append(loss)
            if index >= args.warmup:
                results[name]["seconds"].append(seconds)
                results[name]["saved"] = saved
                results[name]["peak"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        gap = abs(losses[0] - losses[1])
        if gap > 1e-4 * max(1.0, abs(losses[0])):
            raise AssertionError(f"the losses of {' and '.join(compared)} differ at step {index}: {losses}")
        largest_gap = max(largest_gap, gap)
    tokens = args.batch_size * (args.image_side**2 + args.question + 1 + args.answer + 1)
    rows = []
    for layout, r in results.items():
        seconds = statistics.median(r["seconds"])
        rows.append({"layout": layout, "median_step_seconds": seconds, "tokens_per_second": tokens / seconds,
                     "saved_for_backward_mib": r["saved"] / 2**20, "peak_gpu_mib": r["peak"] / 2**20,
                     "loss_checked_steps": args.warmup + args.steps, "largest_loss_gap": largest_gap})
    return rows


def table(rows, args) -> str:
    reference, tested = rows
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"batch {args.batch_size} x ({args.image_side**2} image + {args.question + 1} question + {args.answer + 1} answer "
        f"tokens), block size {args.block_size}, LM {args.layers} layers x {args.hidden}, median of {args.steps} steps, "
        f"{device}, torch {torch.__version__}",
        "",
        "| variant | step (ms) | tokens / s | saved for backward (MiB) | peak GPU (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['layout']} | {1000 * r['median_step_seconds']:.1f} | {r['tokens_per_second']:.0f} | "
                     f"{r['saved_for_backward_mib']:.1f} | {r['peak_gpu_mib']:.0f} |")
    lines.append(f"| {tested['layout']} / {reference['layout']} | "
                 f"{tested['median_step_seconds'] / reference['median_step_seconds']:.2f}x time | "
                 f"{tested['tokens_per_second'] / reference['tokens_per_second']:.2f}x | "
                 f"{tested['saved_for_backward_mib'] / reference['saved_for_backward_mib']:.2f}x | "
                 + (f"{tested['peak_gpu_mib'] / reference['peak_gpu_mib']:.2f}x |" if reference["peak_gpu_mib"]
                    else "n/a |"))
    lines += ["", f"Loss check: {tested['layout']} == {reference['layout']} on all "
                  f"{reference['loss_checked_steps']} batches "
                  f"(largest difference {reference['largest_loss_gap']:.2e})."]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    parser.add_argument("--image-side", type=int, default=16, help="merged tokens per image side (16 -> 256 tokens)")
    parser.add_argument("--question", type=int, default=24, help="question tokens per sample")
    parser.add_argument("--answer", type=int, default=15, help="answer tokens per sample (before end-of-turn)")
    parser.add_argument("--block-size", type=int, default=8, help="tokens per diffusion block")
    parser.add_argument("--hidden", type=int, default=256, help="LM hidden size")
    parser.add_argument("--layers", type=int, default=4, help="LM layers")
    parser.add_argument("--heads", type=int, default=4, help="LM attention heads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--draft-only", action="store_true",
                        help="draft-only LoRA adapters: clean stream first (no autograd) against one pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--json", help="also write the rows to this JSON file")


def main(args: argparse.Namespace) -> None:
    rows = run(args)
    print(table(rows, args))
    if args.json:
        write_json(args.json, rows, args)


def write_json(path, rows: list[dict], args: argparse.Namespace) -> None:
    """The rows and the settings that produced them; only the benchmark's own options, never the CLI's plumbing
    (the command's runner function is not JSON)."""
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    settings.update(torch=torch.__version__, threads=torch.get_num_threads())
    with open(path, "w") as handle:
        json.dump({"settings": settings, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
