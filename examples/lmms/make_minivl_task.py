"""Draw the tiny local lmms-eval task beside this file: minivl_lmms.parquet, four MiniVL test samples (two count
questions, two chart questions) with their images embedded, read by minivl_lmms.yaml.

    python examples/lmms/make_minivl_task.py

Deterministic: the generator draws sample i of (task, split, seed) from its own seed, so rerunning rewrites the
same images and answers.
"""

from pathlib import Path

from datasets import Dataset, Features, Image, Value

from diffusionvl.minivl.generator import generate

HERE = Path(__file__).parent


def main() -> None:
    samples = generate("count", "test", 0, 2) + generate("chart", "test", 0, 2)  # 112 px: minivl-dvlm's size
    features = Features({"id": Value("string"), "image": Image(), "question": Value("string"),
                         "answer": Value("string")})
    rows = {"id": [s.id for s in samples], "image": [s.image for s in samples],
            "question": [s.question for s in samples], "answer": [s.answer for s in samples]}
    Dataset.from_dict(rows, features=features).to_parquet(HERE / "minivl_lmms.parquet")


if __name__ == "__main__":
    main()
