"""The loading, command-line, wrapping, conversion and save/load rows of the bad-inputs probes
(/work/shared/probes/bad-inputs.md), one case each.

A case is (row, description, call, expected). `call(p)` gets a `Probe`: the module's tiny checkpoints, a fresh
folder and the command line. expected is (error type, message regex), a regex that what the call returns (the
command's stderr, for `p.cli`) must match, or a predicate on the result. Command-line rows run in-process here;
tests/test_probes_cli.py runs them as subprocesses.
"""

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
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertForMaskedLM, GPT2Config

from diffusionvl import CheckpointLayoutError, DiffusionVL, DiffusionVLError, UnsupportedModelError, cli
from diffusionvl.lora import add_lora

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


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> SimpleNamespace:
    return build_checkpoints(tmp_path_factory.mktemp("checkpoints"), tmp_path_factory.getbasetemp() / "probe-images")


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


# --- rows 1-19, 27-31: generate from the command line; row 72: the processor --------------------------------------

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


NOT_DIFFUSIONVL = r"holds a '{}' checkpoint, not a DiffusionVL one\. .*`diffusionvl convert "
CASES = [
    (1, "model folder missing", lambda p: gen_text(p, p.tmp / "nowhere"), r"model folder not found: .*nowhere; pass"),
    (2, "corrupt config.json", lambda p: gen_text(p, p.variant(
        "text", files=lambda d: (d / "config.json").write_text('{"model_type": "diffusionvl", "block_size": 4,'))),
     r"config\.json is not valid JSON .*restore it"),
    (3, "an AR qwen2 folder", lambda p: gen_text(p, p.fx.ar_text), NOT_DIFFUSIONVL.format("qwen2")),
    (4, "model_type bert", lambda p: gen_text(p, p.variant("text", config=lambda c: c.update(model_type="bert"))),
     NOT_DIFFUSIONVL.format("bert")),
    (4, "model_type frobnicator", lambda p: gen_text(p, p.variant(
        "text", config=lambda c: c.update(model_type="frobnicator"))), NOT_DIFFUSIONVL.format("frobnicator")),
    (5, "unknown base_config.model_type", lambda p: gen_text(p, p.variant(
        "text", config=edit_base(model_type="frobnicator"))),
     r"^error: \S+config\.json: base_config\.model_type 'frobnicator' is not an architecture .{,150}$"),  # not 10 kB
    (6, "base_config deleted: refused before any model is built", lambda p: gen_text(p, p.variant(
        "text", config=drop("base_config"))), r"config\.json has no base_config .*Save the model again"),
    (6, "base_config deleted, from Python", lambda p: load(p.variant("text", config=drop("base_config"))),
     (LAYOUT, "has no base_config")),
    (7, "model.safetensors deleted", lambda p: gen_text(p, p.variant("text", files=delete("model.safetensors"))),
     r"holds no weights \(model\.safetensors.*copy them"),
    (8, "model.safetensors cut to 20 kB", lambda p: gen_text(p, p.variant(
        "text", files=truncate("model.safetensors", 20_000))), r"model\.safetensors is truncated: 20000 bytes"),
    (9, "no tokenizer files", lambda p: gen_text(p, p.variant("text", files=delete(
        "tokenizer.json", "tokenizer_config.json"))), r"no tokenizer in .*text: save it beside the model"),
    (10, "--image missing", lambda p: gen_image(p, "nope.png"), r"image file not found: .*nope\.png; check the path"),
    (11, "--image zero bytes", lambda p: gen_image(p, "zero.png"), r"image file .*zero\.png is empty \(0 bytes\)"),
    (11, "--image a text file", lambda p: gen_image(p, "text.png"), r"image .*text\.png cannot be decoded"),
    (11, "--image a truncated PNG", lambda p: gen_image(p, "truncated.png"),
     r"image .*truncated\.png cannot be decoded"),
    (11, "--image a directory", lambda p: p.cli("generate", p.fx.vl, *GEN, "--image", p.tmp),
     r"image file is a directory, not an image file: "),
    (12, "--image grayscale, RGBA, palette and 16-bit PNGs", lambda p: gen_image(
        p, "L.png", "RGBA.png", "P.png", "I16.png", fails=False), GENERATED),
    (13, "--image 1x1 and 3000x20", lambda p: gen_image(p, "1x1.png", "3000x20.png", fails=False), GENERATED),
    (14, "--image 10000x10000", lambda p: gen_image(p, "10000.png", fails=False), GENERATED),
    (15, "--image 5000x10", lambda p: gen_image(p, "5000x10.png"),
     r"image .*5000x10\.png is 5000x10, an aspect ratio of 500; the limit is 200\. Crop or pad it"),
    (16, "--image 20000x20000", lambda p: gen_image(p, "20000.png"), r"image .*20000\.png is too large: .*downscale"),
    (17, "--image with a corrupt chunk", lambda p: gen_image(p, "chunk.png"),
     r"image .*chunk\.png cannot be decoded \(SyntaxError: broken PNG file"),
    (18, "--image with a truncated IHDR", lambda p: gen_image(p, "ihdr.png"),
     r"image .*ihdr\.png cannot be decoded \(ValueError: Truncated IHDR chunk\)"),
    (19, "--image to a text checkpoint", lambda p: gen_text(p, p.fx.text, "--image", p.image("rgb.png")),
     r"--image needs a vision-language checkpoint"),
    (27, "<image> in the prompt with one --image", lambda p: gen_image(
        p, "rgb.png", prompt="<image> w1 w2", fails=False), GENERATED),
    (27, "<image> in a --raw prompt with one --image", lambda p: p.run(
        "generate", p.fx.vl, *GEN[2:], "--prompt", "w1 <image> w2", "--raw", "--image", p.image("rgb.png")), GENERATED),
    (28, "<image> without --image", lambda p: gen_image(p, prompt="<image> w1"),
     r"the prompt holds 1 <image> placeholder\(s\) but 0 --image file\(s\)"),
    (29, "a 600-word prompt on a 512-position model", lambda p: p.cli(
        "generate", p.fx.text, "--prompt", " ".join(f"w{i % 60}" for i in range(600))),
     r"prompt 0 has 600 tokens but the model has 512 positions .*shorten the prompt"),
    (30, "two --image", lambda p: gen_image(p, "rgb.png", "L.png", fails=False), GENERATED),
    (31, "model path is a file", lambda p: gen_text(p, p.image("rgb.png")), r"rgb\.png holds no config\.json"),
    (72, "processor: more <image> placeholders than images", lambda p: tiny_vl_processor()(
        "<image> <image> w1", [p.image("rgb.png")]), (BAD, r"the text has 2 <image> placeholders but 1 images")),
    (72, "processor: fewer <image> placeholders than images", lambda p: tiny_vl_processor()(
        "<image> w1", [p.image("rgb.png")] * 2), (BAD, r"the text has 1 <image> placeholders but 2 images")),
]

