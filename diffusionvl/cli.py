"""The `diffusionvl` command: generate, convert a checkpoint, train, and run the benchmarks.

Heavy modules (torch, transformers) are imported only by the command that runs, so `--help` and `--version`
answer at once. A user error prints `error: ...` and exits with status 2; `--debug` shows the traceback.
"""

import argparse
import importlib
import sys

from . import __version__

IMAGE_PLACEHOLDER = "<image>"  # the same string as processing.IMAGE_PLACEHOLDER, without importing transformers
# Errors the user can fix from the message alone. DiffusionVLError is a ValueError; the others come from the
# standard library (paths) and huggingface_hub (a config field of the wrong type).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each flag's default next to its help, keep descriptions as written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown choice, a missing flag) end in one `error: ...` line like every other
    user error, so scripts can read the last line of stderr."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def prompt_inputs(processor, prompt: str, images: list[str], chat: bool) -> dict:
    """Model inputs for one user turn: the chat template when there is one (and `chat`).

    Images go where the prompt's `<image>` placeholders stand; a prompt without placeholders gets one per image
    in front of the text."""
    if not prompt.strip():
        raise ValueError("the prompt is empty; pass some text with --prompt.")
    tokenizer = getattr(processor, "tokenizer", processor)
    placed = prompt.count(IMAGE_PLACEHOLDER) if tokenizer is not processor else 0  # plain text to a text model
    if images and tokenizer is processor:
        raise ValueError("--image needs a vision-language checkpoint; this one has no image processor.")
    if placed != len(images) and placed:
        raise ValueError(f"the prompt holds {placed} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} --image "
                         f"file(s) were given; pass one --image per placeholder, or leave the placeholders out.")
    if images:
        text = prompt if placed else IMAGE_PLACEHOLDER * len(images) + prompt
        if chat:
            text = processor.chat_text([{"role": "user", "content": text}], True)
        return dict(processor(text, images))
    if chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    return {"input_ids": tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids}


def torch_dtype(name: str):
    """None for 'auto' (the checkpoint's own dtype), else the torch dtype of that name."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def model_argument(args: argparse.Namespace) -> str:
    """--model, else the positional MODEL, else the shipped default."""
    from .checkpoints.folders import DEFAULT_MODEL

    given = [value for value in (args.model_option, args.model) if value is not None]
    if len(set(given)) > 1:
        raise ValueError(f"two models given ({given[1]} and --model {given[0]}); pass one.")
    return given[0] if given else DEFAULT_MODEL


def generate(args: argparse.Namespace) -> None:
    import json

    import torch
    from transformers import TextStreamer

    from .inference import answer, open_model, open_processor

    config = decoding_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = model_argument(args)
    processor = open_processor(path)
    inputs = prompt_inputs(processor, args.prompt, args.image or [], chat=not args.raw)
    model = open_model(path, dtype=torch_dtype(args.dtype), device=device, autoregressive=args.autoregressive)
    verifier = open_verifier(args, torch_dtype(args.dtype), device)
    tokenizer = getattr(processor, "tokenizer", processor)
    generator = torch.Generator(device).manual_seed(args.seed) if args.seed is not None else None
    streamer = None if args.json else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = answer(model, processor, inputs, config, streamer=streamer, generator=generator, verifier=verifier)
    if args.json:
        print(json.dumps({"model": str(path), "text": out.texts[0], "tokens": out.tokens, "nfe": out.nfe,
                          "tokens_per_forward": round(out.tokens_per_forward, 4), "seconds": round(out.seconds, 4),
                          "tokens_per_s": round(out.tokens / max(out.seconds, 1e-9), 2)}))
        return
    print(f"[{out.tokens} tokens, {out.nfe} forwards, {out.tokens_per_forward:.2f} tokens/forward, "
          f"{out.seconds:.2f} s]", file=sys.stderr)


def convert(args: argparse.Namespace) -> None:
    from .training.convert import convert as run_convert

    model = run_convert(args.src, args.dst, args.block_size, args.position_mode, args.mask_token_id,
                        torch_dtype(args.dtype), args.logit_shift, args.context_attention)
    tokens = model.special_tokens
    shift = ", logit shift" if model.config.logit_shift else ""
    shift += ", causal context" if model.config.context_attention == "causal" else ""
    print(f"wrote {args.dst}: block size {model.block_size}{shift}, mask {tokens.mask}, end of turn {tokens.eot}")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags `generate`, `chat` and `eval` share (DecodingConfig's fields)."""
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the answer's length limit")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per block")
    parser.add_argument("--strategy", choices=["low_confidence_static", "low_confidence_dynamic", "threshold",
                                               "speculative"],
                        help="unmasking policy, or speculative: drafts verified by the model's causal mode or by "
                        "--verifier (lossless) (default: low_confidence_static; speculative with --verifier)")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the dynamic policies")
    parser.add_argument("--speculative-copies", type=copies_option, default=1, metavar="N|all",
                        help="speculative: noisy copies of the block per verify forward (DecodingConfig)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample from the smallest set of tokens reaching this probability")


