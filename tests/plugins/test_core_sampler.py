"""`sciffusion.plugins.core_sampler`: the name plugins record for the sampler they ran."""

from __future__ import annotations

import torch

from sciffusion.core import DiffusionProcess, available_samplers, get_schedule, sample
from sciffusion.plugins import core_sampler


def test_none_names_the_sampler_that_sample_runs_without_method():
    name = core_sampler()
    assert name in available_samplers()
    assert core_sampler("ddim") == "ddim"
    process = DiffusionProcess(get_schedule("cosine"), prediction="eps")

    def model(x, t, cond=None):
        return 0.3 * x

    def draw(**kw):
        return sample(model, process, (3, 2), steps=4, generator=torch.Generator().manual_seed(0), progress=False, **kw)

    torch.testing.assert_close(draw(), draw(method=name), rtol=0, atol=0)
    assert not torch.allclose(draw(), draw(method="ddpm"))
