"""The ``ir50`` AU estimator: the FERGI paper's appearance model (Supp. B.3).

An IResNet-50 (the ArcFace face-recognition backbone of insightface's
``arcface_torch``, whose parameter names it keeps) with the last layer replaced by
``Linear(512 * 7 * 7, 64 * 6)``. Output ``i`` (0-based) of the first 64 is the
regression intensity of AU ``i + 1`` on the DISFA 0-5 scale; the other ``64 * 5`` are
ordinal logits ("intensity >= 1..5") used only in training. Input: the aligned,
contrast-normalised 112x112 RGB face in [0, 1]. The authors' published weights were
trained on, and made the release's values from, the authors' own preprocessing:
:func:`fergi.au.extract_features` uses it by default with this estimator
(``preprocessing="authors"``, :class:`fergi.face.AuthorsPreprocessor`, which needs their
MobileFaceNet landmark weights); ``preprocessing="fergi"`` feeds fergi's FaceMesh-based
crop (``fergi.face.preprocess_face``) instead, which the authors' weights read differently.

No weights ship with fergi. :meth:`IR50AUEstimator.load_checkpoint` reads a plain
PyTorch ``state_dict`` of this model (the format the FERGI authors distribute);
:meth:`IR50AUEstimator.load_backbone` copies face-recognition weights (e.g. an
``iresnet50`` trained on Glint360K) by matching names and shapes, as the starting
point for training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fergi._errors import FergiError
from fergi.schema import AU_NAMES

logger = logging.getLogger(__name__)

N_AU_SLOTS = 64  #: AU1..AU64, output index AU - 1
N_OUTPUTS = N_AU_SLOTS * 6
#: Output index of each of the 12 FERGI AUs.
AU_OUTPUT_INDEX = tuple(int(name[2:]) - 1 for name in AU_NAMES)


#: Blocks per stage of IResNet-50.
IR50_LAYERS = (3, 4, 14, 3)


def _build_model(head_norm: bool = False, width: int = 64, layers=IR50_LAYERS):
    """IResNet-50 (layers 3-4-14-3, 64 base channels) with the FERGI AU head.

    ``width`` and ``layers`` make narrower or shallower variants of the same
    architecture (same parameter names), for tests and quick experiments.
    """
    width = int(width)
    layers = tuple(int(n) for n in layers)
    import torch
    from torch import nn

    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)

    class IBasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
            self.conv1 = conv3x3(inplanes, planes)
            self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
            self.prelu = nn.PReLU(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return out + identity

    class IResNet50AU(nn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width, eps=1e-05)
            self.prelu = nn.PReLU(width)
            self.layer1 = self._make_layer(width, layers[0])
            self.layer2 = self._make_layer(2 * width, layers[1])
            self.layer3 = self._make_layer(4 * width, layers[2])
            self.layer4 = self._make_layer(8 * width, layers[3])
            self.bn2 = nn.BatchNorm2d(8 * width, eps=1e-05)
            self.dropout = nn.Dropout(p=0.0)
            self.fc = nn.Linear(8 * width * 7 * 7, N_OUTPUTS)
            # Some training code keeps arcface's BatchNorm1d after fc.
            self.features = nn.BatchNorm1d(N_OUTPUTS, eps=1e-05) if head_norm else nn.Identity()

        def _make_layer(self, planes, blocks, stride=2):
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
            layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
            return self.features(self.fc(self.dropout(x)))

    return IResNet50AU()


def build_ir50(head_norm: bool = False, *, width: int = 64, layers=IR50_LAYERS):
    """A fresh (randomly initialised) IResNet-50 AU model, ``torch.nn.Module``.

    Parameters
    ----------
    head_norm : bool, default False
        Keep arcface's ``BatchNorm1d`` after the last layer.
    width : int, default 64
        Channels of the first stage (doubling per stage); 64 is IResNet-50.
    layers : tuple of 4 int, default (3, 4, 14, 3)
        Blocks per stage; the default is IResNet-50.
    """
    return _build_model(head_norm, width, layers)


def architecture_of(state: dict) -> tuple[int, tuple[int, ...]]:
    """``(width, layers)`` of the model a state_dict was saved from.

    Read from ``conv1.weight`` and the block numbers of ``layer1..4``; a part that is
    absent keeps IResNet-50's value (so an incomplete file fails by name in
    :meth:`IR50AUEstimator.load_checkpoint`, not here).
    """
    conv1 = state.get("conv1.weight")
    width = int(conv1.shape[0]) if conv1 is not None and len(conv1.shape) == 4 else 64
    layers = []
    for k, default in enumerate(IR50_LAYERS, start=1):
        prefix = f"layer{k}."
        blocks = {name.split(".")[1] for name in state if name.startswith(prefix)}
        blocks = {int(b) for b in blocks if b.isdigit()}
        layers.append(max(blocks) + 1 if blocks else default)
    return width, tuple(layers)


def _read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise FergiError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise FergiError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from exc
    # Training scripts wrap the state_dict in various ways.
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise FergiError(f"{path}: does not hold a state_dict of tensors")
    # DataParallel / compiled models prefix every name.
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


class IR50AUEstimator:
    """AU intensities from face appearance with the FERGI IR-50 model.

    Parameters
    ----------
    checkpoint : str or path-like, optional
        Plain ``state_dict`` of the model (last layer ``fc`` of shape
        ``(384, 25088)``). Required for meaningful output.
    backbone : str or path-like, optional
        Face-recognition IResNet-50 weights loaded by name and shape (the head stays
        random): a starting point for training, not for inference.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    batch_size : int, default 64

    Attributes
    ----------
    model_ : torch.nn.Module
    loaded_ : list of str
        Parameter names taken from the files.
    """

    input_kind = "face"

    def __init__(self, checkpoint=None, *, backbone=None, device=None, batch_size=64):
        import torch

        self.checkpoint = checkpoint
        self.backbone = backbone
        self.batch_size = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        head_norm = False
        state = None
        width, layers = 64, IR50_LAYERS
        if checkpoint is not None:
            state = _read_state_dict(Path(checkpoint))
            head_norm = "features.running_mean" in state
            # Reduced models trained by fergi.au.train load like the full one.
            width, layers = architecture_of(state)
        self.model_ = build_ir50(head_norm, width=width, layers=layers).eval()
        self.loaded_: list[str] = []
        if state is not None:
            self.load_checkpoint(checkpoint, _state=state)
        if backbone is not None:
            self.load_backbone(backbone)
        self.model_.to(self.device)

    def load_checkpoint(self, path: str | os.PathLike, *, _state=None) -> IR50AUEstimator:
        """Load a full model ``state_dict`` (every parameter must match).

        Raises
        ------
        fergi.FergiError
            Missing or unexpected parameters, or wrong shapes (the message says which).
        """
        path = Path(path)
        state = _read_state_dict(path) if _state is None else _state
        own = self.model_.state_dict()
        fc = state.get("fc.weight")
        if fc is not None and tuple(fc.shape) != tuple(own["fc.weight"].shape):
            raise FergiError(
                f"{path}: last layer fc.weight has shape {tuple(fc.shape)}, expected "
                f"{tuple(own['fc.weight'].shape)} (Linear(512*7*7, 64*6))"
            )
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            parts = []
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            ):
                if names:
                    parts.append(
                        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                    )
            raise FergiError(f"{path}: not an IR-50 AU state_dict ({'; '.join(parts)})")
        self.model_.load_state_dict(state, strict=False)
        self.loaded_ = list(state)
        logger.info("loaded %d tensors from %s", len(state), path)
        return self

    def load_backbone(self, path: str | os.PathLike) -> IR50AUEstimator:
        """Copy face-recognition weights whose names and shapes match; keep the rest.

        Returns
        -------
        self

        Raises
        ------
        fergi.FergiError
            Nothing matched (not an IResNet-50 file).
        """
        self.loaded_ = load_matching(self.model_, path)
        return self

    def predict_outputs(self, faces: np.ndarray) -> np.ndarray:
        """All 384 network outputs for ``(N, 112, 112, 3)`` float faces in [0, 1]."""
        import torch

        faces = np.asarray(faces, dtype=np.float32)
        if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3):
            raise FergiError(f"faces: expected shape (N, 112, 112, 3), got {faces.shape}")
        outs = []
        with torch.inference_mode():
            for i in range(0, len(faces), self.batch_size):
                batch = torch.from_numpy(faces[i : i + self.batch_size]).permute(0, 3, 1, 2)
                outs.append(self.model_(batch.to(self.device)).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, N_OUTPUTS), np.float32)

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """AU intensities ``(N, 12)`` in ``AU_NAMES`` order (regression outputs AU - 1)."""
        return self.predict_outputs(faces)[:, list(AU_OUTPUT_INDEX)].astype(float)

    def fit(self, *args, **kwargs) -> IR50AUEstimator:
        """No-op: appearance intensities are absolute, no neutral reference is used."""
        return self


def load_matching(model, path: str | os.PathLike) -> list[str]:
    """Copy the tensors of a state_dict file whose names and shapes match ``model``.

    Returns
    -------
    list of str
        The names copied.

    Raises
    ------
    fergi.FergiError
        Nothing matched (not an IResNet-50 file), or not a checkpoint.
    """
    import torch

    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not take:
        raise FergiError(f"{path}: no parameter matches IResNet-50 by name and shape")
    with torch.no_grad():
        own.update({k: v.to(own[k].dtype) for k, v in take.items()})
        model.load_state_dict(own)
    skipped = sorted(set(state) - set(take))
    logger.info(
        "backbone %s: %d tensors loaded, %d skipped (%s)",
        path,
        len(take),
        len(skipped),
        ", ".join(skipped[:4]),
    )
    return sorted(take)
