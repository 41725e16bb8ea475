"""Writing audio: atomic wav/flac files, loudness normalisation (ITU-R BS.1770 via pyloudnorm) with a true-peak-safe
limiter (4x oversampled peak estimate), and an optional spectrogram PNG (matplotlib, Agg; imported lazily).

Every file is written with `files.atomic_write`: complete or absent, even after a SIGKILL or on a full disk.
"""
from __future__ import annotations

import errno
import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .files import atomic_write

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}


class AudioError(ValueError):
    """Bad output path/format or audio that cannot be processed (one-line message)."""


def resolve_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    if fmt is not None:
        f = str(fmt).lower().lstrip(".")
        if f not in FORMATS:
            raise AudioError(f"unknown format {fmt!r}: use wav or flac")
        return f
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise AudioError(f"cannot tell the format from {Path(path).name!r}: name it .wav or .flac, or pass --format")
    return suffix


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable_target(path: str | os.PathLike) -> Path:
    """The folder must exist and be writable (checked by creating and removing a temp file there)."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if str(path) == "-":
        raise AudioError("-o - would write a file named '-' (audio is not written to stdout): name a file")
    if not folder.is_dir():
        raise AudioError(f"output folder does not exist: {folder}")
    if len(os.fsencode(p.name)) > _name_max(folder):
        raise AudioError(f"output file name is {len(os.fsencode(p.name))} bytes long; this file system allows "
                         f"{_name_max(folder)}")
    if p.is_dir():
        raise AudioError(f"output path is a folder: {p}")
    try:
        files.existing_target(p)
    except files.UnsafePathError as e:
        raise AudioError(str(e)) from None
    try:
        fd = files.open_unnamed(folder)
        if fd is not None:
            os.close(fd)  # an unnamed file: nothing to remove, nothing left if we die here
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".probe", dir=folder)
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise AudioError(f"cannot write to {folder}: {e.strerror or e}") from None
    return p


def write_failure_reason(e: BaseException, folder: Path, size: int | None = None) -> str:
    """The most likely reason a write failed: libsndfile reports only 'System error.', so look at the free space
    and at this process's file-size limit (RLIMIT_FSIZE)."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE) if resource is not None else (-1, -1)
    if resource is not None and soft != resource.RLIM_INFINITY and (size is None or size >= soft - (1 << 16)):
        return f"{os.strerror(errno.EFBIG)} (the file size limit is {soft:,} bytes)"
    return " ".join(str(e).split()) or type(e).__name__


SILENCE_PEAK = 1e-6  # -120 dBFS: no working model renders a whole clip this quiet
MAX_PEAK = 4.0  # +12 dBFS: beyond this a clip is broken (a bad manifest or graph), not loud