# --- rows 32-39: the released DiffusionVL-Qwen2.5VL layout --------------------------------------------------------

def released(p, config=None, files=None):
    return load(p.variant("released", config, files))


def null_eos(config: dict) -> None:
    config.update(eos_token_id=None)
    config["text_config"].update(eos_token_id=None)


add_tensor = weights(lambda tensors: {**tensors, "model.extra_thing.weight": torch.zeros(2)})


CASES += [
    (32, "video_token_id null loads", lambda p: released(p, lambda c: c.update(video_token_id=None)),
     lambda model: isinstance(model, DiffusionVL)),
    (32, "video_token_id null generates from the command line", lambda p: p.run(
        "generate", p.variant("released", lambda c: c.update(video_token_id=None)), *GEN,
        "--image", p.image("rgb.png")), GENERATED),
    (33, "image_token_id null", lambda p: released(p, lambda c: c.update(image_token_id=None)),
     (LAYOUT, r"config\.json has image_token_id null.*set it to the id of the image placeholder token")),
    (34, "an extra tensor", lambda p: released(p, files=add_tensor),
     (LAYOUT, r"unexpected tensor 'model\.extra_thing\.weight' .*remove it")),
    (34, "an extra tensor, from the command line", lambda p: gen_text(p, p.variant("released", files=add_tensor)),
     r"unexpected tensor 'model\.extra_thing\.weight'"),
    (35, "a tensor missing", lambda p: released(p, files=weights(lambda t: {
        k: v for k, v in t.items() if k != "model.layers.1.mlp.down_proj.weight"})),
     (LAYOUT, r"missing \['model\.model\.language_model\.layers\.1\.mlp\.down_proj\.weight'\]")),
    (36, "safetensors cut in half", lambda p: released(p, files=truncate("model.safetensors")),
     (LAYOUT, r"model\.safetensors is truncated")),
    (37, "the index names a missing shard", lambda p: load(p.variant(
        "released_shards", files=delete("model-00002-of-00002.safetensors"))),
     (LAYOUT, r"model-00002-of-00002\.safetensors is missing")),
    (38, "no vision_config", lambda p: released(p, drop("vision_config")), (LAYOUT, "has no vision_config")),
    (39, "eos null", lambda p: released(p, null_eos), (LAYOUT, r"eos_token_id null: set it to the id of")),
]


