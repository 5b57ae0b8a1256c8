"""Row figures to model-ready RGB images: decode any figure form, fit the Qwen2.5-VL pixel budget, cache on disk."""

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rewardmap.data.schema import embedded_bytes, resolve_path
from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2 x 2
MIN_PIXELS = 3136
MAX_PIXELS = 12845056  # 16,384 visual tokens: the processor's own cap, used by the recipe
MAX_SOURCE_PIXELS = 300_000_000  # the largest real map is 278M pixels; PIL's default refuses ~179M
_CACHE_VERSION = "rgb-white-bicubic-v1"  # bump when the conversion below changes: old cache entries stop matching


@contextlib.contextmanager
def _pixel_cap(cap: int) -> Iterator[None]:
    """PIL's decompression-bomb limit set to `cap` (not unlimited) for one open, then restored."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def figure_source(figure: Any, root: str | Path) -> Path | bytes | Image.Image:
    """Where a row's `figure` lives: a file path, encoded image bytes, or an already decoded PIL image.

    Accepts a path (relative to `root` or absolute), a data URI, raw base64, image bytes, a `datasets.Image`
    value (`{"bytes", "path"}` dict or PIL image).
    """
    if isinstance(figure, Image.Image | bytes | Path):
        return figure
    if isinstance(figure, Mapping):
        if figure.get("bytes"):
            return figure["bytes"]
        figure = figure.get("path")
    if not isinstance(figure, str) or not figure.strip():
        raise InputError(f"figure must be a path, data URI, base64 string or image; got {figure!r}")
    data = embedded_bytes(figure)
    if data is not None:
        return data
    path = resolve_path(figure, Path(root))
    if not path.is_file():
        raise FileNotFoundError(f"figure {figure!r}: no file at {path}; pass the folder that holds the maps as root")
    return path


def fit_image(image: Image.Image, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`image` as RGB (transparency composited on white), resized to Qwen2.5-VL's `smart_resize` size."""
    from qwen_vl_utils import smart_resize  # imported here: it pulls in torch, which the SFT export does not need

    height, width = smart_resize(
        image.height, image.width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )
    image.draft("RGB", (width, height))  # a not yet loaded JPEG decodes at 1/2..1/8 scale; no-op otherwise
    if image.mode == "P":  # palette images cannot be resampled; expand them (keeping transparency) first
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if image.size != (width, height):
        # reducing_gap lets PIL box-reduce by an integer factor first: fast and memory-light on huge maps.
        image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def image_tokens(
    figure: Any,
    *,
    root: str | Path,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> int:
    """The visual tokens a row's figure becomes, ceil(w / 28) * ceil(h / 28) at its `smart_resize` size, read from the
    image's header alone (no pixels decoded)."""
    from qwen_vl_utils import smart_resize

    source = figure_source(figure, root)
    if isinstance(source, Image.Image):
        size = source.size
    else:
        label = str(source) if isinstance(source, Path) else f"<{len(source)} embedded bytes>"
        with _open(source, label, max_source_pixels) as image:
            size = image.size
    height, width = smart_resize(size[1], size[0], factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return -(-height // FACTOR) * -(-width // FACTOR)


def _open(source: Path | bytes, label: str, max_source_pixels: int) -> Image.Image:
    """Open `source` lazily (pixels are read by `fit_image`), refusing more than `max_source_pixels` pixels."""
    with _pixel_cap(max_source_pixels):
        try:
            image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise InputError(
                f"figure {label}: larger than max_source_pixels={max_source_pixels:,} ({err}); "
                "raise data.max_source_pixels if the image is trusted"
            ) from err
    return image


def _cache_path(cache_dir: Path, data: bytes, min_pixels: int, max_pixels: int) -> Path:
    """Content-addressed cache file: the key covers the source bytes, the pixel budget and the conversion."""
    digest = hashlib.sha256(data)
    digest.update(f"|{min_pixels}|{max_pixels}|{FACTOR}|{_CACHE_VERSION}".encode())
    key = digest.hexdigest()
    return cache_dir / key[:2] / f"{key}.npy"


def _write_atomic(image: Image.Image, path: Path) -> None:
    """Write `image` as a (H, W, 3) uint8 .npy via a temp file and rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.asarray(image), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_image(
    figure: Any,
    *,
    root: str | Path,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    cache_dir: str | Path | None = None,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> Image.Image:
    """A row's figure as a model-ready RGB image of `smart_resize` size (see `figure_source` for the forms).

    With `cache_dir`, the resized image is stored under a key of the source content and the pixel budget, so later
    calls (the next epoch) read the resized pixels (.npy, H x W x 3 bytes) and never decode the full map again.
    """
    source = figure_source(figure, root)
    if isinstance(source, Image.Image):
        return fit_image(source, min_pixels=min_pixels, max_pixels=max_pixels)
    label = str(source) if isinstance(source, Path) else f"<{len(source)} embedded bytes>"
    cached = None
    if cache_dir is not None:
        data = source.read_bytes() if isinstance(source, Path) else source
        cached = _cache_path(Path(cache_dir), data, min_pixels, max_pixels)
        if cached.is_file():
            return read_cached_image(cached)
    image = fit_image(_open(source, label, max_source_pixels), min_pixels=min_pixels, max_pixels=max_pixels)
    if cached is not None:
        _write_atomic(image, cached)
    return image


def read_cached_image(path: Path) -> Image.Image:
    """A resized image as `load_image` caches it (.npy, H x W x 3 bytes), without decoding a PNG."""
    # The pixels are copied from the (page-cached) file straight into an in-memory image.
    pixels = np.load(path, mmap_mode="r", allow_pickle=False)
    return Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)


def image_file(
    figure: Any, *, root: str | Path, min_pixels: int, max_pixels: int, cache_dir: str | Path | None
) -> Path | None:
    """The file that shows a row's map as the model saw it: its resized copy in `cache_dir` (where `load_image` puts
    it, whether or not it is there yet), else the source file; None for an embedded figure without a cache."""
    source = figure_source(figure, root)
    if isinstance(source, Image.Image):
        return None
    if cache_dir is None:
        return source if isinstance(source, Path) else None
    data = source.read_bytes() if isinstance(source, Path) else source
    return _cache_path(Path(cache_dir), data, min_pixels, max_pixels)
