"""The one safe way in for images: any source, any mode -> an upright RGB PIL image, or ImageLoadError.

The pixel limit is ours (checked from the header, before decoding), so Pillow's own decompression-bomb
limit is switched off: a user's --max-image-mb decides, and messages quote it. HEIC/HEIF (phones) are read
through pillow-heif, AVIF by Pillow itself.
"""
import io
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger is almost surely a decompression bomb
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".heic",
                    ".heif", ".jp2", ".pgm", ".ppm", ".pnm", ".pbm", ".tga", ".qoi")
# Image files this loader cannot read: listed as failed with the reason, never skipped unseen.
UNSUPPORTED_EXTENSIONS = (".svg", ".svgz", ".jxl", ".psd", ".eps", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                          ".orf", ".rw2", ".raf", ".srw", ".pef", ".x3f")

pillow_heif.register_heif_opener()
Image.MAX_IMAGE_PIXELS = None  # load_image enforces max_pixels itself, before decoding


class ImageLoadError(ValueError):
    """Raised for anything that is not a readable image within the limits."""


def load_image(source, *, max_pixels=DEFAULT_MAX_PIXELS, bgr=False, draft_size=0):
    """Path, bytes, PIL image or numpy array (HxW, HxWx3, HxWx4; BGR if `bgr`) -> RGB PIL image.

    `draft_size`: a JPEG may decode at a reduced DCT scale whose sides stay >= draft_size, ~2x cheaper when
    the image is resized down to that size anyway (CLIP's input)."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, bgr)
    elif isinstance(source, (bytes, bytearray)):
        image = _open(io.BytesIO(source), "<bytes>", max_pixels, draft_size)
    elif isinstance(source, (str, Path)):
        image = _open(_readable_file(source), str(source), max_pixels, draft_size)
    else:
        raise ImageLoadError(f"cannot read an image from {type(source).__name__}")
    _check_size(image, max_pixels, getattr(image, "filename", "") or "image")
    return _to_rgb(ImageOps.exif_transpose(image))


def _readable_file(source):
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"{source}: no such file")
    if path.suffix.lower() in UNSUPPORTED_EXTENSIONS:
        raise ImageLoadError(f"{source}: unsupported image format ({path.suffix.lower()}); convert it to PNG or JPEG")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{source}: the file is empty")
    return path


def _open(fp, name, max_pixels, draft_size=0):
    try:
        image = Image.open(fp)
        _check_size(image, max_pixels, name)  # before decoding a single pixel
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{name}: not a readable image ({_reason(error, name)})") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageLoadError(f"{name}: corrupt or truncated image ({_reason(error, name)})") from error
    return image


def _reason(error, name):
    """Pillow's message without the file name it repeats."""
    return str(error).replace(f" '{name}'", "").replace(name, "the file") or type(error).__name__


def _check_size(image, max_pixels, name):
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of "
                             f"{max_pixels:,} pixels")
    if width == 0 or height == 0:
        raise ImageLoadError(f"{name}: empty image")


def _from_array(array, bgr):
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"array of shape {array.shape} is not an image")
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    if bgr and array.ndim == 3:
        array = array[:, :, [2, 1, 0] + ([3] if array.shape[2] == 4 else [])]
    return Image.fromarray(np.ascontiguousarray(array))


def _to_uint8(array):
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    else:  # 16-bit sources keep their full range
        top = 65535.0 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255.0
    return (np.clip(array / top, 0, 1) * 255 + 0.5).astype(np.uint8)


def _to_rgb(image):
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(image), False).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent -> white, as viewers show it
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def center_crop_box(width, height):
    """The square (left, top, right, bottom) of the original that resize-shortest-side + center-crop keeps."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def find_images(folder, extensions=IMAGE_EXTENSIONS):
    """Files under `folder` with one of `extensions`, recursively, sorted; hidden files and folders skipped.
    find_images(folder, UNSUPPORTED_EXTENSIONS) lists the image files that cannot be read."""
    folder = Path(folder)
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in extensions and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