def check_level(audio: np.ndarray, allow_clipping: bool = False) -> float:
    """The clip's peak; AudioError for NaN/inf, for silence, and (unless allow_clipping) for a peak above
    MAX_PEAK. Run before writing: a broken bundle must not leave an all-zero or 1e16 file that looks fine."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(peak):
        raise AudioError("the audio contains NaN or infinity: nothing written")
    if peak < SILENCE_PEAK:
        raise AudioError(f"the audio is silent (peak {peak:.1e}): nothing written (a broken bundle? check it with "
                         "`mousai info`)")
    if peak > MAX_PEAK and not allow_clipping:
        raise AudioError(f"the audio peaks at {peak:.3g} ({20 * math.log10(peak):+.1f} dBFS, over the "
                         f"{20 * math.log10(MAX_PEAK):+.0f} dBFS a working model stays under): nothing written; "
                         "--loudness normalises it, --allow-clipping writes it anyway")
    return peak


def _atomic_write(path: str | os.PathLike, write) -> Path:
    try:
        return atomic_write(path, write)
    except files.UnsafePathError as e:  # the target became a FIFO / device / link while we rendered
        raise AudioError(str(e)) from None


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, fmt: str | None = None,
                block: int = 1 << 18) -> dict:
    """Write [channels, N] float audio atomically. wav: 32-bit float; flac: 24-bit (samples beyond +-1 are clipped).

    Checked and written `block` samples at a time, so writing adds a few MB, not copies of the clip.
    Returns {"path", "format", "subtype", "seconds", "clipped"}.
    """
    import soundfile as sf

    f = resolve_format(path, fmt)
    container, subtype = FORMATS[f]
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise AudioError(f"audio must be [channels, samples], got shape {audio.shape}")
    n = audio.shape[-1]
    pcm = subtype.startswith("PCM")
    clipped = 0
    for s in range(0, n, block):
        seg = audio[:, s:s + block]
        if not np.isfinite(seg).all():
            raise AudioError("audio contains NaN or infinity: refusing to write it")
        if pcm:
            clipped += int(np.count_nonzero(np.abs(seg) > 1.0))

    def write(tmp: str) -> None:
        try:
            with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=audio.shape[0], format=container,
                              subtype=subtype) as out:
                for s in range(0, n, block):
                    seg = audio[:, s:s + block]
                    out.write(np.ascontiguousarray((np.clip(seg, -1.0, 1.0) if pcm and clipped else seg).T))
        except sf.LibsndfileError as e:  # a RuntimeError without errno ("System error."): disk full, size limit
            folder = Path(path).parent if str(Path(path).parent) else Path(".")
            try:
                size = os.stat(tmp).st_size
            except OSError:
                size = None
            raise AudioError(f"cannot write {path}: {write_failure_reason(e, folder, size)}") from None

    _atomic_write(path, write)
    return {"path": str(path), "format": f, "subtype": subtype, "seconds": n / sample_rate, "clipped": clipped}


# ------------------------------------------------------------------------------------------------- true peak


def _kaiser_sinc(factor: int, taps_per_phase: int = 16, beta: float = 8.0) -> np.ndarray:
    """Odd-length windowed-sinc interpolation filter (cut-off at the original Nyquist), gain `factor`."""
    n = factor * taps_per_phase + 1
    k = np.arange(n) - (n - 1) / 2
    h = np.sinc(k / factor) * np.kaiser(n, beta)
    return (h / h.sum() * factor).astype(np.float64)


def true_peak_per_sample(x: np.ndarray, factor: int = 4, block: int = 1 << 20) -> np.ndarray:
    """[N] float32: the largest |value| over channels and the `factor` band-limited points of each input sample
    (ITU-R BS.1770 true peak: a polyphase windowed-sinc interpolator, block by block so memory stays bounded)."""
    x = np.asarray(x, dtype=np.float32)
    c, n = x.shape
    h = _kaiser_sinc(factor)
    half = (len(h) - 1) // 2
    phases = []  # y[factor * i + p] = sum_d x[i - d] h[factor * d + p + half]
    for p in range(factor):
        d = np.arange(-((p + half) // factor), (len(h) - 1 - p - half) // factor + 1)
        phases.append((int(d[0]), h[factor * d + p + half].astype(np.float32)))
    ctx = len(h) // factor + 2
    out = np.zeros(n, dtype=np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        a, b = max(0, s - ctx), min(n, e + ctx)
        for ch in range(c):
            seg = x[ch, a:b]
            for d0, g in phases:
                full = np.convolve(seg, g)  # full[m] = sum_k seg[m - k] g[k]; x index i <-> m = i - a - d0
                lo = s - a - d0
                np.maximum(out[s:e], np.abs(full[lo:lo + (e - s)]), out=out[s:e])
    return out


def true_peak_db(x: np.ndarray, factor: int = 4) -> float:
    p = float(true_peak_per_sample(x, factor).max(initial=0.0))
    return 20 * math.log10(p) if p > 0 else -math.inf


def _running_min(g: np.ndarray, width: int) -> np.ndarray:
    """out[i] = min(g[i - width + 1 .. i + width - 1]) in O(N) (van Herk / Gil-Werman, vectorised)."""
    if width <= 1:
        return g.copy()
    n = len(g)
    pad = width - 1
    gp = np.concatenate([np.full(pad, np.inf, g.dtype), g, np.full(pad + width, np.inf, g.dtype)])
    m = len(gp) // width * width
    blocks = gp[:m].reshape(-1, width)
    pre = np.minimum.accumulate(blocks, axis=1).ravel()
    suf = np.minimum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()
    fwd = np.minimum(suf[:n + pad], pre[width - 1:width - 1 + n + pad])  # fwd[j] = min(gp[j .. j + width - 1])
    # output i covers gp[i .. i + 2 pad] = two windows of `width`
    return np.minimum(fwd[:n], fwd[pad:pad + n])


def limit_true_peak(x: np.ndarray, sample_rate: int, ceiling_db: float = -1.0, lookahead_ms: float = 1.5,
                    factor: int = 4) -> tuple[np.ndarray, float]:
    """Brick-wall limiter: gain <= ceiling / true peak around every sample, smoothed (a min filter of radius w-1,
    then a box filter of width w, which never exceeds the required gain), then a final scale if interpolation
    left any excess. Returns (float32 audio, max gain reduction in dB)."""
    ceiling = 10 ** (ceiling_db / 20)
    x = np.asarray(x, dtype=np.float32)
    peak = true_peak_per_sample(x, factor)
    if peak.max(initial=0.0) <= ceiling:
        return x, 0.0
    need = np.minimum(np.float32(1.0), np.float32(ceiling) / np.maximum(peak, np.float32(1e-12)))
    del peak
    w = max(1, int(round(lookahead_ms * 1e-3 * sample_rate)))
    g = _running_min(need, w)
    del need
    half = w // 2
    smooth = np.convolve(np.pad(g, (half, w - 1 - half), mode="edge"), np.full(w, 1.0 / w, np.float32), "valid")
    gain = np.minimum(smooth.astype(np.float32), g)  # rounding guard
    y = x * gain[None, :]
    tp = float(true_peak_per_sample(y, factor).max(initial=0.0))
    if tp > ceiling:
        scale = np.float32(ceiling / tp)
        y *= scale
        gain *= scale
    return y, float(-20 * math.log10(max(float(gain.min()), 1e-12)))


@dataclass
class LoudnessResult:
    input_lufs: float
    output_lufs: float
    true_peak_db: float
    gain_db: float
    limited_db: float


def normalize_loudness(audio: np.ndarray, sample_rate: int, target_lufs: float,
                       true_peak_ceiling_db: float = -1.0) -> tuple[np.ndarray, LoudnessResult]:
    """Scale [C, N] audio to `target_lufs` integrated loudness (BS.1770-4), then keep the true peak <= ceiling."""
    try:
        import pyloudnorm
    except ImportError:
        raise AudioError("loudness normalisation needs pyloudnorm: pip install 'mousai[audio]'") from None
    if not math.isfinite(target_lufs) or not -70.0 <= target_lufs <= 0.0:
        raise AudioError(f"loudness target must be between -70 and 0 LUFS, got {target_lufs}")
    if audio.shape[-1] < int(0.4 * sample_rate):
        raise AudioError("loudness normalisation needs at least 0.4 s of audio (one BS.1770 gating block)")
    meter = pyloudnorm.Meter(sample_rate)
    x = np.asarray(audio, dtype=np.float32)
    loud = float(meter.integrated_loudness(x.T))
    if not math.isfinite(loud):
        raise AudioError("the audio is silent: cannot normalise its loudness")
    gain_db = target_lufs - loud
    y = x * np.float32(10 ** (gain_db / 20))
    y, limited = limit_true_peak(y, sample_rate, true_peak_ceiling_db)
    out_lufs = float(meter.integrated_loudness(y.T))
    return y, LoudnessResult(loud, out_lufs, true_peak_db(y), gain_db, limited)


# ------------------------------------------------------------------------------------------------- spectrogram


def write_spectrogram(path: str | os.PathLike | None, audio: np.ndarray, sample_rate: int, title: str | None = None,
                      n_fft: int = 2048, hop: int = 512, max_columns: int = 3000) -> Path | bytes:
    """A log-magnitude spectrogram PNG of the mono mix (matplotlib Agg, no global backend change); path None:
    the PNG's bytes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AudioError("the spectrogram needs matplotlib: pip install 'mousai[audio]'") from None
    from .stft import magnitude_stft

    p = Path(path) if path is not None else Path("x.png")
    if p.suffix.lower() != ".png":
        raise AudioError(f"the spectrogram is written as PNG: name it .png, not {p.name!r}")
    mono = np.asarray(audio, dtype=np.float32).mean(axis=0, keepdims=True)
    if mono.shape[-1] <= n_fft // 2:
        mono = np.pad(mono, ((0, 0), (0, n_fft)))
    step = max(1, int(math.ceil(mono.shape[-1] / hop / max_columns)))
    mag = magnitude_stft(mono, n_fft, hop * step, center=True, normalized=True)
    db = 20 * np.log10(np.maximum(mag, 1e-6))
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    seconds = audio.shape[-1] / sample_rate
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 90, vmax=db.max(),
                   extent=(0, seconds, 0, sample_rate / 2000))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    if title:
        ax.set_title(title[:100])
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    return _atomic_write(p, lambda tmp: fig.savefig(tmp, format="png"))


def spectrogram_png(audio: np.ndarray, sample_rate: int, title: str | None = None) -> bytes:
    """The spectrogram PNG as bytes: made before the audio is written, so a failure leaves no audio file behind."""
    return write_spectrogram(None, audio, sample_rate, title)  # type: ignore[return-value]


def require_optional(module: str, what: str) -> None:
    """AudioError now, before any rendering, when an optional package a flag needs is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise AudioError(f"{what} needs {module}, which is not installed: pip install 'mousai[audio]'")
