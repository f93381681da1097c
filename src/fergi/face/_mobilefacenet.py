"""MobileFaceNet 68-point landmark network (cunjian's pytorch_face_landmark, as the FERGI authors use it).

The FERGI authors align faces with the 68 landmarks of PyTorch Face Landmark's
MobileFaceNet (``mobilefacenet.py`` in ShuangquanFeng/FERGI, weights
``mobilefacenet_model_best.pth.tar``). This module builds the same network with the
same parameter names, so that their weights file loads as it is. No weights ship with
fergi and none are downloaded: give the file (``--landmarks PATH``) or put it in
fergi's model folder (:func:`landmark_weights_path`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

#: File name of the authors' landmark weights (as in their ``pretrained_models/``).
LANDMARK_WEIGHTS_NAME = "mobilefacenet_model_best.pth.tar"
#: Environment variable naming fergi's model folder.
MODELS_ENV = "FERGI_MODELS_DIR"
#: Landmarks per face and input side of the network.
N_POINTS = 68
INPUT_SIZE = 112


def models_dir() -> Path:
    """fergi's model folder: ``$FERGI_MODELS_DIR``, else ``<fergi cache>/models``."""
    # The face stage needs only the cache folder's name and stays numpy-only on import.
    from fergi.datasets import default_cache_dir  # deferred: pyarrow and pandas (fergi.datasets)

    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else default_cache_dir() / "models"


