"""MiniVL: a deterministic, seedable offline benchmark of small image-question-answer tasks, and the small
Qwen2.5-VL models trained on it.

`generator.py` draws the samples (Pillow; scikit-learn's digit scans for the `digits` task, imported only when
that task is drawn); `models.py` builds the tokenizer, processor and model.
"""