def add_verifier_argument(parser: argparse.ArgumentParser) -> None:
    """`--verifier`, for the commands that decode with a loaded model (generate, chat, eval, serve)."""
    parser.add_argument("--verifier", help="an autoregressive model sharing the tokenizer (e.g. minivl-ar, smollm2) "
                        "that checks speculative drafts, so the answers are its own greedy answers (default: the "
                        "model's own causal mode); implies --strategy speculative")


def open_verifier(args: argparse.Namespace, dtype=None, device=None):
    """The --verifier model (in eval mode), or None."""
    if not getattr(args, "verifier", None):
        return None
    from .inference import open_model

    return open_model(args.verifier, dtype=dtype, device=device)


def decoding_config(args: argparse.Namespace):
    """The DecodingConfig of the decoding flags; bad values fail here, before any weight is read."""
    from .decoding.config import DecodingConfig
    from .errors import DiffusionVLError

    verifier = getattr(args, "verifier", None)
    strategy = args.strategy or ("speculative" if verifier else "low_confidence_static")
    if verifier and strategy != "speculative":
        raise DiffusionVLError(f"--verifier {verifier} checks speculative drafts, and --strategy is {strategy}; drop "
                               "one of them.")
    return DecodingConfig(max_new_tokens=args.max_new_tokens, steps=args.steps, remasking_strategy=strategy,
                          confidence_threshold=args.threshold, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, speculative_copies=args.speculative_copies)


