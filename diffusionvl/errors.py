"""The errors a user can cause and fix, in one small family.

Every message names the problem (the file, field, record or line) and a fix that works. They subclass
ValueError, so `except ValueError` keeps catching them; the `diffusionvl` command prints them as `error: ...`
and exits with status 2, without a traceback.
"""

import importlib


class DiffusionVLError(ValueError):
    """Something the user passed or pointed at is wrong; the message says what and how to fix it."""


class CheckpointLayoutError(DiffusionVLError):
    """A checkpoint folder does not hold what the loader expects (config, weights, tokenizer)."""


class UnsupportedModelError(DiffusionVLError):
    """The model cannot be turned into a block-diffusion model as it is loaded."""


class DataError(DiffusionVLError):
    """A training or evaluation data file is unreadable or malformed; the message names the file and line."""


class ImageError(DiffusionVLError):
    """An image cannot be used. `path` names the file; `reason` is a short key for counting skips
    ("missing", "undecodable", "too large", "aspect ratio")."""

    def __init__(self, message: str, path=None, reason: str = "undecodable"):
        super().__init__(message)
        self.path, self.reason = path, reason


class MissingImageError(ImageError, FileNotFoundError):
    """An image file that does not exist (also a FileNotFoundError)."""

    def __init__(self, message: str, path=None):
        super().__init__(message, path, "missing")


class MissingExtraError(DiffusionVLError, ImportError):
    """A feature's optional dependency is not installed; the message names the extra that installs it. Also an
    ImportError, which is what it replaces."""


def require_extra(extra: str, feature: str, *modules: str, also: str = "") -> None:
    """Raise MissingExtraError, naming `pip install 'diffusionvl[extra]'` (and `also`, a further command),
    unless every module imports."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        more = f" && {also}" if also else ""
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}: pip install 'diffusionvl[{extra}]'{more}.")
