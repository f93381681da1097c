"""The settings of a training run (:class:`TrainConfig`), with the paper's defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fergi.au._ir50 import IR50_LAYERS


@dataclass
class TrainConfig:
    """Options of a training run; the defaults are the authors' recipe.

    The defaults are what the authors' ``DISFAwithPlus_train_model.py``
    (ShuangquanFeng/FERGI) ran to make their published model, which agrees with the
    paper's Supp. B.3 text except in the MSE weights (see ``mse_weights``).

    Attributes
    ----------
    epochs : int, default 3
    batch_size : int, default 64
        Per process under ``torchrun``.
    lr_head, lr_backbone : float, default 1e-4, 1e-5
        Adam learning rates of the last layer and of all other parameters.
    weight_decay : float, default 5e-4
    seed : int, default 42
        Initialisation, sample order and augmentation all derive from it, so a run
        is reproducible and a resumed run continues exactly where it stopped.
    flip : bool, default True
        Random horizontal flip.
    crop_scale : tuple, default (0.90, 1.0)
        Random resized crop: share of the face area kept...
    crop_ratio : tuple, default (19/20, 20/19)
        ...and its aspect-ratio range; the crop is resized back to 112x112.
    width : int, default 64
    layers : tuple, default (3, 4, 14, 3)
        Model size: IResNet-50 by default; smaller values for tests.
    backbone : str, optional
        Face-recognition IResNet-50 state_dict to start from (name/shape matching);
        None starts from random weights.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    mse_weights : {"authors", "paper-eq16"}, default "authors"
        Normalisation of the MSE intensity weights (:func:`~fergi.au.train.mse_weights`):
        the authors' ``compute_weights`` (default; it made the published model) or
        eq. 16 as printed (2x and 4x the authors' weights).
    amp : bool, default False
        Mixed precision: autocast to bfloat16 (float16 with loss scaling on GPUs
        without bfloat16; bfloat16 on the CPU). Off by default, as the authors
        trained in fp32. In fp32, TF32 tensor-core maths is switched off for the
        run, as the authors' GPU (a GTX 1080 Ti) has none.
    channels_last : bool, default True
        Channels-last memory format (CUDA only).
    num_workers : int, default 0
        DataLoader worker processes reading the cache.
    max_steps : int, optional
        Stop after this many optimiser steps in total (quick tries).
    save_every : int, default 0
        Also write the resumable checkpoint every this many steps (0: each epoch only).
    """

    epochs: int = 3
    batch_size: int = 64
    lr_head: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 5e-4
    seed: int = 42
    flip: bool = True
    crop_scale: tuple = (0.90, 1.0)
    crop_ratio: tuple = (19 / 20, 20 / 19)
    width: int = 64
    layers: tuple = IR50_LAYERS
    backbone: str | None = None
    device: str | None = None
    mse_weights: str = "authors"
    amp: bool = False
    channels_last: bool = True
    num_workers: int = 0
    max_steps: int | None = None
    save_every: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_scale"], d["crop_ratio"], d["layers"] = (
            list(self.crop_scale),
            list(self.crop_ratio),
            list(self.layers),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        for k in ("crop_scale", "crop_ratio", "layers"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})
