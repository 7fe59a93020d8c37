"""`diffusionvl chat`: an interactive conversation with a model, answers streamed block by block.

    diffusionvl chat [--model minivl-dvlm] [--strategy ...] [--threshold ...]

Type a message and press Enter. `/image PATH` attaches an image to your next message, `/reset` starts a new
conversation, `/quit` (or Ctrl-D, or Ctrl-C at the prompt) leaves; Ctrl-C during an answer stops that answer, and
a message the model cannot take (too long, say) is refused for that turn only. Lines are kept in a readline
history (~/.cache/diffusionvl/chat_history) where the platform has readline.
"""

import argparse
import os
import sys
from pathlib import Path

HELP = "commands: /image PATH (attach to the next message), /reset, /quit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_decoding_arguments, add_verifier_argument

    parser.add_argument("--model", default=None, help="a checkpoint folder, or a model name: minivl-dvlm "
                        "(default), minivl-ar, smollm2-dlm, smollm2")
    parser.add_argument("--autoregressive", action="store_true", help="accept an untranslated AR checkpoint")
    add_decoding_arguments(parser)
    add_verifier_argument(parser)


def _history() -> None:
    """Up-arrow history across sessions, where readline exists (not on Windows)."""
    try:
        import atexit
        import readline
    except ImportError:
        return
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffusionvl" / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            readline.read_history_file(path)
    except OSError:
        return
    atexit.register(readline.write_history_file, path)


class Conversation:
    """The turns so far and the images attached to them, in order."""

    def __init__(self, processor):
        self.processor, self.messages, self.images, self.pending = processor, [], [], []

    def attach(self, path: str) -> None:
        from .modeling.images import load_image

        self.pending.append(load_image(path))  # a bad file fails here, naming it, before anything is sent

    def inputs(self, text: str) -> dict:
        from .inference import conversation_inputs

        parts = [{"type": "image"}] * len(self.pending) + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": parts})
        self.images, self.pending = self.images + self.pending, []
        return conversation_inputs(self.processor, self.messages, self.images)

    def reply(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def retract(self) -> None:
        """Forget the last user turn (it got no answer); its images are attached to the next message again."""
        turn = self.messages.pop()
        attached = sum(part["type"] == "image" for part in turn["content"])
        self.pending = self.images[len(self.images) - attached :] + self.pending
        self.images = self.images[: len(self.images) - attached]


def check_room(model, processor, config) -> None:
    """Refuse --max-new-tokens at start when even a one-word message plus the answer overruns the model's
    positions, rather than at the first message."""
    from .decoding.prompts import check_positions
    from .errors import DiffusionVLError
    from .inference import conversation_inputs

    if getattr(model, "block_size", None) is None:  # an AR model: transformers' generate has its own limit
        return
    shortest = conversation_inputs(processor, [{"role": "user", "content": "hi"}])["input_ids"].shape[1]
    try:
        check_positions(model, [shortest], config)
    except DiffusionVLError as error:
        raise DiffusionVLError(f"--max-new-tokens {config.max_new_tokens} leaves no room for a message: {error}")


def turn(model, processor, conversation: Conversation, line: str, config, verifier=None) -> None:
    """Answer one message, streamed. A bad message (too long, say) or Ctrl-C ends this turn only. `verifier`:
    the model that checks speculative drafts (--verifier)."""
    from transformers import TextStreamer

    from .inference import answer

    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        inputs = conversation.inputs(line)
        print("model> ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = answer(model, processor, inputs, config, streamer, verifier=verifier)
    except (ValueError, OSError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        conversation.retract()
        return
    except KeyboardInterrupt:
        print("\n(answer stopped; Ctrl-C again or Ctrl-D at the prompt leaves)", file=sys.stderr)
        conversation.retract()
        return
    conversation.reply(out.texts[0])
    print(f"[{out.tokens} tokens, NFE {out.nfe}, {out.tokens_per_forward:.2f} tokens/forward, "
          f"{out.seconds:.2f} s]", file=sys.stderr)


def main(args: argparse.Namespace) -> None:
    from .checkpoints.folders import DEFAULT_MODEL
    from .cli import decoding_config, open_verifier
    from .errors import DiffusionVLError
    from .inference import open_model, open_processor

    config = decoding_config(args)
    path = args.model or DEFAULT_MODEL
    processor = open_processor(path)
    model = open_model(path, autoregressive=args.autoregressive)
    verifier = open_verifier(args)
    tokenizer = getattr(processor, "tokenizer", processor)
    if processor is tokenizer and getattr(tokenizer, "chat_template", None) is None:
        raise DiffusionVLError(f"{path} has no chat template; use `diffusionvl generate --raw` instead.")
    check_room(model, processor, config)
    _history()
    print(f"chatting with {path}; {HELP}", file=sys.stderr)
    conversation = Conversation(processor)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            conversation = Conversation(processor)
            continue
        if line.startswith("/image"):
            try:
                conversation.attach(line.removeprefix("/image").strip())
                print(f"(image attached: {len(conversation.pending)} for the next message)", file=sys.stderr)
            except (ValueError, OSError) as error:
                print(f"error: {error}", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
            continue
        turn(model, processor, conversation, line, config, verifier)
