"""Shared pieces of the probe tables (tests/test_probes_*.py): the tiny checkpoints and images every row uses,
a `Probe` per case (a fresh folder, the command line), and small edits of checkpoint folders."""

import json
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import MASK_ID, cli_error, tiny_causal_lm, tiny_qwen_vl, tiny_tokenizer, tiny_vl_processor, write_image
from PIL import Image
from released import write_released
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

from diffusionvl import CheckpointLayoutError, DiffusionVL, DiffusionVLError, cli

LAYOUT, BAD = CheckpointLayoutError, DiffusionVLError
GEN = ("--prompt", "w1 w2", "--max-new-tokens", "4", "--steps", "2")


def write_probe_images(folder: Path) -> Path:
    """The images of rows 10-18, written once per session (the two large ones take a few seconds)."""
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    data = (write_image(folder / "rgb.png")).read_bytes()
    pixels = np.asarray(Image.open(folder / "rgb.png"))
    for mode in ("L", "RGBA", "P"):
        Image.fromarray(pixels).convert(mode).save(folder / f"{mode}.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "I16.png")
    for width, height in ((1, 1), (3000, 20), (5000, 10)):
        Image.new("RGB", (width, height), (200, 10, 10)).save(folder / f"{width}x{height}.png")
    for side in (10000, 20000):  # one colour, so a few hundred kB on disk
        Image.new("L", (side, side), 200).save(folder / f"{side}.png")
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "chunk.png").write_bytes(broken_chunk(data))
    (folder / "ihdr.png").write_bytes(data[:8] + struct.pack(">I", 12) + data[12:])  # IHDR length 12 of 13
    (folder / "done").touch()
    return folder


def broken_chunk(png: bytes) -> bytes:
    """The PNG with its pixel data split over two chunks, the second one's type garbled: Pillow opens it and
    raises SyntaxError only while decoding (what random byte flips found in the probe)."""
    (length,) = struct.unpack(">I", png[33:37])
    idat, rest = png[41 : 41 + length], png[45 + length :]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return png[:33] + chunk(b"IDAT", idat[: length // 2]) + chunk(b"\xaf\xfa)\xf4", idat[length // 2 :]) + rest


def build_checkpoints(root: Path, images: Path) -> SimpleNamespace:
    """DiffusionVL checkpoints (text with its tokenizer, Qwen2.5-VL with its processor, the released layout in one
    file and in two shards, with a processor), transformers sources for convert (Qwen2, Qwen2.5-VL, BERT, each with
    its tokenizer) and the probe images."""
    names = ("text", "vl", "released", "released_shards", "ar_text", "ar_vl", "bert")
    fx = SimpleNamespace(**{name: root / name for name in names}, images=write_probe_images(images))
    tokenizer = tiny_tokenizer(words=60)
    DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4).save_pretrained(fx.text)
    tokenizer.save_pretrained(fx.text)
    processor = tiny_vl_processor()
    vl = DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4)
    vl.save_pretrained(fx.vl)
    processor.save_pretrained(fx.vl)
    for path, shards in ((fx.released, 1), (fx.released_shards, 2)):
        write_released(vl, path, shards)
        processor.save_pretrained(path)
    tiny_causal_lm().save_pretrained(fx.ar_text)
    tiny_tokenizer(words=60).save_pretrained(fx.ar_text)
    tiny_qwen_vl().save_pretrained(fx.ar_vl)
    processor.tokenizer.save_pretrained(fx.ar_vl)
    processor.image_processor.save_pretrained(fx.ar_vl)
    BertForMaskedLM(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(fx.bert)
    tiny_tokenizer(words=60).save_pretrained(fx.bert)
    return fx


@dataclass
class Probe:
    fx: SimpleNamespace
    tmp: Path
    capsys: pytest.CaptureFixture

    def variant(self, name: str, config=None, files=None) -> Path:
        """A copy of fixture `name` in the case's folder, its config.json edited by `config(dict)` and its
        files by `files(folder)`."""
        path = shutil.copytree(getattr(self.fx, name), self.tmp / name)
        if config is not None:
            data = json.loads((path / "config.json").read_text())
            config(data)
            (path / "config.json").write_text(json.dumps(data))
        if files is not None:
            files(path)
        return path

    def image(self, name: str) -> Path:
        return self.fx.images / name

    def cli(self, *argv) -> str:
        """A command that must fail as a user error, writing nothing (no file, no half checkpoint); its stderr."""
        before = tree(self.tmp)
        err = cli_error(self.capsys, *argv)
        assert tree(self.tmp) == before, "a refused command must leave its files and destination as they were"
        return err

    def run(self, *argv) -> str:
        """A command that must succeed; what it printed (generate ends with a `[... tokens/forward]` line)."""
        self.capsys.readouterr()
        cli.main([str(arg) for arg in argv])
        printed = self.capsys.readouterr()
        return printed.out + printed.err


def tree(folder: Path) -> dict:
    """Every path under `folder`, with the bytes of each file."""
    return {path: path.read_bytes() if path.is_file() else None for path in folder.rglob("*")}


def a_file(path: Path) -> Path:
    path.write_text("keep me")
    return path


def weights(edit):
    """A files edit: model.safetensors rewritten as `edit(tensors)` returns it."""
    return lambda path: save_file(edit(load_file(path / "model.safetensors")), path / "model.safetensors",
                                  metadata={"format": "pt"})


def same_model(first, second) -> bool:
    """Identical weights and identical answers."""
    ours, theirs, ids = first.state_dict(), second.state_dict(), torch.tensor([[5, 6, 7, 8, 9]])
    return sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours) and \
        torch.equal(first.generate(ids, max_new_tokens=8, steps=2), second.generate(ids, max_new_tokens=8, steps=2))


load = DiffusionVL.from_pretrained
GENERATED, CONVERTED = r"tokens/forward", r"wrote .*: block size 4, mask \d+, end of turn \d+"


def gen_text(p, path, *extra):
    return p.cli("generate", path, *GEN, *extra)


def gen_image(p, *names, prompt="w1 w2", fails=True):
    images = [arg for name in names for arg in ("--image", p.image(name))]
    argv = ("generate", p.fx.vl, "--prompt", prompt, "--max-new-tokens", "4", "--steps", "2", *images)
    return p.cli(*argv) if fails else p.run(*argv)


def edit_base(**fields):
    return lambda config: config["base_config"].update(fields)


def drop(*names):
    return lambda config: [config.pop(name, None) for name in names]


def delete(*names):
    return lambda path: [(path / name).unlink() for name in names]


def truncate(name: str, size: int | None = None):
    """A files edit: `name` cut to `size` bytes, or to half."""
    def cut(path: Path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: size or len(data) // 2])

    return cut


def check_case(row: int, description: str, call, expected, probe: Probe) -> None:
    """Run one case: `expected` is (error type, message regex), a regex the result must match, or a predicate."""
    if isinstance(expected, tuple):
        error, pattern = expected
        with pytest.raises(error, match=pattern):
            call(probe)
        return
    result = call(probe)
    if isinstance(expected, str):
        assert re.search(expected, result), f"row {row}: {description}: {result}"
    else:
        assert expected(result), f"row {row}: {description}: {result!r}"[:3000]