# --- rows 62-71: from_autoregressive ------------------------------------------------------------------------------

def wrap(model=None, tokenizer=None, **options):
    return DiffusionVL.from_autoregressive(tiny_causal_lm() if model is None else model, tokenizer, **options)


def no_eos():
    return tiny_causal_lm("llama", eos_token_id=None, bos_token_id=None, pad_token_id=None)


def gpt2():
    """GPT-2's config keeps its default eos 50256, outside this 64-row vocabulary."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def tokens(**ids):
    return lambda model: all(getattr(model.special_tokens, name) == value for name, value in ids.items())


OUTSIDE = r"mask token id {} is outside the vocabulary \(0\.\.95\)"
CASES += [
    (62, "no mask id and no tokenizer", lambda p: wrap(), (BAD, r"no mask token: pass the tokenizer .*mask_token_id=")),
    (63, "no EOS anywhere", lambda p: wrap(no_eos(), mask_token_id=MASK_ID),
     (BAD, r"no end-of-turn token found.*pass eot_token_id=")),
    (64, "no EOS, eot_token_id=2 as the error says", lambda p: wrap(no_eos(), mask_token_id=MASK_ID, eot_token_id=2),
     tokens(eot=2, pad=2)),
    (65, "eot_token_id and pad_token_id override the config", lambda p: wrap(
        tiny_causal_lm(eos_token_id=5), mask_token_id=MASK_ID, eot_token_id=7, pad_token_id=9), tokens(eot=7, pad=9)),
    (66, "misspelt option blocksize", lambda p: wrap(mask_token_id=MASK_ID, blocksize=4),
     (TypeError, r"unknown option\(s\) \['blocksize'\]; valid ones are .*'block_size'")),
    (67, "mask id outside the vocabulary", lambda p: wrap(mask_token_id=96), (BAD, OUTSIDE.format(96))),
    (67, "mask id negative", lambda p: wrap(mask_token_id=-1), (BAD, OUTSIDE.format(-1))),
    (67, "mask id = EOS", lambda p: wrap(mask_token_id=2), (BAD, r"the mask token \(2\) must differ")),
    (67, "mask id = pad", lambda p: wrap(mask_token_id=0), (BAD, r"the mask token \(0\) must differ")),
    (68, "GPT-2 eos 50256 outside a 64-row vocabulary", lambda p: wrap(gpt2(), mask_token_id=63),
     (BAD, r"eot token id 50256 is outside the vocabulary \(0\.\.63\); pass eot_token_id=")),
    (68, "GPT-2 with eot_token_id= as the error says", lambda p: wrap(gpt2(), mask_token_id=63, eot_token_id=2),
     tokens(eot=2, mask=63)),
    (69, "noise_eps_min 0", lambda p: wrap(mask_token_id=MASK_ID, noise_eps_min=0.0),
     (ValueError, r"noise levels need 0 < noise_eps_min")),
    (69, "noisy_stream compact", lambda p: wrap(mask_token_id=MASK_ID, noisy_stream="compact"),
     (BAD, r"noisy_stream.*compact")),
    (70, "wrap a DiffusionVL again", lambda p: wrap(wrap(mask_token_id=MASK_ID), mask_token_id=MASK_ID),
     (UnsupportedModelError, r"already a DiffusionVL; it needs no second translation")),
    (71, "wrap a torch.nn.Linear", lambda p: wrap(torch.nn.Linear(4, 4), mask_token_id=MASK_ID),
     (UnsupportedModelError, r"takes a transformers causal LM .*got a Linear")),
]


# --- rows 78-87: convert ------------------------------------------------------------------------------------------

def fixed_then_converted(p) -> str:
    """Row 86: refused before anything is written (Probe.cli checks); once the file is back, the command works."""
    src = p.variant("ar_vl", files=delete("preprocessor_config.json"))
    err = p.cli("convert", src, p.tmp / "dst", "--block-size", "4")
    assert re.search(r"without an image processor \(preprocessor_config\.json\)", err), err
    shutil.copy(p.fx.ar_vl / "preprocessor_config.json", src)
    return p.run("convert", src, p.tmp / "dst", "--block-size", "4")


def bfloat16_then_generate(p) -> str:
    """Row 87: convert with --dtype bfloat16, then generate with an image."""
    p.run("convert", p.fx.ar_vl, p.tmp / "dst", "--block-size", "4", "--dtype", "bfloat16")
    return p.run("generate", p.tmp / "dst", *GEN, "--image", p.image("rgb.png"))


CASES += [
    (78, "source missing", lambda p: p.cli("convert", p.tmp / "nowhere", p.tmp / "dst"), r"nowhere holds no config"),
    (79, "source is BERT", lambda p: p.cli("convert", p.fx.bert, p.tmp / "dst"),
     r"BertLMHeadModel cannot be wrapped for block diffusion"),
    (80, "dst not empty", lambda p: p.cli("convert", p.fx.ar_text, p.variant("text")),
     r"text is not empty; choose a new directory"),
    (81, "dst an empty existing folder", lambda p: (p.tmp / "dst").mkdir() or p.run(
        "convert", p.fx.ar_text, p.tmp / "dst", "--block-size", "4"), CONVERTED),
    (82, "dst an existing file, kept", lambda p: p.cli("convert", p.fx.ar_text, a_file(p.tmp / "dst")),
     r"dst is a file; choose a new directory"),
    (83, "dst under a file", lambda p: p.cli("convert", p.fx.ar_text, p.image("rgb.png") / "dst"),
     r"cannot create .*rgb\.png/dst: .*rgb\.png is a file, not a directory"),
    (84, "dst not writable: refused before the source's weights are read (they are missing here)", lambda p: p.cli(
        "convert", p.variant("ar_text", files=delete("model.safetensors")), "/proc/diffusionvl_out"),
     r"cannot write /proc/diffusionvl_out .*choose another destination"),
    (85, "--block-size 0 writes nothing", lambda p: p.cli("convert", p.fx.ar_text, p.tmp / "dst", "--block-size", "0"),
     "block_size must be a positive integer"),
    (85, "--mask-token-id 999 writes nothing", lambda p: p.cli(
        "convert", p.fx.ar_text, p.tmp / "dst", "--mask-token-id", "999"), r"mask token id 999 is outside the vocab"),
    (86, "Qwen2.5-VL source without preprocessor_config.json, then fixed", fixed_then_converted, CONVERTED),
    (87, "--dtype bfloat16, then generate", bfloat16_then_generate, GENERATED),
]


# --- rows 120-131: save and load ----------------------------------------------------------------------------------

def round_trip(p, tokenizer_too=True, lora=False) -> bool:
    """Rows 120, 121, 131: saved and reloaded (with the Auto classes), the same model; `<|mask|>` is kept in the
    saved tokenizer, and without it the tokenizer the model was made with still serves."""
    tokenizer = tiny_tokenizer(words=60)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4)
    if lora:
        add_lora(model, rank=2)
    model.save_pretrained(p.tmp)
    if tokenizer_too:
        tokenizer.save_pretrained(p.tmp)
        tokenizer = AutoTokenizer.from_pretrained(p.tmp)
    again = AutoModelForCausalLM.from_pretrained(p.tmp)
    ids = tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    return same_model(model, again) and again.config.lora == model.config.lora and \
        tokenizer.convert_ids_to_tokens(again.special_tokens.mask) == "<|mask|>" and \
        torch.equal(again.generate(ids, max_new_tokens=8), model.generate(ids, max_new_tokens=8))


def loads_as_saved(p, path: Path) -> bool:
    """The edited copy loads to the very model of the text fixture."""
    return same_model(load(p.fx.text), load(path))


def to_bin(path: Path) -> None:
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


def renamed(old: str, new: str):
    return weights(lambda t: {(new + k[len(old):] if k.startswith(old) else k): v for k, v in t.items()})


NEW_FIELDS = ("noisy_stream", "position_mode", "lora", "noise_eps_min", "noise_eps_max", "antithetic_noise",
              "noise_strata", "loss_average", "image_token_id")
DEFAULTS = dict(noisy_stream="cheap", position_mode="1d", lora=None, noise_eps_min=1e-3,
                noise_strata="supervised_shuffled")
MISMATCH = r"text(: the weights do not load| does not match the DiffusionVL layout)"
CASES += [
    (120, "save + tokenizer, reload with the Auto classes", round_trip, bool),
    (121, "reload with the original tokenizer", lambda p: round_trip(p, tokenizer_too=False), bool),
    (122, "an older config without the newer fields", lambda p: load(p.variant("text", drop(*NEW_FIELDS))),
     lambda model: all(getattr(model.config, name) == value for name, value in DEFAULTS.items())),
    (123, "unknown future fields", lambda p: load(p.variant("text", lambda c: c.update(future_field=1))),
     lambda model: isinstance(model, DiffusionVL)),
    (124, "noisy_stream compact", lambda p: load(p.variant("text", lambda c: c.update(noisy_stream="compact"))),
     (LAYOUT, r"config\.json: Validation error for field 'noisy_stream'.* got compact\. Fix the field")),
    (124, "block_size '8'", lambda p: load(p.variant("text", lambda c: c.update(block_size="8"))),
     (LAYOUT, r"config\.json: .*'block_size' expected int, got str .*Fix the field")),
    (125, "no mask_token_id", lambda p: load(p.variant("text", drop("mask_token_id"))),
     (LAYOUT, r"config\.json names no mask_token_id .*set the field")),
    (126, "weights without the wrapper's model. prefix", lambda p: loads_as_saved(p, p.variant(
        "text", files=renamed("model.", ""))), bool),
    (127, "renamed weights", lambda p: load(p.variant("text", files=renamed("model.model.", "model.transformer."))),
     (LAYOUT, r"does not match the DiffusionVL layout: .*model\.transformer\.")),
    (128, "a weight of the wrong shape", lambda p: load(p.variant("text", files=weights(
        lambda t: {**t, "model.model.norm.weight": torch.ones(7)}))), (LAYOUT, MISMATCH)),
    (128, "config vocab != weights", lambda p: load(p.variant("text", edit_base(vocab_size=70))), (LAYOUT, MISMATCH)),
    (128, "a weight of the wrong shape, from the command line", lambda p: gen_text(
        p, p.variant("text", files=weights(lambda t: {**t, "model.model.norm.weight": torch.ones(7)}))), MISMATCH),
    (129, "fp16 weights under an fp32 config", lambda p: load(p.variant("text", files=weights(
        lambda t: {k: v.half() for k, v in t.items()}))), lambda model: isinstance(model, DiffusionVL)),
    (129, "pytorch_model.bin instead of safetensors", lambda p: loads_as_saved(p, p.variant("text", files=to_bin)),
     bool),
    (130, "relabelled diffusionvl_qwenvl", lambda p: load(p.variant(
        "text", lambda c: c.update(model_type="diffusionvl_qwenvl"))), (LAYOUT, "has no vision_config")),
    (130, "relabelled diffusionvl_qwen", lambda p: load(p.variant(
        "text", lambda c: c.update(model_type="diffusionvl_qwen"))), (LAYOUT, "has no vision_config")),
    (131, "LoRA save/load round trip", lambda p: round_trip(p, lora=True), bool),
]
ROWS = sorted({row for row, *_ in CASES})


@pytest.mark.parametrize("row,description,call,expected", CASES,
                         ids=[f"row-{row:02d} {description}" for row, description, *_ in CASES])
def test_probe_row(row, description, call, expected, fixtures, tmp_path, capsys):
    probe = Probe(fixtures, tmp_path, capsys)
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
