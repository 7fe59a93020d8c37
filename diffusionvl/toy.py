"""A synthetic copy task that a tiny model learns in seconds on a CPU: for tests, examples and benchmarks.

Prompt: k tokens drawn from [3, 30), then a separator. Answer: the prompt shifted by +30, written `repeat`
times, then end-of-turn. The answer is known, so decoders can be scored by exact match.
"""

import torch

SEPARATOR = 1
FIRST, SPAN, SHIFT = 3, 27, 30


def toy_answer(prompt: list[int], repeat: int, eot_id: int) -> list[int]:
    return [t + SHIFT for t in prompt] * repeat + [eot_id]


def toy_batch(generator: torch.Generator, eot_id: int, n: int = 32, lengths=(2, 10), repeat: int = 1):
    """Right-padded (pad 0) training batch: (input_ids, labels, attention_mask); only answers are supervised."""
    ks = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=generator)
    width = lengths[1] * (repeat + 1) + 2
    ids = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, width), -100)
    mask = torch.zeros(n, width, dtype=torch.long)
    for row, k in enumerate(ks.tolist()):
        prompt = torch.randint(FIRST, FIRST + SPAN, (k,), generator=generator).tolist()
        sample = prompt + [SEPARATOR] + toy_answer(prompt, repeat, eot_id)
        ids[row, : len(sample)] = torch.tensor(sample)
        labels[row, k + 1 : len(sample)] = torch.tensor(sample[k + 1 :])
        mask[row, : len(sample)] = 1
    return ids, labels, mask


def train_toy(model, steps: int, lr: float, eot_id: int, seed: int = 0, lengths=(2, 10), repeat: int = 1, progress=None):
    """AdamW on toy batches: the AR loss for a plain causal LM, the block-diffusion loss for a DiffusionVL.

    Returns the loss of every step. `progress` (e.g. a tqdm bar) is updated once per step if given.
    """
    from .model import DiffusionVL

    torch.manual_seed(seed)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    extra = {"generator": generator} if isinstance(model, DiffusionVL) else {}
    losses = []
    for _ in range(steps):
        ids, labels, mask = toy_batch(generator, eot_id, lengths=lengths, repeat=repeat)
        loss = model(input_ids=ids, labels=labels, attention_mask=mask, **extra).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses
