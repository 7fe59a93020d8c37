"""A tiny AR model learns a toy task, is translated, and then learns it as a block-diffusion model."""

from conftest import MASK_ID, tiny_causal_lm, train

from diffusionvl import DiffusionVL


def curve(name: str, losses: list[float], every: int = 25) -> str:
    points = [f"{i:>4}: {sum(losses[i:i + every]) / len(losses[i:i + every]):.3f}" for i in range(0, len(losses), every)]
    return f"{name} loss (mean of {every} steps)\n  " + "\n  ".join(points)


def test_translated_model_learns_the_diffusion_objective():
    ar = tiny_causal_lm(hidden_size=64, intermediate_size=128, seed=0)
    ar_losses = train(ar, 150, 3e-3, seed=0)
    print(curve("autoregressive pretraining", ar_losses))
    assert sum(ar_losses[-20:]) / 20 < 0.5 * sum(ar_losses[:20]) / 20

    model = DiffusionVL.from_autoregressive(ar, mask_token_id=MASK_ID, block_size=4)
    losses = train(model, 300, 1e-3, seed=1)
    print(curve("block diffusion finetuning", losses))
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.5 * first, f"diffusion loss fell only from {first:.3f} to {last:.3f}"
