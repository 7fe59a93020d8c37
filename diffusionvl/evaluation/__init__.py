"""Evaluation harness of saved models, for any task set: `metrics` (exact match, token F1), `tasks` (your own
questions in a JSONL file), `tally` (forwards, tokens and time summed over batches), `perplexity`, and `lmms`
(the lmms-eval adapter). MiniVL's own evaluation is `minivl.evaluate`."""
