"""The ``diffusers`` image generator: Stable Diffusion through Hugging Face ``diffusers``
(v1.4 by default, as in the paper), seeded, its safety checker's black images flagged."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from fergi._errors import FergiError
from fergi.study.content._generators import (
    DEFAULT_SD_MODEL,
    GeneratedImage,
    GeneratorSpec,
    OnImage,
    _check_request,
    _resolve_seed,
    is_black_image,
    register_generator,
)

logger = logging.getLogger(__name__)


def _import_diffusers():
    # deferred: diffusers and torch are optional (fergi[generate]) and slow to import
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise FergiError(
            f"the 'diffusers' generator needs diffusers and transformers ({exc}); "
            "install them with: pip install 'fergi[generate]'"
        ) from None
    return diffusers, torch


class DiffusersGenerator:
    """Stable Diffusion through Hugging Face ``diffusers``.

    Parameters
    ----------
    model : str or Path
        A Hub model id (default ``CompVis/stable-diffusion-v1-4``, the paper's model)
        or a local folder saved with ``save_pretrained``.
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype : str
        ``"auto"`` (float16 on CUDA, float32 otherwise), ``"float16"``, ``"float32"``
        or ``"bfloat16"``.
    steps : int
        Denoising steps (50, SD's default).
    guidance_scale : float
        Classifier-free guidance (7.5, SD's default).
    width, height : int, optional
        Image size (default: the model's, 512 for SD v1.4).
    safety_checker : bool
        Keep SD's safety checker (default, as in the paper). Its all-black outputs
        are flagged ``invalid``.
    regenerate_invalid : int
        How many times to retry an invalid image with a new seed (default 0: keep
        it, flagged, like the paper). Rejected seeds are listed in ``meta``.
    local_files_only : bool
        Never contact the Hugging Face Hub (default: False, the model is downloaded
        and cached on first use when there is network).
    pipeline : diffusers.DiffusionPipeline, optional
        An already-built pipeline to use instead of loading ``model``.

    Notes
    -----
    The pipeline is loaded on the first :meth:`generate` (or :meth:`load`), so that
    creating the generator is cheap; calls are serialised by a lock, since a
    pipeline is not thread-safe.
    """

    name = "diffusers"

    def __init__(
        self,
        *,
        model: str | Path = DEFAULT_SD_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        steps: int = 50,
        guidance_scale: float = 7.5,
        width: int | None = None,
        height: int | None = None,
        safety_checker: bool = True,
        regenerate_invalid: int = 0,
        local_files_only: bool = False,
        pipeline: Any = None,
    ):
        self._diffusers, self._torch = _import_diffusers()
        self.model = str(model)
        if not isinstance(steps, int) or steps < 1:
            raise FergiError(
                f"diffusers generator: steps must be a positive integer, got {steps!r}"
            )
        if not isinstance(regenerate_invalid, int) or regenerate_invalid < 0:
            raise FergiError(
                f"diffusers generator: regenerate_invalid must be >= 0, got {regenerate_invalid!r}"
            )
        if dtype not in ("auto", "float16", "float32", "bfloat16"):
            raise FergiError(f"diffusers generator: unknown dtype {dtype!r}")
        self.device = self._resolve_device(device)
        self.dtype = (
            dtype
            if dtype != "auto"
            else ("float16" if self.device.startswith("cuda") else "float32")
        )
        self.steps = steps
        self.guidance_scale = float(guidance_scale)
        self.width = width
        self.height = height
        self.safety_checker = bool(safety_checker)
        self.regenerate_invalid = regenerate_invalid
        self.local_files_only = bool(local_files_only)
        self._pipeline = pipeline
        if pipeline is not None:
            self.model = str(
                getattr(getattr(pipeline, "config", None), "_name_or_path", "") or "pipeline"
            )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiffusersGenerator(model={self.model!r}, device={self.device!r})"

    def _resolve_device(self, device: str) -> str:
        torch = self._torch
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FergiError(
                f"diffusers generator: device {device!r} requested but CUDA is not available"
            )
        if not (device == "cpu" or device.startswith(("cuda", "mps"))):
            raise FergiError(
                f"diffusers generator: unknown device {device!r} (cpu, cuda, cuda:N, mps, auto)"
            )
        return device

    def load(self):
        """Load the pipeline now (it is otherwise loaded on the first request).

        Raises
        ------
        fergi.FergiError
            The model cannot be found locally or downloaded, or fails to load.
        """
        with self._lock:
            return self._load_locked()

    def _load_locked(self):
        if self._pipeline is not None:
            return self._pipeline
        torch = self._torch
        path = Path(self.model).expanduser()
        is_local = path.exists()
        if not is_local and (self.model.startswith((".", "/", "~")) or self.model.count("/") > 1):
            raise FergiError(f"{self.model}: Stable Diffusion model folder does not exist")
        kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, self.dtype)}
        if not self.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works in all
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipeline = self._diffusers.DiffusionPipeline.from_pretrained(
                    str(path) if is_local else self.model,
                    local_files_only=self.local_files_only,
                    **kwargs,
                )
            pipeline = pipeline.to(self.device)
        except Exception as exc:  # hub, file-system and format errors all mean "cannot load"
            hint = (
                ""
                if is_local
                else " (offline? download it once with network, or pass a local folder as the model)"
            )
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FergiError(
                f"{self.model}: cannot load the Stable Diffusion model: {message}{hint}"
            ) from None
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        logger.info(
            "loaded %s on %s (%s) in %.1f s",
            self.model,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )
        self._pipeline = pipeline
        return pipeline

    def _run(self, pipeline, prompt: str, seed: int) -> tuple[Image.Image, bool | None]:
        torch = self._torch
        generator_device = "cpu" if self.device.startswith("mps") else self.device
        generator = torch.Generator(device=generator_device).manual_seed(seed)
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "generator": generator,
            "output_type": "pil",
        }
        if self.width:
            kwargs["width"] = self.width
        if self.height:
            kwargs["height"] = self.height
        with torch.inference_mode():
            output = pipeline(prompt, **kwargs)
        image = output.images[0]
        flags = getattr(output, "nsfw_content_detected", None)
        flag = None if flags is None else bool(flags[0])
        return image.convert("RGB"), flag

    def generate(
        self, prompt: str, n: int = 5, *, seed: int | None = None, on_image: OnImage | None = None
    ) -> list[GeneratedImage]:
        """Generate ``n`` images for ``prompt``; image ``i`` uses seed ``seed + i``.

        An invalid (all-black) image is retried up to ``regenerate_invalid`` times
        with seeds ``seed + n``, ``seed + n + 1``, ... (shared by the request, so
        the result is reproducible from ``seed``).

        Parameters
        ----------
        prompt : str
        n : int
        seed : int, optional
            Base seed (random and recorded when omitted).
        on_image : callable, optional
            Called as ``on_image(index, generated)`` as soon as each image is ready,
            so a study can show progress or store the image early.

        Returns
        -------
        list of GeneratedImage
        """
        _check_request(prompt, n)
        base = _resolve_seed(seed)
        images = []
        next_retry_seed = base + n
        with self._lock:
            pipeline = self._load_locked()
            for index in range(n):
                image_seed = base + index
                rejected: list[int] = []
                started = time.perf_counter()
                while True:
                    try:
                        image, flag = self._run(pipeline, prompt, image_seed)
                    except Exception as exc:
                        raise FergiError(
                            f"{self.model}: image generation failed for image {index + 1}: {exc}"
                        ) from exc
                    invalid = is_black_image(image) or bool(flag)
                    if not invalid or len(rejected) >= self.regenerate_invalid:
                        break
                    logger.info(
                        "image %d (seed %d) came out black; regenerating with seed %d",
                        index + 1,
                        image_seed,
                        next_retry_seed,
                    )
                    rejected.append(image_seed)
                    image_seed = next_retry_seed
                    next_retry_seed += 1
                generated = GeneratedImage(
                    image,
                    image_seed,
                    invalid,
                    {
                        "generator": self.name,
                        "model": self.model,
                        "prompt": prompt,
                        "index": index,
                        "seed": image_seed,
                        "rejected_seeds": rejected,
                        "nsfw_flag": flag,
                        "steps": self.steps,
                        "guidance_scale": self.guidance_scale,
                        "width": image.width,
                        "height": image.height,
                        "device": self.device,
                        "dtype": self.dtype,
                        "seconds": round(time.perf_counter() - started, 3),
                        "diffusers_version": getattr(self._diffusers, "__version__", None),
                    },
                )
                if invalid:
                    logger.warning(
                        "image %d for prompt %r is all black (invalid)", index + 1, prompt
                    )
                images.append(generated)
                if on_image is not None:
                    on_image(index, generated)
        return images


register_generator(GeneratorSpec("diffusers", DiffusersGenerator))
