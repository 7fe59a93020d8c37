"""Answer metrics, pure functions of a prediction and its truth (two strings), each scoring 0.0 or 1.0 but F1.

- `exact_match`: 1.0 when both are equal after stripping whitespace and one trailing period ("7." == "7",
  " red " == "red"); case-sensitive, since MiniVL answers are canonical.
- `token_f1`: SQuAD-style F1 over `words` tokens: the multiset overlap's precision
  and recall. Two empty texts score 1.0, one empty text 0.0.
- `relaxed_accuracy` (ChartQA, as Pix2Struct's and lmms-eval's `relaxed_correctness`): a numeric truth is met by
  a number within 5% of it (relative; a truth of 0 needs exactly 0), any other truth by the same text ignoring
  case. The prediction's number is the first after a last "answer" ("The answer is 12.0." -> 12.0), else its
  last number; "1,234" is 1234 and "45%" is 0.45 on either side.
- `multiple_choice` (MMBench, AI2D): the letter a free-form answer picks (`choice_letter`) equals the truth's, a
  letter ("B", "(B)") or the text of one of `choices`.
- `yes_no` (MME): the prediction's yes or no (`yes_no_label`) equals the truth, "yes" or "no" in any case.

`METRICS` maps each name to its function; `score(name, prediction, truth, choices)` calls one by name.
"""

import re
import string
from collections import Counter

LETTERS = string.ascii_uppercase
RELATIVE_TOLERANCE = 0.05  # ChartQA's relaxed accuracy
# "12", "-3.5", ".5", "1,234", "45%"; not inside a word or a longer number ("v2", "1.2.3" gives "1.2" only once)
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)%?")
# The forms of a letter answer, in the order they are tried (the last match of each counts): "B", "(b)", "B.";
# "The answer is (B).", "Answer: b", "option C" (the letter then ends the sentence, so "answer is a cat" is no A);
# "B. Paris", "(B) Paris". A stated answer beats a leading one: "A. carrot\n\nThe correct answer is B. apple." is B.
LETTER_FORMS = (
    re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:]?$"),
    re.compile(r"\b(?:answer|option|choice)\b(?:\s+is)?\s*:?\s*[(\[]?([A-Za-z])\b[)\]]?(?=\s*(?:[.,;:!)]|$))",
               re.IGNORECASE),
    re.compile(r"^[(\[]?([A-Za-z])[)\].:]\s"),
)
# "A" and "I" as words rather than letters: "A cat sits", "I think", "I'm" (but "A or B" names two letters)
WORD_NOT_LETTER = re.compile(r"\b([AI])(?:\s+(?!or\b|and\b)[a-z]|'[a-z])")


def words(text: str) -> list[str]:
    """Split a text into tokens (MiniVL's vocabulary is made of them): '.', ',' and '?' are tokens of their
    own, every digit is a token of its own ("3071" -> "3", "0", "7", "1"), and the rest is split on whitespace.
    Case is kept."""
    return re.findall(r"[0-9]|[.,?]|[^\s0-9.,?]+", text)


def normalise(text: str) -> str:
    """Whitespace stripped, then one trailing period (and the whitespace before it) removed."""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, truth: str) -> float:
    return float(normalise(prediction) == normalise(truth))


def token_f1(prediction: str, truth: str) -> float:
    predicted, expected = words(prediction), words(truth)
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def _number_value(text: str) -> float:
    value = float(text.rstrip("%").replace(",", ""))
    return value / 100 if text.endswith("%") else value


def as_number(text: str) -> float | None:
    """The value of a text that is one number ("12", "12.0.", "1,234", "45%"), else None."""
    text = normalise(text)
    return _number_value(text) if NUMBER.fullmatch(text) else None


def find_number(text: str) -> float | None:
    """The number a free-form answer gives: the first after its last "answer", else its last number."""
    cue = list(re.finditer(r"\banswer\b", text, re.IGNORECASE))
    after = NUMBER.findall(text[cue[-1].end():]) if cue else []
    found = after[:1] or NUMBER.findall(text)[-1:]
    return _number_value(found[0]) if found else None


def relaxed_accuracy(prediction: str, truth: str) -> float:
    expected = as_number(truth)
    if expected is None:
        return float(normalise(prediction).lower() == normalise(truth).lower())
    found = find_number(prediction)
    return float(found is not None and abs(found - expected) <= RELATIVE_TOLERANCE * abs(expected))


def _plain(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: how choice texts are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _letter_by_text(text: str, choices, exact: bool) -> str | None:
    """The letter of the one choice the text is (exact) or mentions as whole words; a choice inside another
    mentioned one ("red" in "dark red") does not count."""
    said = _plain(text)
    found = [(i, _plain(c)) for i, c in enumerate(choices) if
             (said == _plain(c) if exact else f" {_plain(c)} " in f" {said} ") and _plain(c)]
    found = [(i, c) for i, c in found if not any(c != other and c in other for _, other in found)]
    return LETTERS[found[0][0]] if len(found) == 1 else None


def choice_letter(prediction: str, choices=()) -> str | None:
    """The option letter a free-form answer picks, or None. Tried in order: a letter form (see LETTER_FORMS);
    the whole answer being one choice's text; exactly one capital letter of the options standing alone ("I think
    B is right"); exactly one choice's text inside the answer. The letters are A.. as many as `choices`, or A-Z
    without choices."""
    letters = LETTERS[: len(choices)] if choices else LETTERS
    text = prediction.strip()
    for form in LETTER_FORMS:
        found = [match.group(1).upper() for match in form.finditer(text)][-1:]
        if found and found[0] in letters:
            return found[0]
    if (letter := _letter_by_text(text, choices, exact=True)) is not None:
        return letter
    alone = set(re.sub(r"[^\w]", " ", text).split()) & set(letters)
    alone -= set(WORD_NOT_LETTER.findall(text))
    if len(alone) == 1:
        return alone.pop()
    return _letter_by_text(text, choices, exact=False)


def answer_letter(truth: str, choices=()) -> str | None:
    """The letter a truth names: a letter form of an option ("B", "(B)", "b."), or exactly one choice's text."""
    letters = LETTERS[: len(choices)] if choices else LETTERS
    match = LETTER_FORMS[0].match(truth.strip())
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return _letter_by_text(truth, choices, exact=True)


def multiple_choice(prediction: str, truth: str, choices=()) -> float:
    expected = answer_letter(truth, choices)
    return float(expected is not None and choice_letter(prediction, choices) == expected)


def yes_no_label(text: str) -> str | None:
    """"yes" or "no": the answer's first word when it is one ("Yes, it is." -> yes), else the only one of the two
    it says ("There is no dog." -> no); None when it says neither or both."""
    found = re.findall(r"[a-z]+", text.lower())
    if found and found[0] in ("yes", "no"):
        return found[0]
    said = {word for word in found if word in ("yes", "no")}
    return said.pop() if len(said) == 1 else None


def yes_no(prediction: str, truth: str) -> float:
    expected = normalise(truth).lower()
    return float(expected in ("yes", "no") and yes_no_label(prediction) == expected)


METRICS = {"exact_match": exact_match, "relaxed_accuracy": relaxed_accuracy, "multiple_choice": multiple_choice,
           "yes_no": yes_no, "token_f1": token_f1}


def score(metric: str, prediction: str, truth: str, choices=()) -> float:
    """METRICS[metric] of the two texts; `choices` reach multiple_choice only."""
    if metric == "multiple_choice":
        return multiple_choice(prediction, truth, choices)
    return METRICS[metric](prediction, truth)
