"""The `diffusionvl` command: generate, convert a checkpoint, train, and run the benchmarks."""

import argparse
import sys
from pathlib import Path

from . import bench
from .processing import IMAGE_PLACEHOLDER


def _load(path: str):
    """The model and its processor: a DiffusionVLProcessor for vision-language checkpoints, else the tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    from .model import DiffusionVL

    if not Path(path, "config.json").is_file():
        raise SystemExit(f"error: {path} holds no config.json; pass a directory written by save_pretrained.")
    has_images = any(Path(path, name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
    return DiffusionVL.from_pretrained(path), (AutoProcessor if has_images else AutoTokenizer).from_pretrained(path)


def prompt_inputs(processor, prompt: str, images: list[str], chat: bool) -> dict:
    """Model inputs for one user turn: the chat template when there is one (and `chat`), images first."""
    if not prompt.strip():
        raise SystemExit("error: the prompt is empty; pass some text with --prompt.")
    tokenizer = getattr(processor, "tokenizer", processor)
    if images and tokenizer is processor:
        raise SystemExit("error: --image needs a vision-language checkpoint; this one has no image processor.")
    if images and chat:
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
        return dict(processor(processor.chat_text([{"role": "user", "content": content}], True), images))
    if images:
        return dict(processor(IMAGE_PLACEHOLDER * len(images) + prompt, images))
    text = prompt
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return {"input_ids": tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids}


def generate(args: argparse.Namespace) -> None:
    from transformers import TextStreamer

    model, processor = _load(args.model)
    tokenizer = getattr(processor, "tokenizer", processor)
    inputs = prompt_inputs(processor, args.prompt, args.image or [], chat=not args.raw)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        remasking_strategy=args.strategy,
        confidence_threshold=args.threshold,
        temperature=args.temperature,
        streamer=streamer,
        tokenizer=tokenizer,
        return_dict_in_generate=True,
    )
    print(f"[{out.sequences.shape[1]} tokens, {out.nfe} forwards, {out.tokens_per_forward:.2f} tokens/forward]",
          file=sys.stderr)


def convert(args: argparse.Namespace) -> None:
    import torch

    from .convert import convert as run_convert

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model = run_convert(args.src, args.dst, args.block_size, args.position_mode, args.mask_token_id, dtype)
    tokens = model.special_tokens
    print(f"wrote {args.dst}: block size {model.block_size}, mask {tokens.mask}, end of turn {tokens.eot}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="diffusionvl", description="Block-diffusion (vision-)language models.")
    commands = root.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate an answer with a saved DiffusionVL model")
    gen.add_argument("model", help="directory written by save_pretrained, with its tokenizer")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", action="append", help="an image file (repeat for several); needs a VLM checkpoint")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--steps", type=int, default=8, help="denoising steps per block")
    gen.add_argument(
        "--strategy", default="low_confidence_static",
        choices=["low_confidence_static", "low_confidence_dynamic", "threshold"],
    )
    gen.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the dynamic policies")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    gen.set_defaults(run=generate)

    con = commands.add_parser("convert", help="turn a transformers checkpoint into a DiffusionVL one, ready to train")
    con.add_argument("src", help="a Qwen2.5-VL or causal-LM directory with its tokenizer (and image processor)")
    con.add_argument("dst", help="a new, empty directory")
    con.add_argument("--block-size", type=int, default=8)
    con.add_argument("--position-mode", choices=["1d", "mrope"], default="1d", help="Qwen2.5-VL positions")
    con.add_argument("--mask-token-id", type=int, help="an unused embedding row; default: add <|mask|> by name")
    con.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    con.set_defaults(run=convert)

    tra = commands.add_parser("train", help="train on LLaVA-format data (stage 'projector' or 'diffusion')")
    from . import train as training

    training.add_arguments(tra)
    tra.set_defaults(run=training.main)

    ben = commands.add_parser("bench", help="decoding benchmark: AR vs block decoding vs full-sequence diffusion")
    bench.add_arguments(ben)
    ben.set_defaults(run=bench.main)

    from . import bench_train

    bt = commands.add_parser("bench-train", help="training benchmark: cheap vs full noisy stream on VLM batches")
    bench_train.add_arguments(bt)
    bt.set_defaults(run=bench_train.main)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # say what is wrong, without a traceback
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
