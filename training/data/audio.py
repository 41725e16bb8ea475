"""Audio I/O for the data pipeline.

Everything here returns ``float32`` arrays shaped ``[channels, frames]`` (channels first, like torch).

* :func:`load_audio` reads any format libsndfile reads (wav, flac, ogg/vorbis, opus, mp3, aiff...),
  converts to stereo and resamples with soxr (HQ) to the requested rate.
* :func:`read_frames` reads only a window of a file (seek + read), used for random crops.
* :func:`save_flac` writes FLAC atomically (temporary file in the same folder, then ``os.replace``).
* :func:`info` returns frames / rate / channels / duration and the file's text tags.

Unreadable, corrupt, truncated (a WAV whose data chunk is shorter than its header says) or empty files, and files
holding NaN or infinite samples, raise :class:`AudioError` (never a bare libsndfile error, never silently zeroed).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

PathLike = Union[str, os.PathLike]

#: File name extensions scanned as audio (whether libsndfile can decode a given file is checked on read).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

#: Tags libsndfile exposes (Vorbis comments, RIFF INFO, FLAC tags...).
_TAG_FIELDS = ("title", "artist", "album", "genre", "date", "comment", "copyright", "license", "tracknumber")


class AudioError(Exception):
    """An audio file cannot be read (missing, not audio, corrupt, truncated or empty)."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    samplerate: int
    channels: int
    frames: int
    format: str
    subtype: str
    tags: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.frames / float(self.samplerate) if self.samplerate else 0.0


def _open(path) -> sf.SoundFile:
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    try:
        f = sf.SoundFile(path)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{_name(path)}: cannot open audio ({e})") from e
    if isinstance(path, (str, os.PathLike)) and f.format in ("WAV", "WAVEX"):
        try:
            _check_wav_complete(path)
        except AudioError:
            f.close()
            raise
    return f


def _check_wav_complete(path: PathLike) -> None:
    """libsndfile quietly reads what is left of a truncated WAV: refuse one whose data chunk is shorter than its
    header says (sizes 0 and 0xFFFFFFFF mean "unknown" in streamed files and are accepted)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # RF64 / W64 / other containers: libsndfile's own checks
        order = "little" if head[:4] == b"RIFF" else "big"
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            hdr = fh.read(8)
            n = int.from_bytes(hdr[4:8], order)
            if hdr[:4] == b"data":
                have = size - pos - 8
                if n not in (0, 0xFFFFFFFF) and n > have:
                    raise AudioError(f"{path}: truncated WAV: the header promises {n:,} bytes of audio, the file "
                                     f"holds {have:,}")
                return
            pos += 8 + n + (n & 1)


def _name(path) -> str:
    return str(path) if isinstance(path, (str, os.PathLike)) else "<stream>"


def info(path: PathLike) -> AudioInfo:
    """Frames, rate, channels, format and text tags of an audio file. Raises :class:`AudioError`."""
    with _open(path) as f:
        tags = {}
        for k in _TAG_FIELDS:
            try:
                v = getattr(f, k)
            except Exception:
                v = None
            if v:
                v = str(v).strip()
                if v:
                    tags[k] = v
        if f.samplerate <= 0 or f.channels <= 0:
            raise AudioError(f"{_name(path)}: invalid header (rate {f.samplerate}, channels {f.channels})")
        return AudioInfo(_name(path), int(f.samplerate), int(f.channels), int(f.frames), str(f.format),
                         str(f.subtype), tags)


def to_stereo(x: np.ndarray) -> np.ndarray:
    """``[C, N]`` -> ``[2, N]`` float32.

    Mono is duplicated. More than two channels are folded down with the usual (ITU-like) weights for
    the standard layouts (3: L R C; 4: L R Ls Rs; 5: L R C Ls Rs; 6: L R C LFE Ls Rs; 7: 6 + Cs;
    8: L R C LFE Ls Rs Lb Rb): centre and surrounds at -3 dB, LFE dropped; other counts alternate
    channels left/right. Each side is divided by the sum of its weights so the fold-down cannot clip.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    c = x.shape[0]
    if c == 1:
        return np.repeat(x, 2, axis=0)
    if c == 2:
        return x
    g = np.float32(np.sqrt(0.5))
    layouts = {  # channel -> (weight left, weight right)
        3: [(1, 0), (0, 1), (g, g)],
        4: [(1, 0), (0, 1), (g, 0), (0, g)],
        5: [(1, 0), (0, 1), (g, g), (g, 0), (0, g)],
        6: [(1, 0), (0, 1), (g, g), (0, 0), (g, 0), (0, g)],
        7: [(1, 0), (0, 1), (g, g), (0, 0), (g, 0), (0, g), (g / 2, g / 2)],
        8: [(1, 0), (0, 1), (g, g), (0, 0), (g, 0), (0, g), (g, 0), (0, g)],
    }
    w = np.array(layouts.get(c, [(1, 0) if i % 2 == 0 else (0, 1) for i in range(c)]), dtype=np.float32)
    out = w.T @ x  # [2, N]
    out /= np.maximum(w.sum(axis=0), 1e-6)[:, None]
    return out.astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``[C, N]`` float32 with soxr (HQ). Returns a new array (or ``x`` if rates match)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    import soxr

    y = soxr.resample(np.ascontiguousarray(np.asarray(x, dtype=np.float32).T), sr_in, sr_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(y, dtype=np.float32).T)


