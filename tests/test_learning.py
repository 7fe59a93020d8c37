"""A tiny AR model learns a toy task, is translated, and then learns it as a block-diffusion model."""

import torch
from conftest import EOT_ID, MASK_ID, tiny_causal_lm

from diffusionvl import DiffusionVL

PROMPT = 6


def toy_batch(generator: torch.Generator, n: int = 32):
    """Prompt: 6 tokens in [3, 30); answer: each token + 30, then end-of-turn. Only the answer is supervised."""
    prompt = torch.randint(3, 30, (n, PROMPT), generator=generator)
    ids = torch.cat([prompt, prompt + 30, torch.full((n, 1), EOT_ID)], dim=1)
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return ids, labels


def train(model, steps: int, lr: float, loss_fn, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        ids, labels = toy_batch(generator)
        loss = loss_fn(model, ids, labels, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def curve(name: str, losses: list[float], every: int = 25) -> str:
    points = [f"{i:>4}: {sum(losses[i:i + every]) / len(losses[i:i + every]):.3f}" for i in range(0, len(losses), every)]
    return f"{name} loss (mean of {every} steps)\n  " + "\n  ".join(points)


def test_translated_model_learns_the_diffusion_objective():
    ar = tiny_causal_lm(hidden_size=64, intermediate_size=128, seed=0)
    ar_losses = train(ar, 150, 3e-3, lambda m, ids, labels, g: m(input_ids=ids, labels=labels).loss, seed=0)
    print(curve("autoregressive pretraining", ar_losses))
    assert sum(ar_losses[-20:]) / 20 < 0.5 * sum(ar_losses[:20]) / 20

    model = DiffusionVL.from_autoregressive(ar, mask_token_id=MASK_ID, block_size=4)
    diffusion = lambda m, ids, labels, g: m(input_ids=ids, labels=labels, generator=g).loss  # noqa: E731
    losses = train(model, 300, 1e-3, diffusion, seed=1)
    print(curve("block diffusion finetuning", losses))
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.5 * first, f"diffusion loss fell only from {first:.3f} to {last:.3f}"
