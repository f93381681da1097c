"""FAU-Net: the authors' later neural valence model over all 12 AU activation values.

Architecture (as the release README describes it): each input goes through its own
``Linear(1, 1)`` (weight 1, bias -1) and a sigmoid; a densely connected hidden layer
``Linear(12, 16)`` whose output is concatenated to its input with a sigmoid over the 28
values; then ``Linear(28, 1)``. Trained with the RankNet loss (binary cross-entropy of
``sigmoid(s_i - s_j)``) plus ``1e-4`` times the L1 norm of all parameters, Adam (lr 1e-3),
300 full-batch epochs, seed 0.

Leave-one-participant-out training stacks the independent networks of all folds along a
leading dimension and trains them as one tensor program: Adam is element-wise and each
fold's loss only touches its own parameters, so this equals training them one by one.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._base import PreferenceModel
from fergi.preference._pairs import PairIndex, pair_index
from fergi.schema import ACTIVATION_COLUMNS

_PARAM_NAMES = ("pre_weight", "pre_bias", "hidden_weight", "hidden_bias", "out_weight", "out_bias")


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def initial_parameters(n_models: int, n_inputs: int, hidden: int, seed: int) -> dict:
    """Initial parameters of ``n_models`` networks built one after another after ``seed``.

    The modules are created in the order of the authors' code (the per-input ``Linear(1, 1)``
    layers draw random numbers before being set to 1 / -1), so fold ``i`` starts from the
    same weights as the ``i``-th network of the published run.
    """
    import torch
    from torch import nn

    hidden_w, hidden_b, out_w, out_b = [], [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(n_models):
            for _ in range(n_inputs):
                nn.Linear(1, 1)
            h = nn.Linear(n_inputs, hidden)
            o = nn.Linear(n_inputs + hidden, 1)
            hidden_w.append(h.weight.detach())
            hidden_b.append(h.bias.detach())
            out_w.append(o.weight.detach()[0])
            out_b.append(o.bias.detach()[0])
    return {
        "pre_weight": torch.ones(n_models, n_inputs),
        "pre_bias": -torch.ones(n_models, n_inputs),
        "hidden_weight": torch.stack(hidden_w),
        "hidden_bias": torch.stack(hidden_b),
        "out_weight": torch.stack(out_w),
        "out_bias": torch.stack(out_b),
    }


def forward(params: dict, x):
    """Scores of images ``x`` (N, 12) under each of the stacked networks: shape (F, N)."""
    import torch

    n_in = params["pre_weight"].shape[1]
    pre = torch.sigmoid(torch.addcmul(params["pre_bias"][:, None, :], x[None, :, :],
                                      params["pre_weight"][:, None, :]))
    hid = torch.baddbmm(params["hidden_bias"][:, None, :], pre, params["hidden_weight"].transpose(1, 2))
    # sigmoid(cat(pre, hid)) @ w == sigmoid(pre) @ w[:n_in] + sigmoid(hid) @ w[n_in:], without the copy.
    w = params["out_weight"]
    out = torch.bmm(torch.sigmoid(pre), w[:, :n_in, None]) + torch.bmm(torch.sigmoid(hid), w[:, n_in:, None])
    return out[:, :, 0] + params["out_bias"][:, None]


def train_stacked(x: np.ndarray, pairs: PairIndex, train_mask: np.ndarray, params: dict, *,
                  epochs: int, lr: float, l1: float, n_threads: int = 1) -> dict:
    """Train stacked networks; network ``f`` sees the pairs where ``train_mask[f]`` is True.

    The networks are independent, so with ``n_threads > 1`` they are split into that many
    stacks trained in parallel Python threads, each with one torch thread (torch's own
    intra-op threads spin and stall on a busy machine). Results are deterministic for a given
    ``n_threads``; another split changes them only at float32 rounding level.
    """
    import torch

    n_models = train_mask.shape[0]
    chunks = [c for c in np.array_split(np.arange(n_models), max(1, min(n_threads, n_models))) if len(c)]
    with _torch_threads(1):
        if len(chunks) == 1:
            return _train_chunk(x, pairs, train_mask, params, epochs=epochs, lr=lr, l1=l1)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(chunks)) as pool:
            futures = [
                pool.submit(_train_chunk, x, pairs, train_mask[c],
                            {k: v[torch.as_tensor(c)] for k, v in params.items()},
                            epochs=epochs, lr=lr, l1=l1)
                for c in chunks
            ]
            parts = [f.result() for f in futures]
    return {name: torch.cat([part[name] for part in parts]) for name in _PARAM_NAMES}


def _train_chunk(x: np.ndarray, pairs: PairIndex, train_mask: np.ndarray, params: dict, *,
                 epochs: int, lr: float, l1: float) -> dict:
    """Full-batch Adam on one stack of networks.

    The gradients are written out by hand (the network is tiny and the autograd graph costs
    more than the arithmetic); they equal autograd's for the RankNet loss
    ``mean softplus(-sign * (s_a - s_b))`` (= BCE of ``sigmoid(s_a - s_b)``) plus the L1
    term, whose subgradient is ``sign(p)`` as in autograd.
    """
    import torch

    with torch.no_grad():
        xt = torch.tensor(x, dtype=torch.float32)[None]
        a = torch.as_tensor(pairs.a, dtype=torch.long)
        b = torch.as_tensor(pairs.b, dtype=torch.long)
        sign = torch.as_tensor(pairs.sign, dtype=torch.float32)
        mask = torch.as_tensor(train_mask, dtype=torch.float32)
        n_train = mask.sum(dim=1, keepdim=True)
        if (n_train == 0).any():
            raise FergiError("FAU-Net: a training fold has no pair of images with different rank")
        # Per-network mean over its own training pairs = the published BCELoss mean.
        neg_sign_weight = -sign * (mask / n_train)
        tensors = [params[name].clone() for name in _PARAM_NAMES]
        for t in tensors:
            t.grad = torch.zeros_like(t)
        optimizer = torch.optim.Adam(tensors, lr=lr)
        n_models, n_images = mask.shape[0], xt.shape[1]
        n_in, n_hid = tensors[0].shape[1], tensors[2].shape[1]
        # Work buffers reused every epoch: fresh multi-megabyte tensors would be mapped and
        # page-faulted anew each time, which costs about as much as the arithmetic.
        pre, s_pre, g_in, g_pre, g_x = (torch.empty(n_models, n_images, n_in) for _ in range(5))
        hid, s_hid, g_hid = (torch.empty(n_models, n_images, n_hid) for _ in range(3))
        out, out_hid = torch.empty(n_models, n_images, 1), torch.empty(n_models, n_images, 1)
        g_out = torch.empty(n_models, n_images)
        # aten's sigmoid_backward(g, s) = g * s * (1 - s) in one pass over memory.
        sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
        for _ in range(epochs):
            w0, b0, w1, b1, w2, b2 = tensors
            torch.addcmul(b0[:, None, :], xt, w0[:, None, :], out=pre)
            pre.sigmoid_()
            torch.baddbmm(b1[:, None, :], pre, w1.transpose(1, 2), out=hid)
            torch.sigmoid(pre, out=s_pre)
            torch.sigmoid(hid, out=s_hid)
            torch.bmm(s_pre, w2[:, :n_in, None], out=out)
            torch.bmm(s_hid, w2[:, n_in:, None], out=out_hid)
            scores = out[:, :, 0]
            scores += out_hid[:, :, 0]
            scores += b2[:, None]
            g_pair = neg_sign_weight * torch.sigmoid(-sign * (scores[:, a] - scores[:, b]))
            g_out.zero_()
            g_out.index_add_(1, a, g_pair).index_add_(1, b, -g_pair)
            torch.mul(g_out[:, :, None], w2[:, None, n_in:], out=g_hid)
            sigmoid_backward(g_hid, s_hid, grad_input=g_hid)
            torch.mul(g_out[:, :, None], w2[:, None, :n_in], out=g_in)
            sigmoid_backward(g_in, s_pre, grad_input=g_in)
            torch.baddbmm(g_in, g_hid, w1, out=g_pre)
            sigmoid_backward(g_pre, pre, grad_input=g_pre)
            torch.mul(g_pre, xt, out=g_x)
            g_row = g_out[:, None, :]
            grads = (
                g_x.sum(dim=1),
                g_pre.sum(dim=1),
                torch.bmm(g_hid.transpose(1, 2), pre),
                g_hid.sum(dim=1),
                torch.cat([torch.bmm(g_row, s_pre)[:, 0], torch.bmm(g_row, s_hid)[:, 0]], dim=1),
                g_out.sum(dim=1),
            )
            for t, g in zip(tensors, grads, strict=True):
                torch.add(g, torch.sign(t), alpha=l1, out=t.grad)
            optimizer.step()
        return {name: t.detach() for name, t in zip(_PARAM_NAMES, tensors, strict=True)}


class FAUNet(PreferenceModel):
    """FAU-Net valence score from the 12 AU activation values (the authors' later model).

    Parameters
    ----------
    columns : sequence of str
        Input columns (default: the 12 ``AU*_activation_value`` columns).
    hidden : int
        Width of the densely connected hidden layer.
    epochs, lr, l1 : int, float, float
        Full-batch Adam epochs, learning rate and L1 weight.
    seed : int
        Seed of the weight initialisation (CPU, deterministic).
    n_threads : int
        Parallel threads for leave-one-out training (the folds are split between them). Fixed
        by default so that results do not depend on the machine.

    Attributes
    ----------
    params_ : dict of ndarray
        Fitted parameters.
    n_pairs_ : int
        Number of training pairs.
    """

    def __init__(self, columns=ACTIVATION_COLUMNS, hidden=16, epochs=300, lr=1e-3, l1=1e-4,
                 seed=0, n_threads=2):
        self.columns = columns
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.l1 = l1
        self.seed = seed
        self.n_threads = n_threads

    @property
    def required_columns(self):
        return tuple(self.columns)

    def _x(self, table):
        self._check_table(table)
        return table[list(self.columns)].to_numpy(dtype=np.float32)

    def _fit_stacked(self, table, y, pairs: PairIndex, train_mask: np.ndarray):
        params = initial_parameters(train_mask.shape[0], len(self.columns), self.hidden, self.seed)
        return train_stacked(self._x(table), pairs, train_mask, params, epochs=self.epochs,
                             lr=self.lr, l1=self.l1, n_threads=self.n_threads)

    def _set_params(self, params: dict, index: int, n_pairs: int):
        self.params_ = {name: params[name][index].numpy().copy() for name in _PARAM_NAMES}
        self.n_pairs_ = int(n_pairs)
        self.is_fitted_ = True
        return self

    def fit(self, table: pd.DataFrame, y=None, *, groups=None):
        """Train one network on every within-session pair of different rank of ``table``."""
        pairs = pair_index(table, ranks=y)
        if len(pairs) == 0:
            raise FergiError("image table: no pair of images with different rank to fit on")
        params = self._fit_stacked(table, y, pairs, np.ones((1, len(pairs)), bool))
        return self._set_params(params, 0, len(pairs))

    def _lopo_fit(self, table: pd.DataFrame, y, pairs: PairIndex):
        """All leave-one-group-out networks trained together; ``{group_label: fitted copy}``."""
        n_groups = len(pairs.group_labels)
        train_mask = pairs.group[None, :] != np.arange(n_groups)[:, None]
        params = self._fit_stacked(table, y, pairs, train_mask)
        fitted = {}
        for g, label in enumerate(pairs.group_labels):
            model = type(self)(**self.get_params())
            fitted[label] = model._set_params(params, g, int(train_mask[g].sum()))
        return fitted

    def score_images(self, table: pd.DataFrame) -> np.ndarray:
        """FAU-Net valence score of every image (row) of ``table``."""
        import torch

        self._check_fitted()
        params = {name: torch.as_tensor(v)[None] for name, v in self.params_.items()}
        with torch.no_grad(), _torch_threads(self.n_threads):
            out = forward(params, torch.tensor(self._x(table)))
        return out[0].numpy().astype(float)

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"columns": list(self.columns), "hidden": self.hidden, "epochs": self.epochs,
                "lr": self.lr, "l1": self.l1, "seed": self.seed,
                "params": {k: v.tolist() for k, v in self.params_.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> FAUNet:
        model = cls(columns=tuple(data["columns"]), hidden=int(data["hidden"]),
                    epochs=int(data["epochs"]), lr=float(data["lr"]), l1=float(data["l1"]),
                    seed=int(data["seed"]))
        shapes = {"pre_weight": (len(model.columns),), "pre_bias": (len(model.columns),),
                  "hidden_weight": (model.hidden, len(model.columns)), "hidden_bias": (model.hidden,),
                  "out_weight": (model.hidden + len(model.columns),), "out_bias": ()}
        params = {}
        for name, shape in shapes.items():
            value = np.asarray(data["params"][name], dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"parameter {name} has shape {value.shape}, expected {shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"parameter {name} has non-finite values")
            params[name] = value
        model.params_ = params
        model.is_fitted_ = True
        return model