def landmark_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The MobileFaceNet weights file: ``path``, else ``models_dir()/mobilefacenet_model_best.pth.tar``.

    Raises
    ------
    fergi.FergiError
        The file does not exist (nothing is ever downloaded).
    """
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise FergiError(f"--landmarks {found}: landmark weights file not found")
        return found
    found = models_dir() / LANDMARK_WEIGHTS_NAME
    if not found.is_file():
        raise FergiError(
            f"{found}: no MobileFaceNet landmark weights (the authors' {LANDMARK_WEIGHTS_NAME}); "
            f"give --landmarks PATH or put the file in ${MODELS_ENV} (none can be downloaded)"
        )
    return found


def build_mobilefacenet():
    """A fresh MobileFaceNet (GDC head, 136 outputs: 68 ``(x, y)`` in [0, 1] of the input).

    The module names (``conv1``, ``conv_23``, ``conv_3.model.0``, ``output_layer.bn``
    ...) are those of the authors' ``mobilefacenet.py``, so their state dict loads.
    """
    from torch import nn

    class ConvBlock(nn.Module):  # conv + BN + PReLU ("Conv_block")
        def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.prelu = nn.PReLU(cout)

        def forward(self, x):
            return self.prelu(self.bn(self.conv(x)))

    class LinearBlock(nn.Module):  # conv + BN, no activation ("Linear_block")
        def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return self.bn(self.conv(x))

    class DepthWise(nn.Module):  # expand, depthwise 3x3, project ("Depth_Wise")
        def __init__(self, cin, cout, residual=False, stride=2, groups=1):
            super().__init__()
            self.conv = ConvBlock(cin, groups)
            self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
            self.project = LinearBlock(groups, cout)
            self.residual = residual

        def forward(self, x):
            out = self.project(self.conv_dw(self.conv(x)))
            return x + out if self.residual else out

    class Residual(nn.Module):
        def __init__(self, c, num_block, groups):
            super().__init__()
            self.model = nn.Sequential(
                *[DepthWise(c, c, residual=True, stride=1, groups=groups) for _ in range(num_block)]
            )

        def forward(self, x):
            return self.model(x)

    class GDC(nn.Module):  # global depthwise 7x7, linear, BatchNorm1d
        def __init__(self, embedding_size):
            super().__init__()
            self.conv_6_dw = LinearBlock(512, 512, 7, 1, 0, groups=512)
            self.conv_6_flatten = nn.Flatten()
            self.linear = nn.Linear(512, embedding_size, bias=False)
            self.bn = nn.BatchNorm1d(embedding_size)

        def forward(self, x):
            return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))

    class MobileFaceNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = ConvBlock(3, 64, 3, 2, 1)
            self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
            self.conv_23 = DepthWise(64, 64, stride=2, groups=128)
            self.conv_3 = Residual(64, 4, 128)
            self.conv_34 = DepthWise(64, 128, stride=2, groups=256)
            self.conv_4 = Residual(128, 6, 256)
            self.conv_45 = DepthWise(128, 128, stride=2, groups=512)
            self.conv_5 = Residual(128, 2, 256)
            self.conv_6_sep = ConvBlock(128, 512)
            self.output_layer = GDC(2 * N_POINTS)
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            for name in ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4",
                         "conv_45", "conv_5", "conv_6_sep", "output_layer"):
                x = getattr(self, name)(x)
            return x

    return MobileFaceNet()


def load_mobilefacenet(path: str | os.PathLike | None = None, *, device: str = "cpu"):
    """The authors' landmark network with weights from ``path`` (or fergi's model folder).

    Parameters
    ----------
    path : str or path-like, optional
        ``mobilefacenet_model_best.pth.tar`` (a dict with ``state_dict``, as the
        authors load it) or a bare state dict; ``module.`` prefixes are removed.
    device : str, default "cpu"

    Returns
    -------
    torch.nn.Module
        In eval mode, with ``weights_path`` set.

    Raises
    ------
    fergi.FergiError
        Missing, unreadable or mismatched file (one line naming it).
    """
    import torch

    path = landmark_weights_path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise FergiError(
            f"{path}: not a PyTorch landmark checkpoint readable as weights only "
            f"({type(exc).__name__})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise FergiError(f"{path}: does not hold a MobileFaceNet state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    model = build_mobilefacenet()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape", wrong))
            if names
        ]
        raise FergiError(f"{path}: not a MobileFaceNet 68-landmark state_dict ({'; '.join(parts)})")
    model.load_state_dict(state)
    model.weights_path = str(path)
    logger.info("landmark weights %s (%d tensors)", path, len(state))
    return model.eval().to(device)


def mean_face_68() -> np.ndarray:
    """A plausible frontal 68-point face (iBUG order) as fractions of the authors' margin crop.

    Only for synthetic weights (:func:`save_synthetic_landmark_weights`): a jaw on an
    ellipse from ear to ear, brows, nose, eyes and lips where a frontal face puts them
    in a crop with the authors' margins.
    """
    pts = np.zeros((N_POINTS, 2))
    theta = np.pi - np.arange(17) * np.pi / 16
    pts[0:17] = np.column_stack([0.5 + 0.42 * np.cos(theta), 0.45 + 0.5 * np.sin(theta)])
    pts[17:22] = np.column_stack([np.linspace(0.2, 0.43, 5), [0.35, 0.33, 0.32, 0.33, 0.35]])
    pts[22:27] = np.column_stack([np.linspace(0.57, 0.8, 5), [0.35, 0.33, 0.32, 0.33, 0.35]])
    pts[27:31] = np.column_stack([np.full(4, 0.5), np.linspace(0.42, 0.58, 4)])
    pts[31:36] = np.column_stack([np.linspace(0.42, 0.58, 5), [0.62, 0.63, 0.64, 0.63, 0.62]])
    ring = np.linspace(np.pi, -np.pi, 6, endpoint=False)  # left corner, then clockwise
    for start, cx in ((36, 0.33), (42, 0.67)):
        pts[start:start + 6] = np.column_stack([cx + 0.07 * np.cos(ring), 0.43 + 0.025 * np.sin(ring)])
    outer = np.linspace(np.pi, -np.pi, 12, endpoint=False)  # 48 left corner, 54 right corner
    pts[48:60] = np.column_stack([0.5 + 0.13 * np.cos(outer), 0.77 + 0.05 * np.sin(outer)])
    inner = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    pts[60:68] = np.column_stack([0.5 + 0.09 * np.cos(inner), 0.77 + 0.02 * np.sin(inner)])
    return pts


def save_synthetic_landmark_weights(path: str | os.PathLike, *, seed: int = 0,
                                    jitter: float = 0.0) -> Path:
    """Save MobileFaceNet weights in the authors' format that give a plausible face.

    For tests and parity checks where the real weights are not at hand: random
    convolutions (``seed``) with the BatchNorm statistics of random images, and a last
    BatchNorm whose bias is :func:`mean_face_68` and whose gain is ``jitter``, so the
    landmarks are the mean face moved by about ``jitter`` (a fraction of the crop) in a
    way that depends on the input. With
    ``jitter=0`` the landmarks are exactly the mean face on every machine.

    Returns
    -------
    pathlib.Path
        ``path``, a ``{"state_dict": ...}`` file as the authors' ``torch.load`` reads it.
    """
    import torch

    torch.manual_seed(seed)
    model = build_mobilefacenet()
    with torch.no_grad():
        # BatchNorm statistics of one batch of random images, so the activations stay
        # near 1 through the depth (fresh statistics shrink them towards denormal
        # floats, which the CPU computes hundreds of times slower).
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()(torch.rand(8, 3, INPUT_SIZE, INPUT_SIZE))
        model.eval()
        bn = model.output_layer.bn  # its statistics standardise the outputs
        bn.weight.fill_(float(jitter))
        bn.bias.copy_(torch.from_numpy(mean_face_68().reshape(-1)).float())
    path = Path(path)
    torch.save({"state_dict": model.state_dict()}, path)
    return path
