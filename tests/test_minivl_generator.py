"""MiniVL generator: determinism, disjoint splits, grammar and vocabulary, LLaVA export."""

import re
from collections import Counter

import pytest
from PIL import Image

from diffusionvl.evaluation.metrics import words
from diffusionvl.minivl.generator import (
    COLOUR_NAMES,
    PLACES,
    PLURALS,
    ROWS,
    SHAPES,
    TASKS,
    generate,
    generate_mix,
    join_words,
    split_of,
    vocabulary,
    write_llava,
)
from diffusionvl.training.data import read_llava


def _fingerprint(samples):
    return [(s.question, s.answer, s.image.size, s.image.tobytes()) for s in samples]


@pytest.fixture(scope="module")
def drawn():
    """500 train samples of every task (seed 7)."""
    return {task: generate(task, "train", 7, 500) for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_splits_share_no_content(task):
    train = generate(task, "train", 0, 2000)
    test = generate(task, "test", 1, 500)
    train_keys, test_keys = {s.key for s in train}, {s.key for s in test}
    assert not train_keys & test_keys
    assert all(split_of(k) == "train" for k in train_keys) and all(split_of(k) == "test" for k in test_keys)
    assert len(test_keys) > 300  # not a handful of repeated items (1-shape captions have only 324 contents)
    if task == "digits":
        scans = lambda samples: {int(i) for s in samples for i in s.key.split("scans=")[1].split(",")}
        assert all(i % 5 != 0 for i in scans(train)) and all(i % 5 == 0 for i in scans(test))


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_samples_other_seed_other_samples(task):
    first = generate(task, "train", 3, 40)
    assert _fingerprint(first) == _fingerprint(generate(task, "train", 3, 40))
    assert [s.id for s in first] == [f"train-{task}-3-{i}" for i in range(40)]
    # a sample does not depend on how many others were drawn
    assert _fingerprint(generate(task, "train", 3, 5)) == _fingerprint(first[:5])
    other = generate(task, "train", 4, 40)
    same = sum(a == b for a, b in zip(_fingerprint(first), _fingerprint(other)))
    assert same <= 2
    # the split name is folded into the seed too
    assert sum(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, generate(task, "test", 3, 40))) <= 2


def test_images_are_rgb_squares_on_white_and_size_option():
    for task in TASKS:
        for s in generate(task, "test", 0, 3) + generate(task, "train", 0, 3, size=84):
            assert s.image.mode == "RGB" and s.image.size[0] == s.image.size[1] in (84, 112)
            assert s.image.getpixel((0, 0)) == (255, 255, 255) or task in ("caption", "scene")
            assert len(set(s.image.getdata())) > 1
    with pytest.raises(ValueError):
        generate("colour", "train", 0, 1)
    with pytest.raises(ValueError):
        generate("caption", "validation", 0, 1)


def test_caption_grammar(drawn):
    item = (rf"(a|an) ({'|'.join(COLOUR_NAMES)}) ({'|'.join(SHAPES)}) "
            rf"(in the center|at the ({'|'.join(p for p in PLACES if p != 'center')}))")
    counts = Counter()
    for s in drawn["caption"]:
        assert s.question == "Describe the image."
        assert re.fullmatch(rf"{item}(, {item}){{0,3}}\.", s.answer), s.answer
        places = [PLACES.index(m.group(1)) for m in re.finditer(r"(?:in|at) the ([a-z ]+?)(?:,|\.)", s.answer)]
        assert places == sorted(places) and len(set(places)) == len(places)  # row-major, distinct cells
        assert ("an orange" in s.answer) == ("orange" in s.answer) and "a orange" not in s.answer
        counts[len(places)] += 1
    assert set(counts) == {1, 2, 3, 4}


