"""The loading and command-line rows of the bad-inputs probes (rows 1-39 and 72): generate on
broken checkpoint folders and images, and the released DiffusionVL-Qwen2.5VL layout.

A case is (row, description, call, expected). `call(p)` gets a `Probe` (tests/probes.py): the module's tiny
checkpoints, a fresh folder and the command line. expected is (error type, message regex), a regex that what the
call returns (the command's stderr, for `p.cli`) must match, or a predicate on the result. Command-line rows run
in-process here; tests/test_probes_cli.py runs them as subprocesses.
"""


import pytest
import torch
from conftest import tiny_vl_processor
from probes import (
    BAD,
    GEN,
    GENERATED,
    LAYOUT,
    Probe,
    check_case,
    delete,
    drop,
    edit_base,
    gen_image,
    gen_text,
    load,
    truncate,
    weights,
)

from diffusionvl import CheckpointLayoutError, DiffusionVL

# --- rows 1-19, 27-31: generate from the command line; row 72: the processor --------------------------------------

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


def same_answer(first, second, image) -> bool:
    """Both models see the same placeholder id and give the same answer to a prompt with one image."""
    processor = tiny_vl_processor()
    inputs = processor("<image> w1 w2", [image])
    answers = [model.generate(**inputs, max_new_tokens=4, steps=2) for model in (first, second)]
    return first.config.image_token_id == second.config.image_token_id and torch.equal(*answers)


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
    (33, "image_token_id null: the tokenizer's <|image_pad|> takes its place, same answer", lambda p: same_answer(
        released(p, lambda c: c.update(image_token_id=None)), load(p.fx.released), p.image("rgb.png")), bool),
    (33, "image_token_id null and no tokenizer to name the image token", lambda p: released(
        p, lambda c: c.update(image_token_id=None), delete("tokenizer.json", "tokenizer_config.json")),
     (LAYOUT, r"config\.json has image_token_id null and the folder's tokenizer has no <\|image_pad\|> token")),
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


ROWS = sorted({row for row, *_ in CASES})


@pytest.mark.parametrize("row,description,call,expected", CASES,
                         ids=[f"row-{row:02d} {description}" for row, description, *_ in CASES])
def test_probe_row(row, description, call, expected, probe_checkpoints, tmp_path, capsys):
    check_case(row, description, call, expected, Probe(probe_checkpoints, tmp_path, capsys))


def test_a_missing_two_part_relative_path_is_a_missing_folder(tmp_path, monkeypatch, capsys):
    """Probes N56 and N57: `w/nowhere` looks like a hub id, but offline nothing is fetched, so it is named as the
    missing folder it is, by the loaders, `generate` and `train`."""
    from conftest import cli_error

    from diffusionvl import load_model, load_processor

    monkeypatch.chdir(tmp_path)
    for loader in (load_model, load_processor):
        with pytest.raises(CheckpointLayoutError, match="model folder not found: w/nowhere"):
            loader("w/nowhere")
    assert "model folder not found: w/nowhere" in cli_error(capsys, "generate", "w/nowhere", "--prompt", "hi")
    data = tmp_path / "data.json"
    data.write_text('[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]')
    message = cli_error(capsys, "train", "--model", "w/nomodel", "--data", data, "--output-dir", tmp_path / "out")
    assert "model folder not found: w/nomodel" in message
