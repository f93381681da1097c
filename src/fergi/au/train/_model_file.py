"""The trained model: built, saved with its training record, read back, and run on faces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fergi import __version__
from fergi._errors import FergiError
from fergi.au._ir50 import AU_OUTPUT_INDEX, build_ir50, load_matching
from fergi.au.train._config import TrainConfig
from fergi.schema import AU_NAMES


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


#: Key of the training record in a saved model's ``state_dict._metadata[""]``.
RECORD_KEY = "fergi_training"
# Options of a run that say nothing about the model it made.
_NOT_RECORDED = ("device", "num_workers", "save_every", "channels_last")


def precision_of(config: TrainConfig, device) -> str:
    """The arithmetic a run of ``config`` uses on ``device``.

    Returns
    -------
    str
        ``"fp32"`` (the authors'), ``"amp-bf16"`` or ``"amp-fp16"`` (float16 with loss
        scaling, on GPUs without bfloat16).
    """
    import torch

    if not config.amp or device.type not in ("cuda", "cpu"):
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "amp-fp16"
    return "amp-bf16"


def training_record(config: TrainConfig, *, precision: str, frames: int, world_size: int = 1):
    """What a model file records of how it was trained (see :func:`save_model`).

    The options of ``config`` that shape the model (as in the run folder's
    ``config.json``, less the hardware ones), the precision actually used, the
    number of training frames and processes, and the fergi version. The backbone
    is recorded by file name only, so a shared model does not carry a local path.
    """
    options = {k: v for k, v in config.to_dict().items() if k not in _NOT_RECORDED}
    options.pop("amp")
    if options.get("backbone") is not None:
        options["backbone"] = Path(options["backbone"]).name
    return {
        "trainer": "fergi train-au",
        "fergi_version": __version__,
        "mse_weights": config.mse_weights,
        "precision": precision,
        "frames": int(frames),
        "world_size": int(world_size),
        "config": options,
    }


def save_model(model, path, *, record: dict | None = None) -> Path:
    """Write the plain fp32 ``state_dict`` that ``create_au_estimator("ir50")`` loads (atomically).

    The file stays a plain ``state_dict`` (the authors' format, which their
    ``model.load_state_dict(torch.load(path))`` and fergi's loader read unchanged).
    How the model was trained rides in the ``state_dict``'s own ``_metadata``
    (where torch keeps each module's version), under ``[""]["fergi_training"]``;
    :func:`read_training_record` reads it back.

    Parameters
    ----------
    model : torch.nn.Module
    path : str or path-like
    record : dict, optional
        The training record; default: the one :func:`train_model` attached to
        ``model`` (none for other models).
    """
    import collections
    import copy

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    source = model.state_dict()
    state = collections.OrderedDict(
        (k, v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
        for k, v in source.items()
    )
    record = getattr(model, "fergi_training_", None) if record is None else record
    meta = copy.deepcopy(getattr(source, "_metadata", collections.OrderedDict()))
    if record is not None:
        meta.setdefault("", {})[RECORD_KEY] = record
    state._metadata = meta
    _atomic_torch_save(state, path)
    return path


def read_training_record(path) -> dict | None:
    """How a model file was trained, as :func:`save_model` recorded it.

    Parameters
    ----------
    path : str or path-like
        A model file written by ``fergi train-au`` (or any ``state_dict`` file).

    Returns
    -------
    dict or None
        ``trainer``, ``fergi_version``, ``mse_weights`` (``"authors"`` or
        ``"paper-eq16"``), ``precision`` (``"fp32"``, ``"amp-bf16"``,
        ``"amp-fp16"``), ``frames``, ``world_size`` and ``config`` (the options of
        the run); None for a file without a record (e.g. the authors' checkpoint, or
        one fergi wrote before it kept records).

    Raises
    ------
    fergi.FergiError
        Missing or unreadable file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FergiError(f"{path}: model file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise FergiError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from exc
    meta = getattr(obj, "_metadata", None) or {}
    record = meta.get("", {}).get(RECORD_KEY) if isinstance(meta.get(""), dict) else None
    return dict(record) if isinstance(record, dict) else None


def make_model(config: TrainConfig):
    """The model a run starts from: seeded random weights, then the backbone if given."""
    import torch

    torch.manual_seed(config.seed)
    model = build_ir50(width=config.width, layers=config.layers)
    if config.backbone is not None:
        load_matching(model, config.backbone)
    return model


def predict(model, faces, rows, *, device=None, batch_size: int = 256) -> np.ndarray:
    """Regression outputs ``(n, 12)`` (AU_NAMES order) of ``model`` on cache rows.

    ``faces`` is the cache's uint8 array; inputs are ``faces / 255`` as in training.
    """
    import torch

    model = getattr(model, "module", model)
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    rows = np.asarray(rows)
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            chunk = np.sort(rows[i : i + batch_size])
            order = np.argsort(np.argsort(rows[i : i + batch_size]))
            x = (
                torch.from_numpy(np.array(faces[chunk])).to(device).permute(0, 3, 1, 2).float()
                / 255.0
            )
            y = model(x).float()[:, list(AU_OUTPUT_INDEX)].cpu().numpy()
            out.append(y[order])
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(AU_NAMES)), np.float32)
