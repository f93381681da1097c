"""Image generators for the study, behind one interface (paper Sec. 3.2.2).

``create_generator(name, **options)`` returns an object with
``generate(prompt, n, *, seed) -> list[GeneratedImage]``:

``"diffusers"``
    Stable Diffusion (v1.4 by default, as in the paper) through Hugging Face
    ``diffusers``, on CPU or GPU, seeded. SD's safety checker replaces an image it
    considers inappropriate by an all-black one; such an image is flagged
    ``invalid`` (the paper excluded 53 of them) and can be regenerated with a new
    seed.
``"placeholder"``
    Deterministic pictures drawn from the prompt and seed, for demos and tests.
``"folder"``
    Pre-generated images read from a folder.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import secrets
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fergi._errors import FergiError
from fergi._registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "FolderGenerator",
    "GeneratedImage",
    "GeneratorSpec",
    "PlaceholderGenerator",
    "available_generators",
    "create_generator",
    "is_black_image",
    "register_generator",
]

DEFAULT_SD_MODEL = "CompVis/stable-diffusion-v1-4"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

OnImage = Callable[[int, "GeneratedImage"], None]


@dataclass
class GeneratedImage:
    """One generated image.

    Attributes
    ----------
    image : PIL.Image.Image
        RGB image.
    seed : int
        The seed that produced it (the one that was kept, after any regeneration).
    invalid : bool
        True for an all-black safety-checker output: keep it for the record, but
        exclude it from analysis (``preparation/invalid_images`` of an export).
    meta : dict
        JSON-serialisable provenance: generator, model, prompt, index, steps, ...
    """

    image: Image.Image
    seed: int
    invalid: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def is_black_image(image: Image.Image | np.ndarray, *, threshold: int = 0) -> bool:
    """Whether an image is all black (every channel of every pixel <= ``threshold``).

    This is what Stable Diffusion's safety checker outputs in place of an image it
    flags.
    """
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return bool(array.size) and int(array.max()) <= threshold


def _check_request(prompt: str, n: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise FergiError("image generation: the prompt is empty")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FergiError(
            f"image generation: number of images must be a positive integer, got {n!r}"
        )


def _resolve_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**62:
        raise FergiError(f"image generation: seed must be an integer from 0 to 2**62, got {seed!r}")
    return int(seed)


def _size(size: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else tuple(size)
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise FergiError(f"{what}: image size must be 16 to 4096 pixels, got {size!r}")
    return int(width), int(height)


# --------------------------------------------------------------------------- placeholder


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


class PlaceholderGenerator:
    """Deterministic placeholder pictures drawn from the prompt and seed.

    The same (prompt, seed, index) always gives the same picture, and the images of
    one request differ visibly (palette, shapes and layout come from a hash). The
    prompt is written on the picture.

    Parameters
    ----------
    size : int or (width, height)
        Image size in pixels (default 512, like SD v1.4).
    invalid_indices : sequence of int
        0-based indices of the request that come out all black and flagged invalid,
        to exercise the invalid-image path of a study without Stable Diffusion.
    """

    name = "placeholder"

    def __init__(self, *, size: int | tuple[int, int] = 512, invalid_indices=()):
        self.size = _size(size, "placeholder generator")
        self.invalid_indices = frozenset(int(i) for i in invalid_indices)

    def __repr__(self) -> str:
        return f"PlaceholderGenerator(size={self.size})"

    def _draw(self, prompt: str, seed: int, index: int) -> Image.Image:
        digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
        rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
        width, height = self.size
        hue = rng.uniform(0, 360)
        # two complementary-ish colours for a vertical gradient background
        top = np.array(_hsv(hue, 0.55, 0.95))
        bottom = np.array(_hsv((hue + rng.uniform(90, 180)) % 360, 0.7, 0.45))
        t = np.linspace(0.0, 1.0, height)[:, None, None]
        background = (top * (1 - t) + bottom * t).astype(np.uint8)
        image = Image.fromarray(np.broadcast_to(background, (height, width, 3)).copy())
        draw = ImageDraw.Draw(image, "RGBA")
        scale = min(width, height)
        for _ in range(int(rng.integers(5, 10))):
            colour = (*_hsv(rng.uniform(0, 360), rng.uniform(0.5, 1), rng.uniform(0.5, 1)), 200)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height * 0.8)
            r = rng.uniform(0.06, 0.22) * scale
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
            elif kind == 1:
                draw.rectangle((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=colour)
            else:
                angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
                points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
                draw.polygon(points, fill=colour)
        # the prompt in a translucent band, so a demo shows what was asked for
        font_size = max(10, scale // 26)
        font = _font(font_size)
        lines = textwrap.wrap(prompt, width=max(10, int(width / (font_size * 0.55))))[:4]
        band_top = height - (len(lines) + 1) * (font_size + 4) - 6
        draw.rectangle((0, band_top, width, height), fill=(0, 0, 0, 140))
        y = band_top + 6
        for line in lines:
            draw.text((10, y), line, fill=(255, 255, 255, 255), font=font)
            y += font_size + 4
        label = f"#{index + 1} seed {seed}"
        draw.text((10, y), label, fill=(255, 255, 160, 255), font=font)
        return image

    def generate(
        self, prompt: str, n: int = 5, *, seed: int | None = None, on_image: OnImage | None = None
    ) -> list[GeneratedImage]:
        """Draw ``n`` images for ``prompt``; image ``i`` uses seed ``seed + i``.

        Parameters
        ----------
        prompt : str
        n : int
        seed : int, optional
            Base seed (random and recorded when omitted).
        on_image : callable, optional
            Called as ``on_image(index, generated)`` as soon as each image is ready.

        Returns
        -------
        list of GeneratedImage
        """
        _check_request(prompt, n)
        base = _resolve_seed(seed)
        images = []
        for index in range(n):
            image_seed = base + index
            invalid = index in self.invalid_indices
            if invalid:
                image = Image.new("RGB", self.size, (0, 0, 0))
            else:
                image = self._draw(prompt, image_seed, index)
            generated = GeneratedImage(
                image,
                image_seed,
                invalid,
                {
                    "generator": self.name,
                    "prompt": prompt,
                    "index": index,
                    "seed": image_seed,
                    "width": self.size[0],
                    "height": self.size[1],
                },
            )
            images.append(generated)
            if on_image is not None:
                on_image(index, generated)
        return images


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


# --------------------------------------------------------------------------- folder


def prompt_folder_name(prompt: str) -> str:
    """The subfolder name the folder generator looks up for ``prompt``.

    Lower case, runs of anything but letters and digits replaced by ``-``, at most
    80 characters: ``"A cat, sleeping!"`` -> ``"a-cat-sleeping"``.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:80].rstrip("-")


