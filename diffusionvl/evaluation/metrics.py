"""Answer metrics, pure functions of two strings.

- `exact_match(prediction, truth)`: 1.0 when both are equal after stripping whitespace and one trailing period
  ("7." == "7", " red " == "red"); case-sensitive, since MiniVL answers are canonical.
- `token_f1(prediction, truth)`: SQuAD-style F1 over `diffusionvl.minivl.generator.words` tokens: the multiset
  overlap's precision and recall. Two empty texts score 1.0, one empty text 0.0.
"""

from collections import Counter

from ..minivl.generator import words


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
