"""Image decoding and the reference preprocessing of each scorer, in PIL, NumPy and torch.

The scorers' reference implementations preprocess with torchvision transforms on PIL
images (CLIP, ImageReward, BLIP), with Hugging Face's PIL image processor (PickScore),
or with torchvision transforms on the float tensor (HPS v2: hpsv2's copy of OpenCLIP
converts to a tensor *before* resizing). torchvision's resize and crop on a PIL image
are PIL operations, and on a tensor ``torch.nn.functional.interpolate``, so they are
reproduced here with PIL and torch alone: fergi needs no torchvision (whose PyPI
wheels do not load with the CPU build of torch that fergi pins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fergi._errors import FergiError

#: OpenAI CLIP's normalisation, shared by all six scorers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(image, convert: bool = True) -> Image.Image:
    """Open ``image`` (a path or a PIL image) fully decoded, in RGB.

    ``convert=False`` keeps the file's mode (RGBA, P, L...): the torchvision references
    resize in that mode and convert to RGB after cropping, and :func:`preprocess`
    follows each one's order.

    Raises
    ------
    fergi.FergiError
        The file is missing, truncated or not an image; the message names it.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if convert else image
    path = Path(image)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB") if convert else img.copy()
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


def resize_longest_pad(img: Image.Image, size: int, antialias: bool = True) -> np.ndarray:
    """HPS v2's preprocessing: ``(3, size, size)`` float32, normalised.

    hpsv2 builds OpenCLIP's ``image_transform(224, is_train=False,
    resize_longest_max=True)`` (``light_augmentation=True``): in its copy of OpenCLIP
    the order is ``ToTensor`` first, then ``ResizeMaxSize`` on the float tensor, then
    ``Normalize`` (today's OpenCLIP resizes the PIL image instead). So:

    1. RGB to float in [0, 1] (``ToTensor``: ``uint8 / 255``);
    2. the longer side to ``size``, the other to ``round(dim * size / max(h, w))``
       (Python's round, half to even), bicubic on the float tensor: torchvision's
       ``resize`` of a tensor is ``interpolate(mode="bicubic", align_corners=False,
       antialias=...)`` with no rounding or clamping, so values may leave [0, 1];
    3. zero padding (black, before normalisation) to a square: ``pad // 2`` before,
       the rest after;
    4. CLIP mean/std.

    ``antialias``: torchvision 0.17 (January 2024) and later antialias tensor
    resizes by default (what installing hpsv2 gives today); torchvision up to 0.16
    did not. hpsv2 does not pin torchvision, so which one a given HPS number used
    depends on the machine; ``antialias=False`` gives the older behaviour.

    Quirks of the reference not reproduced: an image whose longer side is already
    ``size`` is neither resized nor padded there (``scale == 1``), so a non-square one
    fails in the model; fergi pads it. hpsv2 keeps RGBA images as 4 channels (which
    the model cannot take); fergi drops the alpha channel (``load_image``).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    x = x.permute(2, 0, 1).to(torch.float32).div(255)
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                          antialias=antialias)[0]
        h, w = new_h, new_w
    if (h, w) != (size, size):
        pad_h, pad_w = size - h, size - w
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return np.ascontiguousarray(((x - mean) / std).numpy())


def to_normalized_array(img: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """``(3, H, W)`` float32: ``ToTensor`` (divide by 255) then ``Normalize(mean, std)``."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, size: int, mode: str, *, antialias: bool = True) -> np.ndarray:
    """One scorer's full image preprocessing, in its reference's order.

    Parameters
    ----------
    img : PIL.Image.Image
        The decoded image in its own mode (:func:`load_image` with ``convert=False``).
    size : int
        The model's input side.
    mode : {"crop", "crop-hf", "pad"}
        ``crop``: shorter side to ``size`` (bicubic), centre crop, then RGB, as
        torchvision's ``Resize, CenterCrop, _convert_image_to_rgb, ToTensor,
        Normalize`` on a PIL image (openai/CLIP, ImageReward, BLIP);
        ``crop-hf``: RGB first, then the same with Hugging Face's crop offset
        (PickScore's ``CLIPProcessor``);
        ``pad``: HPS v2's tensor pipeline (:func:`resize_longest_pad`).
    antialias : bool
        ``pad`` only: antialias the tensor resize (torchvision >= 0.17).
    """
    if mode == "pad":
        return resize_longest_pad(img, size, antialias=antialias)
    if mode == "crop-hf":
        img = center_crop(resize_shortest(img.convert("RGB"), size), size, rounding="hf")
    elif mode == "crop":
        # Resized and cropped in the file's own mode, converted after (palette images
        # are resized with nearest neighbours and RGBA with premultiplied alpha, as PIL
        # does for the reference).
        img = center_crop(resize_shortest(img, size), size).convert("RGB")
    else:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    return to_normalized_array(img)
