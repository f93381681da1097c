"""Small synthetic DISFA and DISFA+ trees with known AU12 and AU4 intensities.

For tests, benchmarks and a first try of ``fergi train-au`` without the real data.
Each subject is a visibly different variant of the astronaut photograph
(``skimage.data.astronaut``: mirrored, grey, colour-swapped, darker, low contrast,
sepia), warped by :func:`fergi.face.synthesize_expression` into a smile (AU12) and a
frown (AU4) of integer intensity 0-5 (``smile = AU12 / 5``, ``frown = AU4 / 5``);
every frame is shifted and scaled a little, as a head moves. The other 10 AUs are
labelled 0. The label files use the real formats read by
:class:`~fergi.au.train.DisfaReader` and :class:`~fergi.au.train.DisfaPlusReader`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fergi.au.train._datasets import DISFA_AUS
from fergi.face import detect_landmarks, synthesize_expression
from fergi.video import write_video

_FRAME = 240  # side of the synthetic frames in pixels


def _variants() -> list[np.ndarray]:
    from skimage import data

    # Face with some hair and shoulders, about 100 px wide.
    base = data.astronaut()[20:250, 110:340].astype(np.float32)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2)
    sepia = grey * np.array([1.07, 0.95, 0.78], np.float32)
    out = [
        base,
        base[:, ::-1],
        grey,
        base[..., ::-1],  # blue-tinted skin
        255.0 * (base / 255.0) ** 1.6 * np.array([1.0, 0.9, 0.8], np.float32),
        (base - 128.0) * 0.6 + 140.0,
        sepia[:, ::-1],
        np.clip(base * 1.25 + 10, 0, 255)[:, ::-1],
    ]
    return [np.ascontiguousarray(np.clip(v, 0, 255).astype(np.uint8)) for v in out]


class _Subject:
    def __init__(self, image: np.ndarray):
        self.image = image
        self.landmarks = detect_landmarks(image)
        self._faces: dict = {}

    def face(self, au12: int, au4: int) -> np.ndarray:
        key = (au12, au4)
        if key not in self._faces:
            self._faces[key] = synthesize_expression(
                self.image, smile=au12 / 5, frown=au4 / 5, landmarks=self.landmarks
            )
        return self._faces[key]

    def frame(self, au12: int, au4: int, rng: np.random.Generator) -> np.ndarray:
        import cv2

        face = self.face(au12, au4)
        h, w = face.shape[:2]
        scale = _FRAME / max(h, w) * rng.uniform(0.92, 1.04)
        dx, dy = rng.uniform(-6, 6, size=2)
        m = np.array(
            [
                [scale, 0, _FRAME / 2 - scale * w / 2 + dx],
                [0, scale, _FRAME / 2 - scale * h / 2 + dy],
            ]
        )
        return cv2.warpAffine(
            face, m, (_FRAME, _FRAME), flags=cv2.INTER_LINEAR, borderValue=(110, 110, 110)
        )


def _intensities(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2)`` AU12 and AU4 levels: independent, every level about equally common."""
    return rng.integers(0, 6, size=(n, 2))


def write_synthetic_datasets(
    root, *, disfa_subjects: int = 4, plus_subjects: int = 2, frames: int = 40, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``root/DISFA`` and ``root/DISFA+`` in the layouts of the real datasets.

    Parameters
    ----------
    root : str or path-like
        Output folder.
    disfa_subjects : int, default 4
        DISFA subjects ``SN001...``: ``frames`` frames seen by both cameras (MJPEG
        .avi; the right camera sees the same expressions with other head motion).
    plus_subjects : int, default 2
        DISFA+ subjects, numbered after the DISFA ones: two trials of ``frames // 2``
        jpg images each.
    frames : int, default 40
    seed : int, default 0

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The DISFA and DISFA+ folders.
    """
    from PIL import Image

    root = Path(root)
    variants = _variants()
    if disfa_subjects + plus_subjects > len(variants):
        raise ValueError(f"at most {len(variants)} synthetic subjects")
    rng = np.random.default_rng(seed)
    disfa, plus = root / "DISFA", root / "DISFA+"
    for k in range(disfa_subjects):
        name = f"SN{k + 1:03d}"
        subject = _Subject(variants[k])
        levels = _intensities(rng, frames)
        for cam, folder, stem in (
            ("Left", "Videos_LeftCamera", "comp"),
            ("Right", "Video_RightCamera", "Comp"),
        ):
            write_video(
                disfa / folder / f"{cam}Video{name}_{stem}.avi",
                [subject.frame(int(a), int(b), rng) for a, b in levels],
                fps=20,
            )
        labels = disfa / "ActionUnit_Labels" / name
        labels.mkdir(parents=True, exist_ok=True)
        for au in DISFA_AUS:
            col = levels[:, 0] if au == 12 else levels[:, 1] if au == 4 else np.zeros(frames, int)
            text = "".join(f"{i + 1},{int(v)}\n" for i, v in enumerate(col))
            (labels / f"{name}_au{au}.txt").write_text(text)
    for k in range(plus_subjects):
        name = f"SN{disfa_subjects + k + 1:03d}"
        subject = _Subject(variants[disfa_subjects + k])
        for trial in ("A1_AU12_TrailNo_1", "A2_AU4_TrailNo_1"):
            n = frames // 2
            levels = _intensities(rng, n)
            images = plus / "Images" / name / trial
            images.mkdir(parents=True, exist_ok=True)
            names = [f"{i:03d}.jpg" for i in range(n)]
            for img_name, (a, b) in zip(names, levels, strict=True):
                Image.fromarray(subject.frame(int(a), int(b), rng)).save(
                    images / img_name, quality=92
                )
            labels = plus / "Labels" / name / trial
            labels.mkdir(parents=True, exist_ok=True)
            for au in DISFA_AUS:
                col = levels[:, 0] if au == 12 else levels[:, 1] if au == 4 else np.zeros(n, int)
                rows = "".join(
                    f"{img_name}     {int(v)}\n" for img_name, v in zip(names, col, strict=True)
                )
                (labels / f"AU{au}.txt").write_text(f"{name}\n{trial}\n{rows}")
    return disfa, plus
