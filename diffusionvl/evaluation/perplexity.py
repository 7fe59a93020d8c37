"""How fluent an answer is, measured by an autoregressive model: its perplexity of the answer given the prompt.

A fluency measure no one has to judge by hand: the AR source's perplexity of a translated model's answers, next
to its perplexity of its own answers, says whether the translation still writes text the source finds likely.
"""

import math

import torch


@torch.inference_mode()
def answer_nll(model, prompts: list[list[int]], answers: list[list[int]], batch_size: int = 16,
               pad_id: int = 0) -> list[tuple[float, int]]:
    """Per answer: (sum over its tokens of -log p(token | prompt, earlier answer tokens), token count).

    `model` is a transformers causal LM; prompts and answers are token ids (the answer's end-of-turn included,
    if it should count). Rows are right-padded in batches; padding is masked out of attention and of the sum.
    """
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(prompts), batch_size):
        rows = [p + a for p, a in zip(prompts[start: start + batch_size], answers[start: start + batch_size])]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (N, L-1)
        for i, (prompt, answer) in enumerate(zip(prompts[start: start + batch_size], answers[start: start + batch_size])):
            span = logprobs[i, len(prompt) - 1: len(prompt) - 1 + len(answer)]  # position j predicts token j + 1
            results.append((float(-span.sum()), len(answer)))
    return results


def perplexity(nll: list[tuple[float, int]]) -> float:
    """exp(total negative log-likelihood / total tokens) over a set of answers (corpus-level perplexity)."""
    tokens = sum(count for _, count in nll)
    return math.exp(sum(total for total, _ in nll) / tokens) if tokens else float("nan")
