"""Models of one's own, built by name in tests/test_own_model.py (``--model own_models:mlp_vae``): a module that
is no test file, importable where the tests run (pytest puts tests/ on the path)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import iwae


class _Encoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(x).chunk(2, dim=-1)
        return mean, log_std


@iwae.model_builder
def mlp_vae(latent_dim: int = 3, hidden: int = 16) -> iwae.GaussianLatentModel:
    """A one-hidden-layer VAE of softplus units: not the paper's architecture."""
    decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, 784))
    return iwae.GaussianLatentModel(_Encoder(latent_dim, hidden), decoder, latent_dim)


@iwae.model_builder
def dropout_vae(latent_dim: int = 3, hidden: int = 16) -> iwae.GaussianLatentModel:
    """Dropout in the encoder: draws from torch's global generator at every training step."""
    encoder = _Split(
        nn.Sequential(nn.Linear(784, hidden), nn.Softplus(), nn.Dropout(0.3), nn.Linear(hidden, 2 * latent_dim))
    )
    decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, 784))
    return iwae.GaussianLatentModel(encoder, decoder, latent_dim)


class _DrawsItself(iwae.GaussianLatentModel):
    """Draws from torch's global generator in forward_samples itself, in eval mode too."""

    def forward_samples(self, x, k, **kwargs):
        torch.rand(())
        return super().forward_samples(x, k, **kwargs)


@iwae.model_builder
def draws_itself(latent_dim: int = 3, hidden: int = 16) -> iwae.GaussianLatentModel:
    """A model of its own class (so the estimators that read the path keywords probe it) that draws globally."""
    base = dropout_vae(latent_dim, hidden)
    return _DrawsItself(base.encoder, base.decoder, latent_dim)


@iwae.model_builder
def wrong_size(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    """A model of 100-pixel images, which no data set holds."""
    encoder = nn.Linear(100, 2 * latent_dim)
    return iwae.GaussianLatentModel(_Split(encoder), nn.Linear(latent_dim, 100), latent_dim, x_dim=100)


class _Split(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(x).chunk(2, dim=-1)
        return mean, log_std


@iwae.model_builder
def not_a_model() -> nn.Module:
    return nn.Linear(2, 2)


NOT_CALLABLE = 3


class UnmarkedModel(iwae.GaussianLatentModel):
    """A module class that is not marked: a run folder may not call it (nor any class of an installed package)."""


def unmarked(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    """Builds a fine model, but is not marked as a builder: a run folder may not call it."""
    return mlp_vae(latent_dim)


@iwae.model_builder
def double(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    return mlp_vae(latent_dim).double()


@iwae.model_builder
def tied(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    """One module registered twice: its tensors stand twice in the state_dict, which a checkpoint cannot hold."""
    model = mlp_vae(latent_dim)
    model.decoder_again = model.decoder
    return model


@iwae.model_builder
def batch_norm(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    """An encoder with batch normalisation (batch statistics in training, running ones in eval mode)."""
    encoder = _Split(
        nn.Sequential(nn.Linear(784, 16), nn.BatchNorm1d(16), nn.Softplus(), nn.Linear(16, 2 * latent_dim))
    )
    decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Softplus(), nn.Linear(16, 784))
    return iwae.GaussianLatentModel(encoder, decoder, latent_dim)


class _SamplesWithoutGenerator(iwae.GaussianLatentModel):
    def sample(self, n: int) -> Tensor:  # (the samples figure passes generator=)
        return super().sample(n)


@iwae.model_builder
def sampler_without_generator(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    base = mlp_vae(latent_dim)
    return _SamplesWithoutGenerator(base.encoder, base.decoder, latent_dim)


class _SamplesTooFewPixels(iwae.GaussianLatentModel):
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return super().sample(n, generator)[:, :100]


@iwae.model_builder
def sampler_too_few_pixels(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    base = mlp_vae(latent_dim)
    return _SamplesTooFewPixels(base.encoder, base.decoder, latent_dim)


class Builders:
    """Builders as a class's methods, the mark above or below the method decorator."""

    @iwae.model_builder
    @staticmethod
    def above(latent_dim: int = 3) -> iwae.GaussianLatentModel:
        return mlp_vae(latent_dim)

    @staticmethod
    @iwae.model_builder
    def below(latent_dim: int = 3) -> iwae.GaussianLatentModel:
        return mlp_vae(latent_dim)

    @iwae.model_builder
    @classmethod
    def of_class(cls, latent_dim: int = 3) -> iwae.GaussianLatentModel:
        return mlp_vae(latent_dim)


SAMPLER_BROKEN = False  # tests/test_own_model.py breaks the sampler below after its model is built


class _SamplesWithGradients(iwae.GaussianLatentModel):
    """A sampler that uses autograd inside (a refinement step), as the samples figure may call it."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if SAMPLER_BROKEN:
            raise RuntimeError("sampler broke")
        h = torch.randn(n, self.latent_dims[0], generator=generator, requires_grad=True)
        (step,) = torch.autograd.grad(h.square().sum(), h)
        return torch.sigmoid(self.decoder(h - 0.01 * step)).detach()


@iwae.model_builder
def refined_sampler(latent_dim: int = 3) -> iwae.GaussianLatentModel:
    base = mlp_vae(latent_dim)
    return _SamplesWithGradients(base.encoder, base.decoder, latent_dim)
