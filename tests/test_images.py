import io

import numpy as np
import pytest
from PIL import Image

from utils.images import UNSUPPORTED_EXTENSIONS, ImageLoadError, center_crop_box, find_images, load_image


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


def bomb_png(width, height):
    """A PNG whose header claims width x height pixels over a few bytes of data (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_with_the_configured_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(60000, 60000))
    with pytest.raises(ImageLoadError, match=r"bomb.png: 60000x60000 = 3,600,000,000 pixels is over the limit of "
                                             r"64,000,000 pixels"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="over the limit of 5,000,000 pixels"):
        load_image(path, max_pixels=5_000_000)


def test_a_limit_above_pillows_own_is_honoured():
    picture = encoded(Image.new("L", (14000, 14000)))  # 196 MP: Pillow alone would refuse it
    assert load_image(picture, max_pixels=200_000_000).size == (14000, 14000)


def test_an_empty_file_says_so(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.jpg: the file is empty"):
        load_image(tmp_path / "empty.jpg")


def test_phone_formats_are_read(tmp_path):
    red = Image.new("RGB", (40, 30), (200, 30, 30))
    for fmt, name in (("HEIF", "phone.heic"), ("AVIF", "modern.avif")):
        red.save(tmp_path / name, format=fmt)
        loaded = load_image(tmp_path / name)
        assert loaded.size == (40, 30) and abs(int(np.asarray(loaded)[15, 20, 0]) - 200) < 12


def test_formats_it_cannot_read_are_named(tmp_path):
    (tmp_path / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "raw.dng").write_bytes(b"II*\x00" + b"\x00" * 64)
    for name in ("logo.svg", "raw.dng"):
        with pytest.raises(ImageLoadError, match=rf"{name}: unsupported image format \(\.\w+\); convert it"):
            load_image(tmp_path / name)
    assert [p.name for p in find_images(tmp_path, UNSUPPORTED_EXTENSIONS)] == ["logo.svg", "raw.dng"]
    assert find_images(tmp_path) == []
