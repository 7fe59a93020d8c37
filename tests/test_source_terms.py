"""The terms that keep the source (loss.Objective): pure functions checked by hand, each term checked against what
it must equal, and zero weights leaving the block-diffusion loss exactly as it was."""

import copy

import pytest
import torch
from conftest import MASK_ID, prompt_answer_batch, tiny_causal_lm, wrap

from diffusionvl import DiffusionVL, DiffusionVLError
from diffusionvl.modeling.lora import add_lora
from diffusionvl.modeling.loss import Objective, confidence_loss, distillation_loss
from diffusionvl.modeling.noise import IGNORE
from diffusionvl.modeling.objective import source_logits
from diffusionvl.training.config import TrainingConfig


def causal_translation(seed=0, **options):
    source = tiny_causal_lm("qwen2", seed=seed)
    original = copy.deepcopy(source)
    model = DiffusionVL.from_autoregressive(source, mask_token_id=MASK_ID, block_size=4, logit_shift=True,
                                            context_attention="causal", **options)
    return model, original


def noised(model, seed=0):
    ids, labels = prompt_answer_batch(n=2, length=16, prompt=6)
    return model.add_noise(ids, labels, generator=torch.Generator().manual_seed(seed))


def test_the_pure_functions_by_hand():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    p, log_q = teacher.softmax(-1), logits.log_softmax(-1)
    assert float(distillation_loss(logits, teacher)) == pytest.approx(float((p * (p.log() - log_q)).sum(-1).mean()))
    hot = (teacher / 2).softmax(-1)
    expected = (hot * (hot.log() - (logits / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert float(distillation_loss(logits, teacher, 2.0)) == pytest.approx(float(expected), rel=1e-5)
    targets = logits.argmax(-1).clone()
    targets[:2] = (targets[:2] + 1) % 7  # two positions wrong: left out
    probs = logits[2:].softmax(-1)
    assert float(confidence_loss(logits, targets)) == pytest.approx(float(-(probs * probs.log()).sum(-1).mean()))
    assert float(confidence_loss(logits, (logits.argmax(-1) + 1) % 7)) == 0.0


def test_zero_weights_leave_the_loss_exactly_as_it_was():
    model = wrap(block_size=4)
    batch = noised(model)
    plain = model.diffusion_loss(batch).loss
    assert torch.equal(model.diffusion_loss(batch, objective=Objective()).loss, plain)
    assert not Objective().extra and not TrainingConfig(data="d", model="m", output_dir="o").objective.extra


def test_the_ar_term_is_the_sources_next_token_loss_on_an_untrained_causal_translation():
    model, source = causal_translation()
    batch = noised(model)
    with torch.no_grad():
        term = model.diffusion_loss(batch, objective=Objective(ar=1.0)).loss - model.diffusion_loss(batch).loss
        following = batch.labels[:, 1:]
        pick = following != IGNORE
        logits = source(input_ids=batch.clean_ids).logits[:, :-1][pick]
    assert float(term) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, following[pick])), abs=1e-4)
    block_causal = wrap(block_size=4)
    with pytest.raises(DiffusionVLError, match="causal context"):
        block_causal.diffusion_loss(noised(block_causal), objective=Objective(ar=1.0))


def test_the_teacher_is_the_base_with_its_adapters_off_and_they_come_back_on():
    model, source = causal_translation(seed=1)
    add_lora(model, rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # adapters that change the outputs
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    batch = noised(model)
    rows, positions = torch.tensor([0, 0, 1]), torch.tensor([7, 11, 15])
    teacher = source_logits(model, batch, None, (rows, positions))
    with torch.no_grad():
        expected = source(input_ids=batch.clean_ids).logits[rows, positions - 1]
        adapted = model(input_ids=batch.clean_ids).logits[rows, positions]  # logit shift: index p predicts token p
    assert (teacher - expected).abs().max() <= 1e-4
    assert (adapted - expected).abs().max() > 1e-3  # the adapters are on again
    with torch.no_grad():
        assert float(model.diffusion_loss(batch, objective=Objective(distill=1.0)).loss) > \
            float(model.diffusion_loss(batch).loss)
    plain, _ = causal_translation()
    with pytest.raises(DiffusionVLError, match="distil from itself"):
        plain.diffusion_loss(noised(plain), objective=Objective(distill=1.0))


@pytest.mark.parametrize("native", [True, False])
def test_a_full_finetune_distils_from_a_frozen_copy_of_the_model_as_it_starts(monkeypatch, native):
    from diffusionvl.training import train
    from diffusionvl.training.train import frozen_teacher

    monkeypatch.setattr(train, "native_bf16", lambda: native)  # bf16 where the hardware has it, else fp32

    model, source = causal_translation(seed=1)
    run = TrainingConfig(data="d.json", model="m", output_dir="o", stage="diffusion", distill_weight=1.0)
    assert frozen_teacher(model, TrainingConfig(**{**run.__dict__, "lora_rank": 4})) is None  # its base serves
    assert frozen_teacher(model, TrainingConfig(**{**run.__dict__, "distill_weight": 0.0})) is None
    teacher = frozen_teacher(model, run)
    assert teacher.dtype == (torch.bfloat16 if native else torch.float32)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():  # training moves the model; the teacher stays the source
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    batch = noised(model)
    rows, positions = torch.tensor([0, 0, 1]), torch.tensor([7, 11, 15])
    logits = source_logits(model, batch, None, (rows, positions), teacher)
    with torch.no_grad():
        expected = source(input_ids=batch.clean_ids).logits[rows, positions - 1]
        moved = model(input_ids=batch.clean_ids).logits[rows, positions]
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max() <= 0.02 * expected.abs().max()  # bf16 rounding only
    assert (moved - expected).abs().max() > 0.1 * expected.abs().max()
    with torch.no_grad():
        term = model.diffusion_loss(batch, objective=Objective(distill=1.0, teacher=teacher)).loss
        assert float(term) > float(model.diffusion_loss(batch).loss)


def test_the_confidence_term_is_the_entropy_of_right_predictions_at_the_masked_positions(monkeypatch):
    from diffusionvl.modeling import objective

    seen = []
    monkeypatch.setattr(objective, "confidence_loss", lambda logits, targets: seen.append((logits, targets)) or
                        confidence_loss(logits, targets))
    model = wrap(block_size=4, seed=3)
    batch = noised(model)
    with torch.no_grad():
        term = model.diffusion_loss(batch, objective=Objective(confidence=2.0)).loss - model.diffusion_loss(batch).loss
    (logits, targets), = seen
    assert logits.shape[0] == targets.shape[0] == int(batch.masked.sum())
    assert float(term) == pytest.approx(2.0 * float(confidence_loss(logits, targets)), abs=1e-5)


def test_the_training_options_are_checked():
    values = dict(data="d", model="m", output_dir="o")
    config = TrainingConfig(**values, ar_loss_weight=0.5, distill_weight=1.0, distill_temperature=2.0,
                            confidence_weight=0.1)
    assert config.objective == Objective(0.5, 1.0, 2.0, 0.1)
    with pytest.raises(DiffusionVLError, match="--distill-weight must be zero or more"):
        TrainingConfig(**values, distill_weight=-1.0)
    with pytest.raises(DiffusionVLError, match="--distill-temperature must be a positive number"):
        TrainingConfig(**values, distill_temperature=0.0)
    with pytest.raises(DiffusionVLError, match="--ar-loss-weight add to the block-diffusion loss of stage 'diffusion'"):
        TrainingConfig(**values, ar_loss_weight=1.0, stage="autoregressive")