def test_scene_grammar_lists_every_shape_row_by_row(drawn):
    thing = rf"(?:a|an) (?:{'|'.join(COLOUR_NAMES)}) (?:{'|'.join(SHAPES)})"
    row = rf"(top|middle|bottom) row has ({thing}(?:, {thing})*)\."
    lengths, shapes = [], Counter()
    for s in drawn["scene"]:
        assert s.question == "List every shape, row by row."
        assert re.fullmatch(rf"{row}( {row}){{0,2}}", s.answer), s.answer
        items = [item.split(":") for item in s.key.split("|")[-1].split(";")]  # the layout, row-major
        said = [(ROWS.index(m.group(1)), m.group(2)) for m in re.finditer(row, s.answer)]
        expected = [(r, ", ".join(f"{'an' if c == 'orange' else 'a'} {c} {shape}" for cell, c, shape in items
                                  if int(cell) // 3 == r)) for r in range(3)]
        assert said == [(r, text) for r, text in expected if text]  # rows top to bottom, shapes left to right
        lengths.append(len(words(s.answer)))
        shapes[len(items)] += 1
    assert set(shapes) == {3, 4, 5, 6}
    assert sum(lengths) / len(lengths) >= 20  # long answers: room for several tokens per forward


def test_count_grammar_and_rare_zero(drawn):
    questions = [rf"How many ({'|'.join(COLOUR_NAMES)}) shapes are there\?",
                 rf"How many ({'|'.join(PLURALS.values())}) are there\?"]
    answers = Counter(s.answer for s in drawn["count"])
    for s in drawn["count"]:
        assert any(re.fullmatch(q, s.question) for q in questions), s.question
    assert set(answers) == set("01234567") and 0 < answers["0"] < 0.1 * 500
    assert max(answers.values()) < 0.2 * 500  # no answer dominates
    for s in drawn["count"]:  # the answer is the true count of the layout
        items = [item.split(":") for item in s.key.split("|")[-1].split(";")]
        target = s.question.split()[2]
        hits = sum(target in (colour, PLURALS[shape]) for _, colour, shape in items)
        assert 2 <= len(items) <= 7 and s.answer == str(hits)


def test_digits_and_chart_grammar(drawn):
    lengths = Counter(len(s.answer) for s in drawn["digits"])
    assert set(lengths) == {2, 3, 4}
    assert all(s.question == "Read the number." and s.answer.isdigit() for s in drawn["digits"])
    kinds = Counter()
    for s in drawn["chart"]:
        bars = {c: int(h) for c, h in (bar.split(":") for bar in s.key.split("|")[-1].split(","))}
        assert 3 <= len(bars) <= 5 and all(1 <= h <= 9 for h in bars.values())
        if s.question == "Which bar is the tallest?":
            kinds["tallest"] += 1
            assert bars[s.answer] == max(bars.values()) and list(bars.values()).count(max(bars.values())) == 1
        else:
            kinds["value"] += 1
            colour = re.fullmatch(r"What is the value of the (\w+) bar\?", s.question).group(1)
            assert s.answer == str(bars[colour])
    assert kinds["tallest"] > 100 and kinds["value"] > 100


def test_vocabulary_covers_every_text_and_words_round_trip(drawn):
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    seen = set()
    for samples in drawn.values():
        for s in samples:
            for text in (s.question, s.answer):
                tokens = words(text)
                assert set(tokens) <= set(vocab), text
                assert join_words(tokens) == text
                seen.update(tokens)
    assert seen == set(vocab)  # the vocabulary is tight: every token occurs
    assert words("Read the number.") == ["Read", "the", "number", "."] and words("3071") == ["3", "0", "7", "1"]
    assert words("a red circle at the top, a blue star.")[5:8] == ["top", ",", "a"]


def test_generate_mix_interleaves():
    mix = generate_mix(["caption", "chart"], "train", 5, 3)
    assert [s.task for s in mix] == ["caption", "chart"] * 3
    assert _fingerprint(mix[1::2]) == _fingerprint(generate("chart", "train", 5, 3))


def test_write_llava_reads_back(tmp_path):
    samples = generate_mix(TASKS, "test", 2, 3)
    path = write_llava(samples, tmp_path)
    records = read_llava(path)
    assert [r["id"] for r in records] == [s.id for s in samples]
    for record, s in zip(records, samples):
        assert record["image"] == f"images/{s.id}.png"
        assert record["conversations"] == [{"from": "human", "value": "<image>\n" + s.question},
                                           {"from": "gpt", "value": s.answer}]
        with Image.open(tmp_path / record["image"]) as image:
            assert image.convert("RGB").tobytes() == s.image.tobytes()
    with pytest.raises(ValueError):
        write_llava(samples + samples[:1], tmp_path / "again")
