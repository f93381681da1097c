"""The scorer interface: batched scoring with a background pool that decodes images."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fergi._errors import FergiError
from fergi.scorers._images import load_image, preprocess

logger = logging.getLogger(__name__)


#: Bumped whenever fergi's computation of a score changes (text cleaning, preprocessing),
#: so that scores cached by an older fergi are computed again. 2: ftfy text cleaning,
#: HPS v2's resize of the float tensor, fp32 by default.
COMPUTATION_VERSION = 2

PRECISIONS = ("fp32", "fp16")


def default_device(device=None):
    """``device`` as a ``torch.device``; CUDA when present unless told otherwise."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class Scorer:
    """A pre-trained image(-text) scorer: ``score(images, prompts) -> (N,) float64``.

    Subclasses set ``image_size`` and ``preprocess_mode`` and implement
    ``_score_batch(pixels, prompts)``. Create them with :func:`fergi.scorers.create_scorer`.

    Attributes
    ----------
    name : str
        Registry name (``"clip"``, ...).
    spec : ScorerSpec
        The registry entry (release column, preprocessing, reference).
    weights_fingerprint : str
        Hash of the weights (and tokenizer) files.
    fingerprint : str
        Each cached score's key: the weights' hash, the precision (and HPS v2's
        ``antialias`` when off) and fergi's computation version
        (:data:`COMPUTATION_VERSION`), so fp16 and fp32 scores never stand in for each
        other.
    precision : {"fp32", "fp16"}
        The model's dtype.
    device : torch.device
    batch_size : int
    num_workers : int
        Threads that decode and preprocess images while the model runs.
    """

    image_size: int = 224
    preprocess_mode: str = "crop"
    #: ``pad`` mode (HPS v2) only: antialias the tensor resize as torchvision >= 0.17 does.
    antialias: bool = True

    def __init__(self, *, device=None, batch_size: int = 16, num_workers: int | None = None,
                 precision: str = "fp32"):
        import torch

        if batch_size < 1:
            raise FergiError(f"batch_size: must be at least 1 (got {batch_size})")
        if precision not in PRECISIONS:
            raise FergiError(f"--precision {precision!r}: expected fp32 or fp16")
        self.device = default_device(device)
        # float32 on every device unless asked: ImageReward, BLIP score and PickScore run
        # in fp32 everywhere, and PickScore's x100 scale turns fp16 rounding into visible
        # differences. (The ImageReward benchmark's CLIP score and aesthetic load OpenAI's
        # fp16 weights on CUDA and hpsv2 runs under autocast: --precision fp16 is closer
        # to those runs, not equal to them.)
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16" and self.device.type == "cpu":
            logger.warning("fp16 on the CPU is slow; fp32 is the default")
        self.batch_size = int(batch_size)
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.weights_fingerprint = ""

    @property
    def fingerprint(self) -> str:
        """The cache key of this scorer's numbers: weights hash, precision, computation version."""
        options = "-noaa" if self.preprocess_mode == "pad" and not self.antialias else ""
        return f"{self.weights_fingerprint}-{self.precision}{options}-c{COMPUTATION_VERSION}"

    # -- to implement -------------------------------------------------------------
    def _score_batch(self, pixels, prompts: list[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public -------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """``(3, S, S)`` float32 model input of one image (a path or a PIL image)."""
        return preprocess(load_image(image, convert=False), self.image_size, self.preprocess_mode,
                          antialias=self.antialias)

    def score(self, images: Sequence, prompts: Sequence[str] | str) -> np.ndarray:
        """Score each image against its prompt.

        Parameters
        ----------
        images : sequence of path or PIL.Image.Image
        prompts : sequence of str, or one str for all images
            Ignored by prompt-free scorers (``aesthetic``). Prompts longer than the
            text encoder's context are truncated.

        Returns
        -------
        numpy.ndarray
            ``(len(images),)`` float64 scores, in the reference's units.

        Raises
        ------
        fergi.FergiError
            An image cannot be read (the message names it), or the lengths differ.
        """
        return np.concatenate([s for _, s in self.iter_batches(images, prompts)] or [np.zeros(0)])

    def iter_batches(self, images: Sequence, prompts: Sequence[str] | str
                     ) -> Iterator[tuple[range, np.ndarray]]:
        """Yield ``(positions, scores)`` batch by batch (for progress bars and caches).

        Images are decoded and preprocessed by a thread pool up to two batches ahead
        of the model, so decoding overlaps inference without holding every image in
        memory.
        """
        import torch

        images = list(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        prompts = ["" if p is None else str(p) for p in prompts]
        if len(prompts) != len(images):
            raise FergiError(f"{len(images)} images but {len(prompts)} prompts")
        n, bs = len(images), self.batch_size
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="fergi-score") as pool:
            pending: deque = deque()
            next_submit = 0

            def submit_until(limit):
                nonlocal next_submit
                while next_submit < min(limit, n):
                    pending.append(pool.submit(self.preprocess, images[next_submit]))
                    next_submit += 1

            for start in range(0, n, bs):
                stop = min(start + bs, n)
                submit_until(stop + 2 * bs)
                arrays = [pending.popleft().result() for _ in range(start, stop)]
                pixels = torch.from_numpy(np.stack(arrays)).to(self.device, self.dtype)
                with torch.inference_mode():
                    out = self._score_batch(pixels, prompts[start:stop])
                yield range(start, stop), out.detach().float().cpu().numpy().astype(np.float64).reshape(-1)
