"""The plugins of sciffusion (`mri`, `molecules`, `climate`), and the one rule they share for naming a sampler."""

from __future__ import annotations


def core_sampler(method: str | None = None) -> str:
    """`method`, or when it is None the name of the sampler `sciffusion.core.sample` uses without `method=`.

    Plugins default to None, so they follow the core's default (`samplers.DEFAULT_METHOD`, never
    copied), and record the name this returns, so their outputs say which sampler ran.
    """
    if method is not None:
        return method
    from sciffusion.core.diffusion.samplers import DEFAULT_METHOD

    return DEFAULT_METHOD