def copies_option(text: str) -> int | None:
    """`--speculative-copies`: a count, or `all` (None: one copy per block position)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("model", nargs="?", help="a DiffusionVL (or autoregressive) checkpoint folder with its "
                     "tokenizer, or a model name: minivl-dvlm (the default), minivl-ar, smollm2-dlm, smollm2")
    gen.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as the positional MODEL")
    gen.add_argument("--prompt", required=True, help="the user's message; <image> marks where an image goes")
    gen.add_argument("--image", action="append", help="an image file (repeat for several); needs a VLM checkpoint")
    add_decoding_arguments(gen)
    add_verifier_argument(gen)
    gen.add_argument("--seed", type=int, help="seed of the sampling (with --temperature > 0)")
    gen.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                     help="weights' dtype; auto keeps the checkpoint's")
    gen.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, tokens, nfe, "
                     "tokens_per_forward, seconds, tokens_per_s) instead of streaming the answer")
    gen.add_argument("--autoregressive", action="store_true", help="accept an untranslated AR checkpoint (e.g. "
                     "minivl-ar) and decode it token by token, for comparison")


def add_convert_arguments(con: argparse.ArgumentParser) -> None:
    con.add_argument("src", help="a Qwen2.5-VL or causal-LM directory with its tokenizer (and image processor)")
    con.add_argument("dst", help="a new, empty directory")
    con.add_argument("--block-size", type=int, default=8, help="tokens per diffusion block")
    con.add_argument("--position-mode", choices=["1d", "mrope"], default="1d", help="Qwen2.5-VL positions")
    con.add_argument("--context-attention", choices=["block_causal", "causal"], default="block_causal",
                     help="how clean tokens attend: block-causal (as released) or token-causal, as the source does")
    con.add_argument("--logit-shift", action="store_true",
                     help="position i - 1 predicts token i, as in the AR source (keeps more of it when data is scarce)")
    con.add_argument("--mask-token-id", type=int, help="an unused embedding row; default: add <|mask|> by name")
    con.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                     help="weights' dtype; auto keeps the source's")


# name -> (help, "module:function" adding its flags, "module:function" running it); modules load only when used
COMMANDS = {
    "generate": ("generate an answer with a saved DiffusionVL model", "cli:add_generate_arguments", "cli:generate"),
    "convert": ("turn a transformers checkpoint into a DiffusionVL one, ready to train", "cli:add_convert_arguments",
                "cli:convert"),
    "train": ("train on LLaVA-format data (stage 'projector', 'diffusion' or 'autoregressive')",
              "training.config:add_arguments", "training.train:main"),
    "bench": ("decoding benchmark: AR vs block decoding vs full-sequence diffusion",
              "benchmarks.decoding:add_arguments", "benchmarks.decoding:main"),
    "lossless": ("speculative decoding checked token for token against its verifier, single and batched",
                 "benchmarks.lossless:add_arguments", "benchmarks.lossless:main"),
    "bench-train": ("training benchmark: cheap vs full noisy stream on VLM batches",
                    "benchmarks.training:add_arguments", "benchmarks.training:main"),
    "eval": ("score a checkpoint on MiniVL's test split or on your own questions (--tasks FILE.jsonl)",
             "minivl.evaluate:add_arguments", "minivl.evaluate:main"),
    "demo": ("answer a few MiniVL images with the shipped dVLM and its AR source, side by side",
             "minivl.demo:add_arguments", "minivl.demo:main"),
    "chat": ("talk to a model interactively (/image PATH attaches an image)", "chat:add_arguments", "chat:main"),
    "download": ("fetch a model that is not shipped inside the package (smollm2: SmolLM2-135M-Instruct)",
                 "smollm2.source:add_arguments", "smollm2.source:main"),
    "serve": ("an OpenAI-compatible server with continuous batching, and a web page at /",
              "serving.cli:add_arguments", "serving.cli:main"),
    "bench-serve": ("serving benchmark: 1, 4, 16 concurrent clients against the same requests served one by one",
                    "serving.load:add_arguments", "serving.load:main"),
    "recipe": ("reproduce a study end to end, resumably (minivl, smollm2)", "recipes:add_arguments",
               "recipes:main"),
}


def _function(name: str):
    module, function = name.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), function)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line, with only `command`'s own flags built (and their module imported)."""
    root = ArgumentParser(prog="diffusionvl", description="Block-diffusion (vision-)language models.")
    root.add_argument("--version", action="version", version=f"diffusionvl {__version__}")
    root.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if command == name:
            _function(add)(sub)
            sub.set_defaults(run=run)
    return root


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in COMMANDS), None)
    args = parser(command).parse_args(argv)
    try:
        _function(args.run)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line unless --debug
        if args.debug:
            raise
        user = isinstance(error, USER_ERRORS) or type(error).__module__.startswith("huggingface_hub")
        message = str(error) if user else f"unexpected {type(error).__name__}: {error} (rerun with --debug for the " \
                                          "traceback, and please report it)"
        one_line = " ".join(line.strip() for line in message.splitlines())  # e.g. strict-dataclass errors span lines
        print(f"error: {one_line}", file=sys.stderr)
        raise SystemExit(2 if user else 1) from None


if __name__ == "__main__":
    main()
