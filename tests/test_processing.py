"""Chat formatting, image placeholders, label masking and image loading, end to end with a tiny Qwen2.5-VL."""

import pytest
import torch
from conftest import IMAGE_ID, MASK_ID, VISION_START, cli_error, tiny_qwen_vl, tiny_vl_processor, write_image
from transformers import AutoProcessor

from diffusionvl import DiffusionVL
from diffusionvl.modeling.processing import DiffusionVLProcessor

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]},
    {"role": "assistant", "content": "w10 w11 w12"},
    {"role": "user", "content": "w3"},
    {"role": "assistant", "content": "w13"},
]


def test_placeholders_expand_to_one_token_per_merged_patch(tmp_path):
    processor = tiny_vl_processor()
    out = processor("<image> w1", [write_image(tmp_path / "a.png")])  # 56 x 84 -> 4 x 6 patches -> 6 tokens
    assert out["input_ids"][0].tolist() == [IMAGE_ID] * 6 + [processor.tokenizer.convert_tokens_to_ids("w1")]
    assert out["pixel_values"].shape[0] == 24 and out["image_grid_thw"].tolist() == [[1, 4, 6]]
    wrapped = tiny_vl_processor(wrap_images=True)("<image>", [write_image(tmp_path / "b.png")])
    assert wrapped["input_ids"][0, 0] == VISION_START and wrapped["input_ids"].shape[1] == 8


def test_chat_template_puts_the_qwen_system_line_and_image_first():
    processor = tiny_vl_processor()
    text = processor.chat_text(CONVERSATION[:1], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    assert "<|im_start|>user\n<image>w1 w2<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_only_assistant_content_and_its_end_of_turn_are_supervised(tmp_path):
    processor = tiny_vl_processor()
    example = processor.training_example(CONVERSATION, [write_image(tmp_path / "a.png")])
    tokens = processor.tokenizer.convert_ids_to_tokens(example["input_ids"][0])
    supervised = [t for t, label in zip(tokens, example["labels"][0].tolist()) if label != -100]
    assert supervised == ["w10", "w11", "w12", "<|im_end|>", "w13", "<|im_end|>"]


def test_processor_output_drives_training_and_generation(tmp_path):
    processor = tiny_vl_processor()
    model = DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4)
    example = processor.training_example(CONVERSATION, [write_image(tmp_path / "a.png")])
    loss = model(**example, generator=torch.Generator().manual_seed(0)).loss
    assert torch.isfinite(loss)
    prompt = processor(processor.chat_text(CONVERSATION[:1], add_generation_prompt=True), [tmp_path / "a.png"])
    out = model.generate(**prompt, max_new_tokens=8, steps=2)
    assert out.shape[0] == 1 and 0 < out.shape[1] <= 8


def test_missing_and_corrupt_images_and_wrong_placeholder_counts_fail_clearly(tmp_path):
    processor = tiny_vl_processor()
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        processor("<image> w1", [tmp_path / "nowhere.png"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.png cannot be decoded"):
        processor("<image> w1", [broken])
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        processor("<image> <image> w1", [write_image(tmp_path / "a.png")])


def test_auto_processor_loads_what_the_project_saves(tmp_path):
    processor = tiny_vl_processor(wrap_images=True)
    model = DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DiffusionVLProcessor)
    assert (loaded.image_token, loaded.vision_start, loaded.vision_end) == ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    image = write_image(tmp_path / "a.png")
    assert torch.equal(loaded("<image> w1", [image])["input_ids"], processor("<image> w1", [image])["input_ids"])


def test_convert_turns_a_qwen_vl_directory_into_a_trainable_diffusionvl(tmp_path, capsys):
    from diffusionvl import cli

    source = tmp_path / "qwen"
    tiny_qwen_vl().save_pretrained(source)
    processor = tiny_vl_processor()
    processor.tokenizer.save_pretrained(source)
    processor.image_processor.save_pretrained(source)
    cli.main(["convert", str(source), str(tmp_path / "dvl"), "--block-size", "4", "--position-mode", "mrope"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dvl")
    loaded = AutoProcessor.from_pretrained(tmp_path / "dvl")
    assert isinstance(model, DiffusionVL) and model.config.position_mode == "mrope" and model.block_size == 4
    assert loaded.tokenizer.convert_ids_to_tokens(model.special_tokens.mask) == "<|mask|>"
    assert loaded.vision_start == "<|vision_start|>"
    image = write_image(tmp_path / "a.png")
    example = loaded.training_example(CONVERSATION, [image])
    assert torch.isfinite(model(**example).loss)
    assert "not empty" in cli_error(capsys, "convert", source, tmp_path / "dvl")


def test_cli_generate_with_an_image_prints_what_the_python_api_returns(tmp_path, capsys):
    from diffusionvl import cli

    processor = tiny_vl_processor()
    model = DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4)
    model.save_pretrained(tmp_path / "dvl")
    processor.save_pretrained(tmp_path / "dvl")
    image = write_image(tmp_path / "a.png")
    cli.main(["generate", str(tmp_path / "dvl"), "--prompt", "w1 w2", "--image", str(image), "--max-new-tokens", "8"])
    printed = capsys.readouterr().out
    content = [{"type": "image"}, {"type": "text", "text": "w1 w2"}]
    inputs = processor(processor.chat_text([{"role": "user", "content": content}], True), [image])
    expected = processor.tokenizer.decode(model.generate(**inputs, max_new_tokens=8)[0], skip_special_tokens=True)
    assert printed.strip() == expected.strip()
    assert "missing.png" in cli_error(capsys, "generate", tmp_path / "dvl", "--prompt", "w1", "--image",
                                      tmp_path / "missing.png")


def test_the_tokenizer_only_processor_is_a_whole_processor(tmp_path):
    """Built through ProcessorMixin's own __init__ (the tokenizer its one sub-processor), so it saves and prints
    like any processor."""
    from conftest import tiny_tokenizer

    from diffusionvl.training.data import TokenizerOnlyProcessor

    processor = TokenizerOnlyProcessor(tiny_tokenizer())
    assert TokenizerOnlyProcessor.get_attributes() == ["tokenizer"] and processor.image_processor is None
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and "TokenizerOnlyProcessor" in repr(processor)
