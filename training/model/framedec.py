"""Frame-rate autoencoders for the decoder bake-off: a magnitude-STFT encoder with a pitch-aware auxiliary head,
and decoders that work on STFT frames instead of waveform samples.

The latent contract is Moûsai's: magnitude STFT -> encoder -> tanh latent [B, 32, L / 1024]. What changes is the
decoder, which produces STFT frames (4 per latent frame at hop 256):
- `MagDecoder`: log magnitude per frame; the phase comes from Griffin-Lim (candidate "mag").
- `SpecDiffusionDecoder`: v-objective diffusion over the amplitude-compressed complex STFT, the latent injected at
  its deepest level, where the length equals the latent's (candidate "specdiff").
The encoder carries an auxiliary head (a conv over latent frames, dropped after training) that predicts the
centred log chroma of the input: the latent is made to hold the notes, not only the band envelope.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.eval import musicness

LOG_EPS = 1e-4


@dataclass
class SpecEncoderConfig:
    n_fft: int = 2048
    hop: int = 256
    channels: list[int] = field(default_factory=lambda: [128, 256, 256])  # at hop, 2 hop, 4 hop
    blocks: list[int] = field(default_factory=lambda: [1, 2, 2])
    latent_channels: int = 32
    aux_kernel: int = 5

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def latent_hop(self) -> int:
        return self.hop * 2 ** (len(self.channels) - 1)


@dataclass
class MagDecoderConfig:
    n_fft: int = 2048
    hop: int = 256
    latent_dim: int = 384
    latent_blocks: int = 4
    frame_dim: int = 192
    frame_blocks: int = 3


@dataclass
class SpecDiffusionConfig:
    n_fft: int = 1024
    hop: int = 256
    channels: list[int] = field(default_factory=lambda: [192, 256, 384])  # frame rate, /2, /4 (= latent rate)
    blocks: list[int] = field(default_factory=lambda: [1, 2, 4])
    time_dim: int = 256
    compress: float = 0.3  # |X|^compress * e^(i phase)
    scale: float = 2.3  # compressed complex STFT * scale ~ unit std on the corpus' crops


def stft(audio: Tensor, n_fft: int, hop: int) -> Tensor:
    """Complex STFT [B, C, bins, 1 + L // hop] of [B, C, L]: centred (reflect), periodic Hann, not normalised
    (the runtime's numpy STFT)."""
    b, c, n = audio.shape
    w = torch.hann_window(n_fft, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio.reshape(b * c, n), n_fft, hop, window=w, center=True, pad_mode="reflect",
                      return_complex=True)
    return spec.reshape(b, c, spec.shape[-2], spec.shape[-1])


def istft(spec: Tensor, n_fft: int, hop: int, length: int) -> Tensor:
    b, c = spec.shape[:2]
    w = torch.hann_window(n_fft, periodic=True, dtype=spec.real.dtype, device=spec.device)
    x = torch.istft(spec.reshape(b * c, *spec.shape[2:]), n_fft, hop, window=w, center=True, length=length)
    return x.reshape(b, c, length)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm (optionally modulated by a conditioning vector) -> MLP, residual (Vocos)."""

    def __init__(self, dim: int, cond_dim: int = 0, kernel: int = 7, mult: int = 3):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim == 0)
        self.film = nn.Linear(cond_dim, 2 * dim) if cond_dim else None
        self.pw1 = nn.Linear(dim, mult * dim)
        self.pw2 = nn.Linear(mult * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, T, D]
        h = self.norm(h)
        if self.film is not None:
            scale, shift = self.film(cond).unsqueeze(1).chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        h = self.pw2(F.gelu(self.pw1(h))) * self.gamma
        return x + h.transpose(1, 2)


def magnitude(spec: Tensor) -> Tensor:
    """|spec| through real and imaginary parts (torch's complex abs is several times slower on the CPU)."""
    return torch.view_as_real(spec).pow(2).sum(-1).add(1e-12).sqrt()


def log_magnitude(spec: Tensor) -> Tensor:
    return torch.log(magnitude(spec) + LOG_EPS)


class SpecEncoder(nn.Module):
    """audio [B, 2, L] -> |STFT| -> log -> ConvNeXt stacks with two stride-2 convs -> tanh latent [B, 32, L/1024]."""

    def __init__(self, cfg: SpecEncoderConfig, in_channels: int = 2):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.to_in = nn.Conv1d(in_channels * cfg.bins, ch[0], 1)
        self.levels = nn.ModuleList()
        for i, (c, n) in enumerate(zip(ch, cfg.blocks)):
            down = nn.Identity() if i == 0 else nn.Conv1d(ch[i - 1], c, 4, stride=2, padding=1)
            self.levels.append(nn.ModuleList([down, *[ConvNeXtBlock(c) for _ in range(n)]]))
        self.norm_out = nn.LayerNorm(ch[-1])
        self.to_out = nn.Conv1d(ch[-1], cfg.latent_channels, 1)
        self.aux = nn.Conv1d(cfg.latent_channels, 12, cfg.aux_kernel, padding=cfg.aux_kernel // 2)

    def frames_to_latent(self, mag: Tensor) -> Tensor:
        """[B, C * bins, frames] magnitude (what ONNX exports; the STFT runs in numpy) -> latent."""
        x = self.to_in(torch.log(mag + LOG_EPS))
        for level in self.levels:
            x = level[0](x)
            for block in level[1:]:
                x = block(x)
        x = self.norm_out(x.transpose(1, 2)).transpose(1, 2)
        return torch.tanh(self.to_out(x))

    def magnitude(self, audio: Tensor) -> Tensor:
        spec = stft(audio, self.cfg.n_fft, self.cfg.hop)
        b, c, f, t = spec.shape
        return spec.abs().reshape(b, c * f, t)

    def forward(self, audio: Tensor) -> Tensor:
        """audio [B, C, L] with L a multiple of latent_hop -> [B, 32, L / latent_hop]."""
        z = self.frames_to_latent(self.magnitude(audio))
        return z[..., : audio.shape[-1] // self.cfg.latent_hop]


_CHROMA_FB: dict[tuple, Tensor] = {}


def chroma_target(audio: Tensor, latent_hop: int, sr: int = 48000) -> Tensor:
    """Centred log chroma [B, 12, L / latent_hop] (musicness' definition, at the latent rate)."""
    key = (sr, audio.device)
    if key not in _CHROMA_FB:
        _CHROMA_FB[key] = torch.from_numpy(musicness.chroma_filterbank(sr, musicness.N_FFT).copy()).float()
    fb = _CHROMA_FB[key]
    spec = stft(audio, musicness.N_FFT, latent_hop)
    power = (spec.real ** 2 + spec.imag ** 2).sum(1)  # [B, bins, frames]
    c = torch.einsum("kf,bft->bkt", fb, power)[..., : audio.shape[-1] // latent_hop]
    floor = c.amax(1, keepdim=True) * 10 ** (-musicness.FLOOR_DB / 10) + 1e-12
    lc = torch.log(c + floor)
    return lc - lc.mean(1, keepdim=True)


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, 2 * factor, stride=factor, padding=factor // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class MagDecoder(nn.Module):
    """latent [B, 32, T] -> log |STFT| [B, 2, bins, 4 T] (hop 256)."""

    def __init__(self, cfg: MagDecoderConfig, latent_channels: int = 32, latent_hop: int = 1024, channels: int = 2):
        super().__init__()
        self.cfg = cfg
        self.channels = channels
        self.factor = latent_hop // cfg.hop
        self.to_in = nn.Conv1d(latent_channels, cfg.latent_dim, 7, padding=3)
        self.latent_blocks = nn.ModuleList(ConvNeXtBlock(cfg.latent_dim) for _ in range(cfg.latent_blocks))
        self.up = Upsample(cfg.latent_dim, cfg.frame_dim, self.factor)
        self.frame_blocks = nn.ModuleList(ConvNeXtBlock(cfg.frame_dim) for _ in range(cfg.frame_blocks))
        self.norm = nn.LayerNorm(cfg.frame_dim)
        self.head = nn.Linear(cfg.frame_dim, channels * (cfg.n_fft // 2 + 1))

    def forward(self, z: Tensor) -> Tensor:
        x = self.to_in(z)
        for block in self.latent_blocks:
            x = block(x)
        x = self.up(x)
        for block in self.frame_blocks:
            x = block(x)
        y = self.head(self.norm(x.transpose(1, 2)))  # [B, T, C * bins]
        b, t, _ = y.shape
        return y.reshape(b, t, self.channels, -1).permute(0, 2, 3, 1)


@dataclass
class PhaseDecoderConfig(MagDecoderConfig):
    n_fft: int = 1024


class PhaseDecoder(MagDecoder):
    """latent -> log |STFT| and phase per frame (n_fft 1024, hop 256) -> inverse STFT (Vocos' head)."""

    def __init__(self, cfg: PhaseDecoderConfig, latent_channels: int = 32, latent_hop: int = 1024, channels: int = 2):
        super().__init__(cfg, latent_channels, latent_hop, channels)
        self.head = nn.Linear(cfg.frame_dim, 3 * channels * (cfg.n_fft // 2 + 1))

    def spectrum(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log magnitude, complex STFT) [B, C, bins, 4 T]; phase = atan2(y, x) of two outputs, as Vocos does."""
        out = super().forward(z)  # [B, C, 3 * bins, T']
        log_mag, px, py = out.chunk(3, dim=2)
        log_mag = log_mag.clamp(max=12.0)
        phase = torch.atan2(py, px)
        return log_mag, torch.polar(log_mag.exp(), phase)

    def forward(self, z: Tensor) -> Tensor:
        """latent [B, 32, T] -> audio [B, C, T * latent_hop]."""
        _, spec = self.spectrum(z)
        n = spec.shape[-1] * self.cfg.hop
        return istft(F.pad(spec, (0, 1)), self.cfg.n_fft, self.cfg.hop, n)


class IFPhaseDecoder(MagDecoder):
    """latent -> log |STFT| and instantaneous frequency per frame (n_fft 1024, hop 256) -> inverse STFT.

    The phase is not predicted per frame (an atan2 head learns one static comb, RECIPE.md stage 6) but integrated
    over frames from the predicted phase advance: each bin's centre advance 2 pi k hop / n_fft plus a bounded
    deviation of up to +-pi per hop, as a phase vocoder does. A stationary partial then keeps a coherent phase."""

    def __init__(self, cfg: PhaseDecoderConfig, latent_channels: int = 32, latent_hop: int = 1024, channels: int = 2):
        super().__init__(cfg, latent_channels, latent_hop, channels)
        bins = cfg.n_fft // 2 + 1
        self.head = nn.Linear(cfg.frame_dim, 2 * channels * bins)
        self.register_buffer("centre", 2 * math.pi * torch.arange(bins) * cfg.hop / cfg.n_fft, persistent=False)

    def spectrum(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log magnitude, phase advance per frame, complex STFT), each [B, C, bins, 4 T]."""
        out = super().forward(z)  # [B, C, 2 * bins, T']
        log_mag, dev = out.chunk(2, dim=2)
        log_mag = log_mag.clamp(max=12.0)
        advance = self.centre[:, None] + math.pi * torch.tanh(dev)
        phase = torch.cumsum(advance, dim=-1)
        return log_mag, advance, torch.polar(log_mag.exp(), phase)

    def forward(self, z: Tensor) -> Tensor:
        """latent [B, 32, T] -> audio [B, C, T * latent_hop]."""
        spec = self.spectrum(z)[2]
        n = spec.shape[-1] * self.cfg.hop
        return istft(F.pad(spec, (0, 1)), self.cfg.n_fft, self.cfg.hop, n)


def anti_wrap(x: Tensor) -> Tensor:
    """|x| after wrapping to [-pi, pi] (APNet's anti-wrapping function)."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(dim // 2) * 4.0)
        self.mlp = nn.Sequential(nn.Linear(dim + 1, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, sigma: Tensor) -> Tensor:
        phase = sigma[:, None] * self.freqs[None] * 2 * math.pi
        return self.mlp(torch.cat([sigma[:, None], phase.sin(), phase.cos()], dim=-1))


class SpecDiffusionDecoder(nn.Module):
    """v = f(x_sigma, sigma, latent) over compressed complex STFT frames [B, C * 2 * bins, frames]; a small U-Net
    over frames whose deepest level runs at the latent rate and receives the latent."""

    def __init__(self, cfg: SpecDiffusionConfig, latent_channels: int = 32, latent_hop: int = 1024, channels: int = 2):
        super().__init__()
        self.cfg = cfg
        self.channels = channels
        bins = cfg.n_fft // 2 + 1
        self.io_channels = channels * 2 * bins
        ch = cfg.channels
        if cfg.hop * 2 ** (len(ch) - 1) != latent_hop:
            raise ValueError("the deepest level must run at the latent rate")
        self.time = TimeEmbedding(cfg.time_dim)
        self.to_in = nn.Conv1d(self.io_channels, ch[0], 1)
        self.inject = nn.Conv1d(latent_channels, ch[-1], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv1d(ch[i - 1], ch[i], 4, stride=2, padding=1) for i in range(1, len(ch)))
        self.enc = nn.ModuleList(nn.ModuleList(ConvNeXtBlock(c, cfg.time_dim) for _ in range(n))
                                 for c, n in zip(ch[:-1], cfg.blocks[:-1]))
        self.mid = nn.ModuleList(ConvNeXtBlock(ch[-1], cfg.time_dim) for _ in range(cfg.blocks[-1]))
        self.up = nn.ModuleList(nn.ConvTranspose1d(ch[i], ch[i - 1], 4, stride=2, padding=1)
                                for i in range(len(ch) - 1, 0, -1))
        self.dec = nn.ModuleList(nn.ModuleList(ConvNeXtBlock(c, cfg.time_dim) for _ in range(n))
                                 for c, n in zip(ch[-2::-1], cfg.blocks[-2::-1]))
        self.norm = nn.LayerNorm(ch[0])
        self.to_out = nn.Conv1d(ch[0], self.io_channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor, sigma: Tensor, z: Tensor) -> Tensor:
        t = self.time(sigma)
        h = self.to_in(x)
        skips = []
        for i, blocks in enumerate(self.enc):
            for block in blocks:
                h = block(h, t)
            skips.append(h)
            h = self.down[i](h)
        h = h + self.inject(z)
        for block in self.mid:
            h = block(h, t)
        for i, blocks in enumerate(self.dec):
            h = self.up[i](h) + skips.pop()
            for block in blocks:
                h = block(h, t)
        return self.to_out(self.norm(h.transpose(1, 2)).transpose(1, 2))

    # complex STFT <-> the diffused representation ---------------------------------------------------------------
    def to_frames(self, spec: Tensor) -> Tensor:
        """complex [B, C, bins, T] -> real [B, C * 2 * bins, T] (amplitude-compressed, scaled)."""
        c = self.cfg
        mag = spec.abs()
        comp = spec * (mag.clamp_min(1e-8) ** (c.compress - 1)) * c.scale
        x = torch.stack([comp.real, comp.imag], dim=2)  # [B, C, 2, bins, T]
        b, ch, _, f, t = x.shape
        return x.reshape(b, ch * 2 * f, t)

    def from_frames(self, x: Tensor) -> Tensor:
        c = self.cfg
        b, _, t = x.shape
        x = x.reshape(b, self.channels, 2, -1, t) / c.scale
        comp = torch.complex(x[:, :, 0], x[:, :, 1])
        mag = comp.abs()
        return comp * (mag.clamp_min(1e-8) ** (1 / c.compress - 1))


def griffin_lim(log_mag: Tensor, n_fft: int, hop: int, length: int, iterations: int = 32,
                momentum: float = 0.99, seed: int = 0) -> Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013) from log |STFT| [B, C, bins, frames] -> audio [B, C, length]."""
    mag = log_mag.exp() - LOG_EPS
    mag = mag.clamp_min(0)
    g = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=g)).to(mag.device)
    spec = mag * angles
    prev = torch.zeros_like(spec)
    for _ in range(iterations):
        rebuilt = stft(istft(spec, n_fft, hop, length), n_fft, hop)
        accel = rebuilt + momentum * (rebuilt - prev)
        prev = rebuilt
        spec = mag * torch.exp(1j * torch.angle(accel))
    return istft(spec, n_fft, hop, length)
