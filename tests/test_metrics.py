"""The answer metrics of `diffusionvl eval` on the answers models actually write."""

import pytest

from diffusionvl.evaluation.metrics import (
    METRICS,
    answer_letter,
    as_number,
    choice_letter,
    exact_match,
    find_number,
    multiple_choice,
    relaxed_accuracy,
    score,
    token_f1,
    yes_no,
    yes_no_label,
)

CHOICES = ["London", "Paris", "Rome", "Berlin"]


def test_registry_names_every_metric_and_score_dispatches():
    assert set(METRICS) == {"exact_match", "relaxed_accuracy", "multiple_choice", "yes_no", "token_f1"}
    assert score("exact_match", "7.", "7") == score("yes_no", "Yes.", "yes") == 1.0
    assert score("multiple_choice", "Paris", "B", CHOICES) == 1.0
    assert score("relaxed_accuracy", "12.4", "12", CHOICES) == 1.0  # choices reach multiple_choice only
    assert score("token_f1", "a red", "a red") == 1.0


def test_exact_match_and_token_f1_keep_their_behaviour():
    assert exact_match("7.", "7") == exact_match(" red ", "red") == 1.0
    assert exact_match("Red", "red") == exact_match("7..", "7") == 0.0
    assert token_f1("a blue circle.", "a red circle.") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0 and token_f1("", "red") == 0.0


@pytest.mark.parametrize("prediction, truth, expected", [
    ("12", "12", 1.0),
    ("12.0", "12", 1.0),  # the same number, written differently
    ("The answer is 12.0.", "12", 1.0),  # the number inside a sentence; the final period is no decimal point
    ("12.5", "12", 1.0),  # within 5%
    ("12.7", "12", 0.0),  # 5.8% off
    ("-3.1", "-3", 1.0),
    ("1,234", "1234", 1.0),  # thousands separators
    ("1234", "1,234", 1.0),
    ("45%", "0.45", 1.0),  # a percentage is its fraction, as in ChartQA's reference code
    ("45", "45%", 0.0),
    ("0.0", "0", 1.0),  # a truth of 0 needs exactly 0 ...
    ("0.01", "0", 0.0),  # ... since 5% of 0 is 0
    ("In 2019 the value was 40.", "40", 1.0),  # the last number, not the first
    ("The answer is 12, not 15.", "12", 1.0),  # the first number after "answer"
    ("twelve", "12", 0.0),  # no number at all
    ("Paris", "paris.", 1.0),  # a text truth: equal ignoring case and one final period
    ("Paris, France", "Paris", 0.0),
])
def test_relaxed_accuracy(prediction, truth, expected):
    assert relaxed_accuracy(prediction, truth) == expected


def test_number_parsing():
    assert as_number("12.0.") == 12.0 and as_number("45%") == 0.45 and as_number(".5") == 0.5
    assert as_number("12 apples") is None and as_number("v2") is None
    assert find_number("from 2019-2020") == 2020 and find_number("v2 of it") is None
    assert find_number("Answer: 7 (of 9)") == 7 and find_number("no digits") is None


@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("The answer is (B).", "B"),
    ("The answer is B.", "B"),
    ("B. Paris", "B"),
    ("(b) paris", "B"),
    ("Answer: b", "B"),
    ("A. London\n\nThe correct answer is B. Paris.", "B"),  # a stated answer beats a leading letter (SmolLM2 wrote this)
    ("Answer: A. No, wait: the answer is (B).", "B"),  # the last stated answer
    ("The correct option is C", "C"),
    ("I think B is right", "B"),  # "I" is a word here, not option I
    ("I'm sure it is B", "B"),
    ("The answer is B because it is the capital.", "B"),
    ("Paris", "B"),  # the choice's text, no letter
    ("paris.", "B"),
    ("It is Paris, of course.", "B"),  # one choice's text inside the answer
    ("The answer is a cat.", None),  # "a" the article, not option A
    ("A cat", None),
    ("A or B", None),  # two letters: no pick
    ("Paris or Rome", None),  # two choices: no pick
    ("E", None),  # not one of the four options
    ("", None),
])
def test_choice_letter(prediction, letter):
    assert choice_letter(prediction, CHOICES) == letter


def test_choice_letter_prefers_the_exact_choice_and_the_longer_mention():
    shades = ["red", "dark red", "blue"]
    assert choice_letter("dark red", shades) == "B"
    assert choice_letter("It is dark red.", shades) == "B"  # "red" inside "dark red" does not count twice
    assert choice_letter("A.", []) == "A" and choice_letter("The answer is (D).") == "D"  # letters A-Z, no choices


@pytest.mark.parametrize("truth, letter", [("B", "B"), ("(b)", "B"), ("Paris", "B"), ("paris.", "B"), ("E", None),
                                           ("Madrid", None)])
def test_answer_letter_is_a_letter_or_a_choice_text(truth, letter):
    assert answer_letter(truth, CHOICES) == letter


def test_multiple_choice_scores_the_picked_letter_against_the_truth():
    assert multiple_choice("The answer is (B).", "B", CHOICES) == 1.0
    assert multiple_choice("B. Paris", "Paris", CHOICES) == 1.0  # truth given as the choice text
    assert multiple_choice("Paris", "B", CHOICES) == 1.0
    assert multiple_choice("C", "B", CHOICES) == 0.0
    assert multiple_choice("A or B", "B", CHOICES) == 0.0
    assert multiple_choice("B", "Madrid", CHOICES) == 0.0  # an unusable truth scores nothing


@pytest.mark.parametrize("prediction, label", [
    ("Yes.", "yes"),
    ("yes, it is", "yes"),
    ("YES", "yes"),
    ("No", "no"),
    ("No, there is no dog.", "no"),
    ("There is no dog.", "no"),  # only one of the two words
    ("Yes and no", "yes"),  # the first word decides
    ("I cannot say yes or no", None),  # both, not first: neither
    ("Not sure", None),  # "not" is not "no"
    ("Nope", None),
    ("", None),
])
def test_yes_no_label(prediction, label):
    assert yes_no_label(prediction) == label


def test_yes_no_scores_against_a_yes_or_no_truth():
    assert yes_no("Yes.", "yes") == yes_no("yes, it is", "Yes") == yes_no("No", "no.") == 1.0
    assert yes_no("No", "yes") == yes_no("Maybe", "yes") == yes_no("Maybe", "no") == 0.0
    assert yes_no("yes", "maybe") == 0.0
