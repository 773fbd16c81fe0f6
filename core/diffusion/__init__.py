"""The Gaussian diffusion engine: schedules, the forward process, samplers, losses and likelihoods.

Its public names are importable from `sciffusion.core` (`from sciffusion.core import get_schedule,
DiffusionProcess, sample, losses`); the modules hold the rest:

- `schedules`: VP noise schedules by their log-SNR, in a registry;
- `process`: `DiffusionProcess` (forward draws, posteriors, conversions between prediction types);
- `samplers`: the registered reverse steps and `sample`;
- `losses`, `elbo`, `likelihood`: training losses, ELBO terms, the probability-flow log-likelihood;
- `inpainting`: sequential Monte Carlo inpainting; `categorical`: discrete (categorical) diffusion;
- `analytic`: Gaussian mixtures with their exact scores; `sample_quality`: precision, recall, density, coverage.
"""
