"""Figure forms, RGB conversion of real palette/RGBA maps, smart_resize sizes, the content-addressed resize cache."""

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from qwen_vl_utils import smart_resize

from rewardmap.data.images import fit_image, image_tokens, load_image

SMALL = 200_000  # a small pixel budget keeps the tests fast


def expected_size(path, max_pixels=SMALL):
    with Image.open(path) as image:
        height, width = smart_resize(image.height, image.width, factor=28, min_pixels=3136, max_pixels=max_pixels)
    return width, height


def test_every_figure_form_gives_the_same_image(maps_root, tmp_path):
    path = maps_root / "america" / "miami.png"
    data = path.read_bytes()
    encoded = base64.b64encode(data).decode()
    forms = [
        "america/miami.png",  # relative to root
        str(path),  # absolute
        "data:image/png;base64," + encoded,
        encoded,  # raw base64
        {"bytes": data, "path": None},  # datasets.Image, decode=False
        {"bytes": None, "path": str(path)},
        Image.open(path),  # datasets.Image, decoded
    ]
    images = [load_image(form, root=maps_root, max_pixels=SMALL) for form in forms]
    reference = np.asarray(images[0])
    assert images[0].size == expected_size(path) and images[0].mode == "RGB"
    for image in images[1:]:
        assert np.array_equal(np.asarray(image), reference)


@pytest.mark.parametrize("size", [(1000, 800), (3000, 500), (40, 30)])
def test_image_tokens_come_from_the_header_in_every_figure_form(tmp_path, size):
    """What the trainer balances by: the visual tokens of the map fit_image makes, whatever form the figure takes."""
    image = Image.new("RGB", size, (255, 255, 255))
    path = tmp_path / "map.png"
    image.save(path)
    data = path.read_bytes()
    width, height = fit_image(image, max_pixels=SMALL).size
    forms = [path.name, str(path), data, "data:image/png;base64," + base64.b64encode(data).decode(), {"bytes": data}]
    for figure in [*forms, image]:
        assert image_tokens(figure, root=tmp_path, max_pixels=SMALL) == (width // 28) * (height // 28)


def test_missing_figure_names_the_path(maps_root):
    with pytest.raises(FileNotFoundError, match="no file at .*nowhere.png"):
        load_image("./nowhere.png", root=maps_root)


@pytest.mark.parametrize("name", ["america/new_york.png", "china/jinan.png", "norway/oslo.png"])
def test_palette_and_rgba_maps_become_rgb_of_smart_resize_size(maps_root, name):
    with Image.open(maps_root / name) as source:
        assert source.mode in ("P", "RGBA")
    image = load_image(name, root=maps_root, max_pixels=SMALL)
    assert image.mode == "RGB"
    assert image.size == expected_size(maps_root / name)
    assert image.width % 28 == 0 and image.height % 28 == 0 and image.width * image.height <= SMALL


def test_transparent_pixels_are_composited_on_white():
    rgba = Image.new("RGBA", (280, 280), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 140, 280))  # opaque blue left half
    image = fit_image(rgba, max_pixels=SMALL)
    assert image.getpixel((200, 100)) == (255, 255, 255)
    assert image.getpixel((50, 100)) == (0, 0, 255)


def test_small_image_is_upscaled_to_min_pixels():
    image = fit_image(Image.new("L", (20, 30), 128))
    assert image.mode == "RGB" and image.width * image.height >= 3136
    assert image.size == smart_resize(30, 20, factor=28, min_pixels=3136, max_pixels=12845056)[::-1]


def test_cache_hit_reuses_the_file_and_budget_changes_key(maps_root, tmp_path):
    cache = tmp_path / "cache"
    first = load_image("norway/oslo.png", root=maps_root, max_pixels=SMALL, cache_dir=cache)
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = load_image("norway/oslo.png", root=maps_root, max_pixels=SMALL, cache_dir=cache)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert sorted(cache.rglob("*.npy")) == files and files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temporary files
    load_image("norway/oslo.png", root=maps_root, max_pixels=2 * SMALL, cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 2


def test_cache_key_follows_content_not_path(maps_root, tmp_path):
    cache = tmp_path / "cache"
    copy = tmp_path / "map.png"
    shutil.copy(maps_root / "norway" / "oslo.png", copy)
    load_image(str(copy), root=tmp_path, max_pixels=SMALL, cache_dir=cache)
    load_image("norway/oslo.png", root=maps_root, max_pixels=SMALL, cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 1  # same bytes at two paths: one entry
    Image.new("RGB", (300, 300), "white").save(copy)  # new content at the same path: a new entry
    load_image(str(copy), root=tmp_path, max_pixels=SMALL, cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 2


def test_pixel_cap_refuses_larger_sources_and_is_restored(maps_root):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="larger than max_source_pixels=1,000,000"):
        load_image("norway/oslo.png", root=maps_root, max_source_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_jpeg_source_decodes(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1600), (10, 200, 30)).save(buffer, format="JPEG")
    image = load_image(buffer.getvalue(), root=tmp_path, max_pixels=SMALL)
    assert image.size == smart_resize(1600, 2000, factor=28, min_pixels=3136, max_pixels=SMALL)[::-1]
    assert abs(image.getpixel((10, 10))[1] - 200) < 8