class FolderGenerator:
    """Pre-generated images from a folder.

    For a prompt, the images are taken from the subfolder named
    :func:`prompt_folder_name(prompt) <prompt_folder_name>` when it exists (one
    folder of images per prompt), otherwise from the folder itself. Images are used
    in the order of their sorted file names; all-black images are flagged invalid.

    Parameters
    ----------
    path : str or Path
        The folder.
    per_prompt : bool or "auto"
        ``True``: require the per-prompt subfolder; ``False``: always use the folder
        itself; ``"auto"`` (default): the subfolder if it exists.
    """

    name = "folder"

    def __init__(self, path: str | Path, *, per_prompt: bool | str = "auto"):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FergiError(f"{self.path}: image folder does not exist")
        if per_prompt not in (True, False, "auto"):
            raise FergiError(
                f"folder generator: per_prompt must be true, false or 'auto', got {per_prompt!r}"
            )
        self.per_prompt = per_prompt

    def __repr__(self) -> str:
        return f"FolderGenerator({str(self.path)!r})"

    def _folder_for(self, prompt: str) -> Path:
        sub = self.path / prompt_folder_name(prompt)
        if self.per_prompt is True or (self.per_prompt == "auto" and sub.is_dir()):
            if not sub.is_dir():
                raise FergiError(f"{sub}: no image folder for prompt {prompt!r}")
            return sub
        return self.path

    def generate(
        self, prompt: str, n: int = 5, *, seed: int | None = None, on_image: OnImage | None = None
    ) -> list[GeneratedImage]:
        """The first ``n`` images (sorted by name) for ``prompt``.

        ``seed`` is recorded only (``0`` when omitted): the images already exist.

        Raises
        ------
        fergi.FergiError
            Fewer than ``n`` images, or a file that is not a readable image.
        """
        _check_request(prompt, n)
        folder = self._folder_for(prompt)
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if len(files) < n:
            raise FergiError(
                f"{folder}: {len(files)} image(s) found, {n} needed for prompt {prompt!r}"
            )
        base = 0 if seed is None else _resolve_seed(seed)
        images = []
        for index, file in enumerate(files[:n]):
            try:
                with Image.open(file) as opened:
                    image = opened.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise FergiError(f"{file}: not a readable image ({exc})") from None
            generated = GeneratedImage(
                image,
                base + index,
                is_black_image(image),
                {
                    "generator": self.name,
                    "prompt": prompt,
                    "index": index,
                    "seed": base + index,
                    "source_file": file.name,
                    "width": image.width,
                    "height": image.height,
                },
            )
            images.append(generated)
            if on_image is not None:
                on_image(index, generated)
        return images


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class GeneratorSpec:
    """A named image generator: ``factory(**options)`` builds it."""

    name: str
    factory: Callable[..., Any]


_REGISTRY: Registry[GeneratorSpec] = Registry("image generator", "--generator", sort=True)


def register_generator(spec: GeneratorSpec) -> None:
    """Add (or replace) an image generator that :func:`create_generator` can build."""
    _REGISTRY.register(spec)


def available_generators() -> list[str]:
    """Names accepted by :func:`create_generator`."""
    return _REGISTRY.names()


def create_generator(name: str, **options: Any):
    """Create an image generator by name.

    Parameters
    ----------
    name : {"placeholder", "diffusers", "folder"}
        See :class:`PlaceholderGenerator`, :class:`DiffusersGenerator` and
        :class:`FolderGenerator` for their options.
    **options
        Passed to the generator (e.g. ``model=``, ``device=``, ``steps=`` for
        ``"diffusers"``; ``path=`` for ``"folder"``).

    Returns
    -------
    object with ``generate(prompt, n, *, seed=None, on_image=None) -> list[GeneratedImage]``

    Raises
    ------
    fergi.FergiError
        Unknown name or option, or an unusable option value.

    Examples
    --------
    >>> gen = create_generator("placeholder", size=64)
    >>> [img.seed for img in gen.generate("a red bird", 3, seed=10)]
    [10, 11, 12]
    """
    if name not in _REGISTRY:
        raise FergiError(
            f"unknown image generator {name!r} (choose from {', '.join(available_generators())})"
        )
    cls = _REGISTRY.get(name).factory
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FergiError(
            f"{name} generator: unknown option(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(accepted)})"
        )
    if name == "folder" and "path" not in options:
        raise FergiError("folder generator: option 'path' (the image folder) is required")
    return cls(**options)


register_generator(GeneratorSpec("placeholder", PlaceholderGenerator))
register_generator(GeneratorSpec("folder", FolderGenerator))
