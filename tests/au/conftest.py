"""Fixtures shared by the AU estimator tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A state_dict of the published IR-50 shape with a recognisable head (made once: the
    full network takes seconds to build and 175 MB to save)."""
    import torch

    from fergi.au import build_ir50

    torch.manual_seed(0)
    model = build_ir50()
    with torch.no_grad():
        model.fc.weight.mul_(0.01)
        model.fc.bias.copy_(torch.arange(384, dtype=torch.float32))
        # Non-trivial running statistics, so eval-mode BatchNorm matters.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "fergi_ir50.pth"
    torch.save(model.state_dict(), path)
    return path
