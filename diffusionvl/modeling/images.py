"""The one image loader of generation, evaluation, serving and training.

Whatever goes wrong with a file (missing, empty, not an image, truncated, a corrupt chunk, a decompression
bomb, an absurd aspect ratio) becomes one `ImageError` that names the file and carries a short `reason`, so
generation can report it and training can skip the record and count it by reason.
"""

import io
import warnings
from pathlib import Path

from PIL import Image

from ..errors import ImageError, MissingImageError

# Pillow's own limit: it warns above MAX_IMAGE_PIXELS (89 Mpx) and refuses twice that as a decompression bomb
# (e.g. a 20000 x 20000 PNG of a few MB). A 10000 x 10000 photo (100 Mpx, 300 MB as RGB) is large but real,
# and the image processor downscales it, so only Pillow's refusal threshold is used.
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
# Qwen's image processors refuse a longer side over 200x the shorter one; so does any patch-based encoder in
# practice, and the error then comes from deep inside the processor. Check it here, where the file is known.
MAX_ASPECT_RATIO = 200


def _open(source, name) -> Image.Image:
    """Decode fully now (Pillow decodes lazily), as RGB. Every Pillow failure is an ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # below MAX_PIXELS: accepted
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{image.width * image.height} pixels")
                return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"image {name} is too large: over {MAX_PIXELS:,} pixels, refused as a possible decompression bomb; "
            "downscale it.", name, "too large") from error
    except MemoryError as error:
        raise ImageError(f"image {name} does not fit in memory; downscale it.", name, "too large") from error
    # Pillow signals damage with many types: UnidentifiedImageError/OSError (not an image, truncated),
    # SyntaxError (a corrupt PNG chunk), ValueError/struct.error/EOFError (broken headers).
    except Image.UnidentifiedImageError as error:  # its text names the file object, e.g. <_io.BytesIO at 0x...>
        raise ImageError(f"image {name} cannot be decoded: it is not in an image format Pillow reads (PNG, JPEG, "
                         "WebP, GIF, BMP, ...); replace or drop it.", name) from error
    except Exception as error:  # noqa: BLE001
        raise ImageError(f"image {name} cannot be decoded ({type(error).__name__}: {error}); replace or drop it.",
                         name) from error


def check_image(image: Image.Image, name) -> Image.Image:
    """Refuse shapes no image processor can use; returns the image."""
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image {name} is empty ({image.width}x{image.height}).", name)
    ratio = max(image.width, image.height) / min(image.width, image.height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image {name} is {image.width}x{image.height}, an aspect ratio of {ratio:.0f}; the limit is "
            f"{MAX_ASPECT_RATIO}. Crop or pad it.", name, "aspect ratio")
    return image


def load_image(source) -> Image.Image:
    """An RGB image from a path, raw bytes or a PIL image. Raises ImageError (MissingImageError for a missing
    file) naming the file."""
    if isinstance(source, Image.Image):
        return check_image(source.convert("RGB"), "given as a PIL image")
    if isinstance(source, (bytes, bytearray)):
        return check_image(_open(io.BytesIO(source), "given as bytes"), "given as bytes")
    path = Path(source)
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "not found"
        raise MissingImageError(
            f"image file {what}: {path}; check the path (and the image folder it is joined to).", path)
    if path.stat().st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes); replace or drop it.", path)
    return check_image(_open(path, path), path)
