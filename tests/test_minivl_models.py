"""The MiniVL tokenizer, processor and model: real Qwen2.5-VL classes at a small size, special tokens by name."""

import torch
from PIL import Image

from diffusionvl import DiffusionVL, DiffusionVLProcessor
from diffusionvl.minivl.models import MiniVLSize, build_model, build_processor, build_tokenizer

TEXTS = ["a red circle at the top left, a blue square in the center.", "Describe the image.", "Read the number.",
         "How many red shapes are there?", "3071", "7"] * 10
SMALL = MiniVLSize(vision_depth=2, vision_hidden=32, vision_heads=2, hidden=64, layers=2, heads=4, intermediate=128)


def conversation(answer="a red circle at the top left."):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
            {"role": "assistant", "content": answer}]


def test_tokenizer_round_trips_any_text_spells_digits_and_is_deterministic():
    tokenizer = build_tokenizer(TEXTS)
    for text in TEXTS + ["words it never saw: zebra, 42!\n", "  two  spaces"]:
        assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.tokenize("3071") == ["3", "0", "7", "1"]
    assert tokenizer("a red circle at the top left.").input_ids.__len__() <= 8  # MiniVL words are whole tokens
    assert build_tokenizer(TEXTS).get_vocab() == tokenizer.get_vocab()
    for token in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|mask|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id


def test_processor_gives_16_image_tokens_and_supervises_only_the_answer(tmp_path):
    tokenizer = build_tokenizer(TEXTS)
    processor = build_processor(tokenizer)
    example = processor.training_example(conversation(), [Image.new("RGB", (112, 112), "white")])
    ids, labels = example["input_ids"][0], example["labels"][0]
    assert int((ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    assert tokenizer.decode(ids[labels != -100]) == "a red circle at the top left.<|im_end|>"
    processor.save_pretrained(tmp_path)
    again = DiffusionVLProcessor.from_pretrained(tmp_path)
    assert torch.equal(again.training_example(conversation(), [Image.new("RGB", (112, 112))])["input_ids"], example["input_ids"])


def test_model_trains_and_translates_with_its_own_mask_token():
    tokenizer = build_tokenizer(TEXTS)
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, SMALL)
    example = dict(processor.training_example(conversation(), [Image.new("RGB", (112, 112), "red")]))
    ar_loss = model(**example).loss
    assert torch.isfinite(ar_loss)
    dvlm = DiffusionVL.from_autoregressive(model, processor, block_size=4)
    assert dvlm.special_tokens.mask == tokenizer.convert_tokens_to_ids("<|mask|>")
    assert dvlm.special_tokens.eot == tokenizer.convert_tokens_to_ids("<|im_end|>")
    dvlm(**example).loss.backward()
    prompt = processor(processor.chat_text(conversation()[:1], add_generation_prompt=True), [Image.new("RGB", (112, 112))])
    assert dvlm.generate(**prompt, max_new_tokens=8).shape[0] == 1


def test_a_tokenizer_trained_on_minivl_text_spells_every_word_as_one_token():
    from diffusionvl.minivl.generator import TASKS, generate_mix, vocabulary

    samples = generate_mix(TASKS, "train", seed=0, count_per_task=50)
    tokenizer = build_tokenizer(text for s in samples for text in (s.question, s.answer))
    for word in vocabulary():  # one token each: with its leading space mid-sentence, or without at the start
        assert min(len(tokenizer.tokenize(word)), len(tokenizer.tokenize(" " + word))) == 1, word
    answer = next(s.answer for s in samples if s.task == "caption")
    assert tokenizer.decode(tokenizer(answer).input_ids) == answer
