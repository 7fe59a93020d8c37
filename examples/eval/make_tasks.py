"""Write the example task file of `diffusionvl eval --tasks` (README, "Your own questions"): a few MiniVL test
samples drawn by the project's generator, as tasks.jsonl beside images/*.png. Deterministic; rerun to rebuild.

    python examples/eval/make_tasks.py
"""

import json
from pathlib import Path

from diffusionvl.minivl.generator import sample

HERE = Path(__file__).parent


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    drawn = {name: sample(task, "test", 0, index) for name, task, index in
             [("count", "count", 0), ("digits", "digits", 0), ("chart-value", "chart", 0),
              ("chart-tallest", "chart", 1), ("caption", "caption", 0)]}
    for name, s in drawn.items():
        s.image.save(HERE / "images" / f"{name}.png")
    bars = [bar.split(":")[0] for bar in drawn["chart-tallest"].key.split("|")[3].split(",")]  # the bars' colours
    records = [
        {"id": "count", "image": "images/count.png", "question": drawn["count"].question,
         "answer": int(drawn["count"].answer)},
        {"id": "digits", "image": "images/digits.png", "question": drawn["digits"].question,
         "answer": drawn["digits"].answer},
        {"id": "chart-value", "image": "images/chart-value.png", "question": drawn["chart-value"].question,
         "answer": drawn["chart-value"].answer, "metric": "relaxed_accuracy"},
        {"id": "chart-tallest", "image": "images/chart-tallest.png", "question": drawn["chart-tallest"].question,
         "choices": bars, "answer": drawn["chart-tallest"].answer},
        {"id": "caption", "image": "images/caption.png", "question": drawn["caption"].question,
         "answer": drawn["caption"].answer, "metric": "token_f1"},
        {"id": "purple", "image": "images/count.png", "question": "Is there a purple shape?", "answer": "yes",
         "metric": "yes_no"},
    ]
    text = "".join(json.dumps(record) + "\n" for record in records)
    (HERE / "tasks.jsonl").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
