"""MiniVL: a deterministic, seedable offline benchmark of small image-question-answer tasks, the small Qwen2.5-VL
models trained on it, and the study that trains, translates and compares them.

`generator.py` draws the samples (Pillow; scikit-learn's digit scans for the `digits` task, imported only when
that task is drawn); `models.py` builds the tokenizer, processor and model; `recipe.py` is `diffusionvl recipe
minivl` (AR source, its translation, a from-scratch diffusion baseline, the results table); `demo.py` is
`diffusionvl demo`. `weights/` holds the shipped models, minivl-ar and minivl-dvlm, written by the recipe.
"""