def load_audio(path: PathLike, sr: int = 48000) -> np.ndarray:
    """Read a whole file as float32 ``[2, N]`` at ``sr`` Hz (stereo, soxr-HQ resampled).

    Raises :class:`AudioError` if the file is missing, not audio, corrupt or has no frames.
    """
    with _open(path) as f:
        src_sr = int(f.samplerate)
        try:
            data = f.read(dtype="float32", always_2d=True)  # [N, C]
        except Exception as e:
            raise AudioError(f"{_name(path)}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{_name(path)}: no audio frames")
    _check_finite(data, path)
    x = to_stereo(data.T)
    return resample(x, src_sr, sr) if sr and sr != src_sr else np.ascontiguousarray(x)


def read_frames(path: PathLike, start: int, frames: int) -> tuple[np.ndarray, int]:
    """Read ``frames`` frames starting at ``start`` (in the file's own rate) as float32 stereo ``[2, n]``.

    Only the requested window is decoded (seek + read). Returns ``(audio, file_samplerate)``; ``n`` may be
    shorter than ``frames`` at the end of the file. Raises :class:`AudioError`.
    """
    with _open(path) as f:
        try:
            if start:
                f.seek(int(start))
            data = f.read(int(frames), dtype="float32", always_2d=True)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{_name(path)}: cannot decode frames {start}..{start + frames} ({e})") from e
        sr = int(f.samplerate)
    _check_finite(data, path)
    return to_stereo(data.T), sr


def _check_finite(data: np.ndarray, path) -> None:
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{_name(path)}: {bad:,} NaN or infinite sample{'s' if bad != 1 else ''} (a corrupt float "
                         "file): refusing to use it")


def save_flac(path: PathLike, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    """Write ``audio`` (``[C, N]`` channels-first, or 1-D mono) as FLAC, atomically.

    The data goes to a temporary file in the destination folder which then replaces ``path`` with
    ``os.replace``, so a reader never sees a half-written file. Samples are clipped to [-1, 1].
    ``subtype`` is ``"PCM_16"`` (default) or ``"PCM_24"``.
    """
    path = Path(path)
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] > 8:
        raise ValueError(f"save_flac expects [channels, frames] with <= 8 channels, got shape {a.shape}")
    a = np.clip(np.nan_to_num(a), -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            sf.write(fh, np.ascontiguousarray(a.T), int(sr), format="FLAC", subtype=subtype)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_audio_bytes(data: bytes, sr: int = 48000) -> np.ndarray:
    """Like :func:`load_audio` for an in-memory file (e.g. a member of a zip/pk3 archive)."""
    return load_audio(io.BytesIO(data), sr)  # type: ignore[arg-type]
