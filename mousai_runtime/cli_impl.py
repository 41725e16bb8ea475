"""The bodies of `mousai generate` and `mousai info` (cli.py wires them into typer).

Every bad input ends as one line `error: ...` on stderr and exit code 2, and no output file is created.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

EXIT_USAGE = 2


def printable(text: object) -> str:
    """Text for a terminal: control and format characters (an escape sequence in a manifest or a file name) as
    visible escapes (\\x1b, \\u200b), never sent raw."""
    import unicodedata

    def one(c: str) -> str:
        cat = unicodedata.category(c)
        if cat == "Cs":  # a byte of an undecodable file name (surrogateescape): the stream writes it back as is
            return c
        return ascii(c)[1:-1] if cat[0] == "C" or cat in ("Zl", "Zp") else c

    return "".join(one(c) for c in str(text))


def argv_text(text: str) -> str:
    """A command-line argument as the text the user typed: under the C / POSIX locale without UTF-8 mode Python
    decodes argv as ASCII (each other byte a surrogate), so valid UTF-8 is decoded again here; bytes that are
    not UTF-8 stay surrogates (and are refused as such)."""
    if isinstance(text, str) and any("\udc80" <= c <= "\udcff" for c in text):
        try:
            return os.fsencode(text).decode("utf-8")
        except (UnicodeError, ValueError):
            return text
    return text


def _err(msg: str) -> int:
    print(f"error: {printable(' '.join(str(msg).split()))}", file=sys.stderr)
    return EXIT_USAGE


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.2f} s"
    m, s = divmod(s, 60)
    return f"{int(m)} min {s:04.1f} s"


def generate_command(prompt: str, out: str, seconds: float = 10.0, steps: Optional[int] = None,
                     guidance: Optional[float] = None, seed: int = 0, model: str = "engines/default",
                     engine: str = "onnx", format: Optional[str] = None, loudness: Optional[float] = None,
                     spectrogram: Optional[str] = None, fp16_fallback: bool = False,
                     decoder_steps: Optional[int] = None, sampler: Optional[str] = None,
                     postfilter: bool = True, allow_clipping: bool = False) -> int:
    from .audio import AudioError, check_level, check_writable_target, normalize_loudness, require_optional, \
        resolve_format, spectrogram_png, write_audio
    from .files import atomic_write
    from .bundle import BundleError
    from .backends import BackendError
    from .files import UnsafePathError, check_apart
    from .pipeline import MAX_GUIDANCE, MAX_STEPS, Cancelled, InputError, Pipeline, check_prompt
    from .sampling import SAMPLERS, NonFiniteError

    # cheap checks first: nothing is loaded or written before all of these pass
    prompt = argv_text(prompt)
    try:
        check_prompt(prompt)
        if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise InputError(f"--seconds must be a finite number > 0, got {seconds}")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise InputError(f"--steps must be >= 1 and <= {MAX_STEPS}, got {steps}")
        if decoder_steps is not None and not 1 <= decoder_steps <= MAX_STEPS:
            raise InputError(f"--decoder-steps must be >= 1 and <= {MAX_STEPS}, got {decoder_steps}")
        if sampler is not None and sampler not in SAMPLERS:
            raise InputError(f"unknown --sampler {sampler!r}: use {' or '.join(SAMPLERS)}")
        if guidance is not None and not math.isfinite(guidance):
            raise InputError(f"--guidance must be a finite number, got {guidance}")
        if guidance is not None and abs(guidance) > MAX_GUIDANCE:
            raise InputError(f"--guidance must be between -{MAX_GUIDANCE:g} and {MAX_GUIDANCE:g}, got {guidance!r}")
        if loudness is not None and (not math.isfinite(loudness) or not -70 <= loudness <= 0):
            raise InputError(f"--loudness must be between -70 and 0 LUFS, got {loudness}")
        fmt = resolve_format(out, format)
        check_writable_target(out)
        check_apart(out, {"bundle folder": model}, "-o")
        if spectrogram:
            if Path(spectrogram).suffix.lower() != ".png":
                raise AudioError(f"--spectrogram must name a .png file, got {spectrogram!r}")
            check_writable_target(spectrogram)
            check_apart(spectrogram, {"bundle folder": model, "audio output": out}, "--spectrogram")
        if loudness is not None:  # optional packages: checked before the render, not after it
            require_optional("pyloudnorm", "--loudness")
        if spectrogram:
            require_optional("matplotlib", "--spectrogram")
        if str(engine).lower() not in ("onnx", "trt", "tensorrt", "torch"):
            raise InputError(f"unknown --engine {engine!r}: use onnx, trt or torch")
    except (InputError, AudioError, UnsafePathError) as e:
        return _err(str(e))

    t_load = time.perf_counter()
    try:
        pipe = Pipeline(model, backend=engine, fp16_fallback=fp16_fallback, postfilter=postfilter)
        pipe.check_inputs(prompt, seconds, steps, guidance, seed, decoder_steps)
    except (BundleError, BackendError, InputError) as e:
        return _err(str(e))
    load_s = time.perf_counter() - t_load

    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    names = {"text": "text     ", "generator": "generator", "decoder": "decoder  "}

    def stage(name: str, done: int, total: int) -> None:
        bar = bars.get(name)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[name] = tqdm(total=total, desc=names.get(name, name), unit="step", file=sys.stderr,
                                    leave=True, dynamic_ncols=True, disable=None)
        bar.n = done
        bar.refresh()

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            audio = pipe.generate(prompt, seconds, steps=steps, guidance=guidance, seed=seed, stage_progress=stage,
                                  decoder_steps=decoder_steps, sampler=sampler)
    except (InputError, NonFiniteError, BackendError, BundleError) as e:
        return _err(str(e))
    except MemoryError:
        return _err(f"out of memory generating {seconds:g} s: try a shorter clip")
    except (KeyboardInterrupt, Cancelled):
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    wall = time.perf_counter() - t0
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)

    sr = pipe.sample_rate
    try:
        note = ""
        check_level(audio, allow_clipping=True)  # NaN/inf, silence (the loudness meter cannot scale those)
        if loudness is not None:
            audio, res = normalize_loudness(audio, sr, loudness)
            note = f"; loudness {res.input_lufs:.1f} -> {res.output_lufs:.1f} LUFS, true peak {res.true_peak_db:.1f} dBTP"
            if res.limited_db > 0.05:
                note += f" (limited {res.limited_db:.1f} dB)"
        check_level(audio, allow_clipping)
        png = spectrogram_png(audio, sr, title=prompt) if spectrogram else None  # before the audio is written
        info = write_audio(out, audio, sr, fmt)
        if png is not None:
            atomic_write(spectrogram, lambda tmp: Path(tmp).write_bytes(png))
    except (AudioError, UnsafePathError) as e:
        return _err(str(e))
    except OSError as e:
        return _err(f"cannot write {out}: {e.strerror or e}")
    if info["clipped"]:
        print(f"warning: {info['clipped']} samples beyond +-1 were clipped for {fmt} (use --loudness or wav)",
              file=sys.stderr)
    audio_s = audio.shape[-1] / sr
    rtf = wall / audio_s
    print(f"wrote {os.path.abspath(out)} ({_seconds(audio_s)}, {sr} Hz stereo, {fmt} {info['subtype']}){note}")
    print(f"generated in {wall:.2f} s (+{load_s:.2f} s loading): real-time factor {rtf:.3f} "
          f"({1 / rtf:.1f}x faster than real time)" if rtf < 1 else
          f"generated in {wall:.2f} s (+{load_s:.2f} s loading): real-time factor {rtf:.3f} "
          f"({rtf:.1f}x slower than real time)")
    print(f"backend: {pipe.backend.describe()}")
    if spectrogram:
        print(f"spectrogram: {os.path.abspath(spectrogram)}")
    return 0


def info_command(bundle_dir: str) -> int:
    from .bundle import Bundle, BundleError

    try:
        b = Bundle.load(bundle_dir, verify=True)
    except BundleError as e:
        return _err(str(e))
    rows = b.summary_rows() + [("verified", f"all {len(b.manifest['files'])} files match their sha256")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{printable(k).ljust(width)}  {printable(v)}")
    return 0
