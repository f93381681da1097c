"""Image decoding and the reference preprocessing of each scorer, in PIL and NumPy.

The scorers' reference implementations preprocess with torchvision transforms on PIL
images (CLIP, ImageReward, HPS v2) or with Hugging Face's PIL image processor
(PickScore). torchvision's resize and crop on a PIL image are PIL operations, so they
are reproduced here with PIL alone: fergi needs no torchvision (whose PyPI wheels do
not load with the CPU build of torch that fergi pins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fergi._errors import FergiError

#: OpenAI CLIP's normalisation, shared by all six scorers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(image) -> Image.Image:
    """Open ``image`` (a path or a PIL image) fully decoded, in RGB.

    Raises
    ------
    fergi.FergiError
        The file is missing, truncated or not an image; the message names it.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise FergiError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FergiError(f"{path}: not a readable image ({exc})") from None


def resize_shortest(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is ``size`` (torchvision ``Resize(size)``).

    The longer side is ``int(size * long / short)``, truncated, as torchvision and
    Hugging Face both compute it.
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, Image.BICUBIC)


def center_crop(img: Image.Image, size: int, rounding: str = "torchvision") -> Image.Image:
    """Square centre crop; ``rounding`` picks whose offset convention to follow.

    torchvision rounds ``(h - size) / 2`` half to even; Hugging Face's image
    processors floor it. They differ by one pixel when the excess is odd.
    """
    w, h = img.size
    if rounding == "torchvision":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return img.crop((left, top, left + size, top + size))


def resize_longest_pad(img: Image.Image, size: int) -> Image.Image:
    """HPS v2's ``ResizeMaxSize``: longer side to ``size`` (bicubic), zero-pad to a square.

    The new size is ``round(dim * size / max(h, w))``; the padding puts
    ``pad // 2`` before and the rest after, filled with black before normalisation.
    """
    w, h = img.size
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        img = img.resize((new_w, new_h), Image.BICUBIC)
        w, h = new_w, new_h
    if (w, h) == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img, ((size - w) // 2, (size - h) // 2))
    return canvas


def to_normalized_array(img: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """``(3, H, W)`` float32: ``ToTensor`` (divide by 255) then ``Normalize(mean, std)``."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, size: int, mode: str) -> np.ndarray:
    """One scorer's full image preprocessing.

    Parameters
    ----------
    img : PIL.Image.Image
        RGB image.
    size : int
        The model's input side.
    mode : {"crop", "crop-hf", "pad"}
        ``crop``: shorter side to ``size``, centre crop (CLIP, ImageReward, BLIP);
        ``crop-hf``: the same with Hugging Face's crop offset (PickScore);
        ``pad``: longer side to ``size``, zero padding (HPS v2).
    """
    if mode == "pad":
        img = resize_longest_pad(img, size)
    else:
        img = center_crop(resize_shortest(img, size), size,
                          rounding="hf" if mode == "crop-hf" else "torchvision")
    return to_normalized_array(img)
