import io

import numpy as np
import pytest
from PIL import Image

from utils.images import ImageLoadError, center_crop_box, find_images, load_image


def encoded(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "1", "L", "F"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (20, 10), (200, 40, 10)).convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_sixteen_bit_file_keeps_its_range(tmp_path):
    array = np.full((8, 8), 65535, dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png")).min() == 255


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert load_image(encoded(image, "JPEG", exif=exif)).size == (10, 30)


def test_numpy_rgb_and_bgr():
    array = np.zeros((5, 6, 3), dtype=np.uint8)
    array[..., 0] = 255
    assert np.asarray(load_image(array))[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(load_image(array, bgr=True))[0, 0].tolist() == [0, 0, 255]
    assert load_image(np.random.rand(5, 6)).mode == "RGB"  # float grey in [0, 1]


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(path)


def test_truncated_jpeg_is_refused():
    data = encoded(Image.fromarray(np.random.randint(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_over_limit_image_is_refused_before_decoding():
    data = encoded(Image.new("RGB", (300, 300)))
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(data, max_pixels=10_000)


def test_missing_file_and_wrong_type():
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image("/nonexistent/photo.jpg")
    with pytest.raises(ImageLoadError):
        load_image(42)


def test_center_crop_box():
    assert center_crop_box(300, 200) == (50, 0, 250, 200)
    assert center_crop_box(200, 301) == (0, 50, 200, 250)
    assert center_crop_box(64, 64) == (0, 0, 64, 64)


def test_find_images_skips_hidden_and_non_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["a/x.jpg", "a/b/y.PNG", ".hidden/z.jpg", "a/.w.jpg", "a/readme.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a/b/y.PNG", "a/x.jpg"]
