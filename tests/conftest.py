"""Tiny configs of real architectures and a tiny chat tokenizer; everything offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
MASK_ID = VOCAB - 1
EOT_ID = 2
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=EOT_ID,
    pad_token_id=0,
)
FAMILIES = {
    "qwen2": lambda **kw: Qwen2Config(**{**TINY, **kw}),
    "qwen3": lambda **kw: Qwen3Config(**{**TINY, "head_dim": 8, **kw}),
    "llama": lambda **kw: LlamaConfig(**{**TINY, **kw}),
    "mistral": lambda **kw: MistralConfig(**{**TINY, **kw}),
}


def tiny_causal_lm(family: str = "qwen2", attn: str = "sdpa", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[family](**overrides), attn_implementation=attn)
    return model.eval()


def tiny_tokenizer(words: int = 60) -> PreTrainedTokenizerFast:
    """A word-level chat tokenizer: <|endoftext|> (pad) 0, <|im_start|> 1, <|im_end|> 2, then w0..w{words-1}."""
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    vocab.update({f"w{i}": i + 3 for i in range(words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, replace_extra_special_tokens=False
    )
    return tokenizer


def wrap(family="qwen2", attn="sdpa", block_size=4, seed=0, **options):
    from diffusionvl import DiffusionVL

    return DiffusionVL.from_autoregressive(
        tiny_causal_lm(family, attn, seed), mask_token_id=MASK_ID, block_size=block_size, **options
    )


def random_ids(*shape: int, seed: int = 0) -> torch.Tensor:
    """Token ids in [3, 60) from a seeded generator, so a test's inputs do not depend on the tests before it."""
    return torch.randint(3, 60, shape, generator=torch.Generator().manual_seed(seed))


def prompt_answer_batch(n=3, length=14, prompt=5, seed=0):
    """Random ids in [3, 60) with the first `prompt` positions unsupervised."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, labels


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def train(model, steps: int, lr: float, seed: int) -> list[float]:
    """Train on the toy task of `diffusionvl.toy`: AR loss for a causal LM, diffusion loss for a DiffusionVL."""
    from diffusionvl.toy import train_toy

    return train_toy(model, steps, lr, EOT_ID, seed=seed)


def toy_prompt(tokens: list[int]) -> torch.Tensor:
    from diffusionvl.toy import SEPARATOR

    return torch.tensor(tokens + [SEPARATOR])


@pytest.fixture(scope="session")
def trained_ar():
    """A tiny Qwen2 trained AR on the toy task (~5 s); copy it before changing it."""
    ar = tiny_causal_lm(hidden_size=64, intermediate_size=128, seed=0)
    train(ar, 200, 3e-3, seed=0)
    return ar


@pytest.fixture(scope="session")
def trained(trained_ar):
    """The toy AR model translated and finetuned with block size 4 (~10 s)."""
    import copy

    from diffusionvl import DiffusionVL

    model = DiffusionVL.from_autoregressive(copy.deepcopy(trained_ar), mask_token_id=MASK_ID, block_size=4)
    train(model, 400, 2e-3, seed=1)
    return model


IMAGE_ID, VISION_START, VISION_END = 90, 88, 89
PATCH = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


def tiny_qwen_vl(seed: int = 0, attn: str = "sdpa"):
    """A tiny Qwen2.5-VL (2-layer ViT with window and full attention, merger, 2-layer LM) with random weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(
            TINY, hidden_size=64, intermediate_size=128,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE_ID, video_token_id=91, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def fake_image(grid_h: int, grid_w: int, seed: int = 0):
    """Processor-shaped patches of one image: (pixel_values (h*w, PATCH), grid (1, 3), image tokens h*w/4)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(grid_h * grid_w, PATCH, generator=g), torch.tensor([[1, grid_h, grid_w]]), grid_h * grid_w // 4


def image_prompt(before: list[int], tokens: int, after: list[int]) -> torch.Tensor:
    return torch.tensor(before + [IMAGE_ID] * tokens + after)


CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vl_processor(wrap_images: bool = False):
    """A word-level chat tokenizer whose special ids match `tiny_qwen_vl`, plus Qwen's Pillow image processor."""
    from transformers import Qwen2VLImageProcessorPil

    from diffusionvl.modeling.processing import DiffusionVLProcessor

    specials = {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>", 3: "<unk>", VISION_START: "<|vision_start|>",
                VISION_END: "<|vision_end|>", IMAGE_ID: "<|image_pad|>"}
    words = ["system", "user", "assistant"] + [f"w{i}" for i in range(60)]
    words += [f"filler{i}" for i in range(VISION_START - 4 - len(words))]  # contiguous ids, like real vocabularies
    vocab = {token: i for i, token in specials.items()}
    vocab.update({word: i + 4 for i, word in enumerate(words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [specials[k] for k in sorted(specials) if k not in (0, 3)]},
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 84, patch_size=14, merge_size=2)
    wrap = dict(vision_start="<|vision_start|>", vision_end="<|vision_end|>") if wrap_images else {}
    return DiffusionVLProcessor(images, tokenizer, **wrap)


def write_image(path, height: int = 56, width: int = 84, seed: int = 0):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def tiny_siglip_qwen(seed: int = 0):
    """Modality shift: a tiny SigLIP (28 px, 4 patches) + projector + tiny Qwen2; 5 tokens per image with newline."""
    from transformers import SiglipVisionConfig

    from diffusionvl import VisionLanguageConfig, VisionLanguageModel

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_use_head=False)
    config = VisionLanguageConfig(vision_config=vision, text_config=FAMILIES["qwen2"](hidden_size=64, intermediate_size=128),
                                  image_token_id=IMAGE_ID)
    torch.manual_seed(seed)
    return VisionLanguageModel(config).eval()


def siglip_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def tiny_vit_qwen(seed: int = 0):
    """Modality shift with the Qwen2.5-VL ViT as encoder (its merger output, 48 wide, feeds the projector)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    from diffusionvl import VisionLanguageConfig, VisionLanguageModel

    vision = Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48,
                                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                    fullatt_block_indexes=[1])
    config = VisionLanguageConfig(vision_config=vision, text_config=FAMILIES["qwen2"](hidden_size=64, intermediate_size=128),
                                  image_token_id=IMAGE_ID)
    torch.manual_seed(seed)
    return VisionLanguageModel(config).eval()


def cli_error(capsys, *argv) -> str:
    """Run the command line, expect a user error (exit status 2, one `error:` line); return what it printed."""
    from diffusionvl import cli

    capsys.readouterr()  # drop what earlier steps printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(arg) for arg in argv])
    printed = capsys.readouterr().err
    assert exit_info.value.code == 2, printed
    assert printed.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in printed, printed
    return printed


@pytest.fixture(scope="module")
def probe_checkpoints(tmp_path_factory):
    """The tiny checkpoints and images of the probe tables (tests/probes.py), built once per test module."""
    from probes import build_checkpoints

    return build_checkpoints(tmp_path_factory.mktemp("checkpoints"), tmp_path_factory.getbasetemp() / "probe-images")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is several times faster than two fighting over a busy 2-core machine. Use it
    for a whole module with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def url():
    """A server with the default settings on a free localhost port, for one test module (its base URL). A module
    that needs other settings defines its own `url`."""
    from diffusionvl.serving.cli import build
    from diffusionvl.serving.config import ServerConfig
    from diffusionvl.serving.local import serving

    with serving(build(ServerConfig())) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    """The official openai client against `url`."""
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
