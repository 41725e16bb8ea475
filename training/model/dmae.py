"""DMAE: the diffusion magnitude autoencoder (Moûsai stage 1).

encode: audio [B, 2, L] -> magnitude STFT -> 2 x 512 bins folded into 1024 channels -> resnet stacks with two
        stride-2 down-samplings -> 1x1 conv -> tanh -> latent [B, 32, L/1024]
decode: one denoising step at a time: v = decoder(x_sigma, sigma, latent), a U-Net over the waveform (behind a
        learned patch transform) that receives the latent at `inject_depth`, where its length equals the latent's.
The phase is never stored: the decoder generates it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import DMAEConfig, EncoderConfig
from .diffusion import v_loss
from .unet1d import UNet1d, pad_to_multiple


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(groups, in_ch)
        self.project = nn.Conv1d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(F.silu(self.groupnorm(x)))


class EncoderResnet(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch, groups)
        self.block2 = ConvBlock(out_ch, out_ch, groups)
        self.to_out = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.block1(x))
        return h + (x if self.to_out is None else self.to_out(x))


class Downsample(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, factor: int, groups: int, num_blocks: int):
        super().__init__()
        self.downsample = nn.Conv1d(in_ch, out_ch, factor * 2 + 1, stride=factor, padding=factor)
        self.blocks = nn.ModuleList(EncoderResnet(out_ch, out_ch, groups) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def magnitude_stft(audio: Tensor, n_fft: int, hop: int, center: bool, window: Tensor) -> Tensor:
    """|STFT| (Hann, normalized) of [B, C, L] -> [B, C * (n_fft // 2 + 1), frames]."""
    b, c, n = audio.shape
    spec = torch.stft(
        audio.reshape(b * c, n), n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
        center=center, normalized=True, return_complex=True,
    )
    mag = spec.abs()
    return mag.reshape(b, c * mag.shape[1], mag.shape[2])


class MagnitudeEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.stft_n_fft), persistent=False)
        ch = [cfg.channels * m for m in cfg.multipliers]
        # the first resnet sees 1024 channels of very different scale: one group (the reference's choice)
        self.to_in = EncoderResnet(cfg.in_channels * cfg.frequency_bins, ch[0], groups=1)
        self.downsamples = nn.ModuleList(
            Downsample(ch[i], ch[i + 1], cfg.factors[i], cfg.resnet_groups, cfg.num_blocks[i])
            for i in range(len(cfg.factors))
        )
        self.to_out = nn.Conv1d(ch[-1], cfg.out_channels, 1)

    def frames_to_latent(self, mag: Tensor) -> Tensor:
        """The part after the STFT (what ONNX exports when the STFT runs in numpy)."""
        x = self.to_in(mag)
        for down in self.downsamples:
            x = down(x)
        return torch.tanh(self.to_out(x))

    def forward(self, audio: Tensor) -> Tensor:
        c = self.cfg
        mag = magnitude_stft(audio, c.stft_n_fft, c.stft_hop, c.stft_center, self.window)
        return self.frames_to_latent(mag)


class DMAE(nn.Module):
    def __init__(self, cfg: DMAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MagnitudeEncoder(cfg.encoder)
        self.decoder = UNet1d(cfg.decoder)

    @property
    def hop(self) -> int:
        return self.cfg.hop

    def encode(self, audio: Tensor) -> Tensor:
        """audio [B, 2, L] (any L) -> latent [B, 32, ceil(L / hop)]; L is zero-padded to a multiple of hop."""
        audio, _ = pad_to_multiple(audio, self.hop)
        return self.encoder(audio)

    def denoise(self, x: Tensor, sigma: Tensor, latent: Tensor) -> Tensor:
        """One decoder step: v for x [B, 2, hop * T] (in scaled-audio units), sigma [B], latent [B, 32, T]."""
        return self.decoder(x, sigma, inject=latent)

    def loss(self, audio: Tensor) -> Tensor:
        """v-objective loss of the decoder on scaled audio, conditioned on the latent of the same audio."""
        audio, _ = pad_to_multiple(audio, self.cfg.length_multiple)
        latent = self.encoder(audio)
        return v_loss(lambda x, s: self.denoise(x, s, latent), audio * self.cfg.audio_scale)

    @torch.no_grad()
    def decode(self, latent: Tensor, steps: int = 10, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """latent [B, 32, T] -> audio [B, 2, T * hop] by DDIM from noise (any T; padded internally)."""
        from .diffusion import ddim_sample, linear_sigmas

        b, _, t = latent.shape
        mult_t = self.cfg.length_multiple // self.hop
        latent_p, _ = pad_to_multiple(latent, mult_t)
        n = latent_p.shape[-1] * self.hop
        if noise is None:
            noise = torch.randn(b, self.cfg.decoder.in_channels, n, generator=generator, device=latent.device)
        else:
            noise, _ = pad_to_multiple(noise, self.cfg.length_multiple)
        x = ddim_sample(lambda x, s: self.denoise(x, s, latent_p), noise, linear_sigmas(steps))
        return x[..., : t * self.hop] / self.cfg.audio_scale
