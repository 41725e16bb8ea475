"""Text -> latent -> audio with a bundle: `Pipeline.generate` (whole clip) and `Pipeline.stream` (blocks as decoded).

    pipe = Pipeline("engines/default")                   # numpy + ONNX Runtime; no torch
    audio = pipe.generate("calm ambient pads", seconds=10, seed=0)   # float32 [2, N] at pipe.sample_rate

Long clips: the generator runs on overlapping windows of the latent (mousai_runtime/windowed.py) when the latent is
longer than `window_frames` (manifest generator_info.window_frames, else 512), so its memory is flat in the clip
length; shorter latents take exactly one generator call per step. An autoencoder-only bundle (manifest kind
"autoencoder") supports `encode` / `decode` only.

One Pipeline may be used from several threads at once: the only shared mutable state (the per-prompt text cache and
the tokenizer) is behind a lock; sessions are created once and ORT's run() is thread-safe; every call has its own
noise and buffers. Same prompt, seconds, steps, guidance and seed -> the same audio.
"""
from __future__ import annotations

import copy
import math
import os
import re
import threading
import unicodedata
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from . import faults
from .bundle import Bundle, BundleError
from .decode import ChunkedDecoder, GlobalNoise, seed_words
from .postfilter import PostFilter
from .backends import Backend, BackendError, make_backend
from .sampling import SAMPLERS, NonFiniteError, linear_sigmas, sample
from .stft import magnitude_stft
from .overlap import round_up
from .windowed import DEFAULT_OVERLAP_FRAMES, DEFAULT_WINDOW_FRAMES, WindowedModel, check_window, plan_windows

AUTOENCODER_ONLY = "this bundle is an autoencoder only (no text encoder / generator): use encode/decode"

MAX_PROMPT_CHARS = 4000  # the text encoder reads max_length (64) tokens; longer prompts are truncated with a warning
from .limits import MAX_GUIDANCE, MAX_SECONDS, MAX_STEPS  # noqa: E402 (one copy of the limits; re-exported)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 / C1 controls but tab, newline, CR
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # what undecodable bytes become in sys.argv (surrogateescape)


class InputError(ValueError):
    """A bad argument to generate/stream/encode/decode (empty prompt, bad seconds/steps/guidance/seed/audio)."""


class Fp16FallbackWarning(RuntimeWarning):
    """An fp16 graph gave NaN/inf and its fp32 fallback graph was used instead (Pipeline(fp16_fallback=True))."""


def check_prompt(prompt: Any) -> str:
    """The prompt if it is usable text, else InputError (one line): empty / whitespace-only, longer than
    MAX_PROMPT_CHARS characters, control characters, or undecodable bytes (lone surrogates)."""
    if isinstance(prompt, (bytes, bytearray)):
        raise InputError("the prompt must be text (str), not bytes: decode it first")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty: describe the music, e.g. \"calm ambient pads with soft piano\"")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,} (the "
                         "text encoder reads only its first 64 tokens)")
    if all(c.isspace() or unicodedata.category(c) in ("Cf", "Zs", "Zl", "Zp", "Mn", "Me") for c in prompt):
        raise InputError("the prompt has no visible characters (only spaces or invisible ones such as U+200B): "
                         "describe the music, e.g. \"calm ambient pads with soft piano\"")
    m = _SURROGATE.search(prompt)
    if m:
        raise InputError(f"the prompt is not valid UTF-8 text (undecodable byte at character {m.start() + 1})")
    m = _CONTROL.search(prompt)
    if m:
        raise InputError(f"the prompt contains the control character U+{ord(m.group()):04X} at character "
                         f"{m.start() + 1}: remove it")
    return prompt


class Cancelled(Exception):
    """The render was cancelled through its cancel token."""


class CancelToken:
    """A thread-safe flag: cancel() from any thread; the render stops within one denoising step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    cancelled = property(is_set)


def is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


ProgressFn = Callable[[float], None]
StageFn = Callable[[str, int, int], None]  # (stage, done, total): stage in text, generator, decoder


class _Tracker:
    """Progress over all model calls of one render (each call one unit) + cancel checks."""

    def __init__(self, total: int, progress: ProgressFn | None, stage_fn: StageFn | None, cancel: Any):
        self.total, self.done = max(1, total), 0
        self.progress, self.stage_fn, self.cancel = progress, stage_fn, cancel
        self.stage_done: dict[str, int] = {}
        self.stage_total: dict[str, int] = {}
        self.calls: dict[str, int] = {}  # model calls per component in this render (the fault hook counts them)
        self.fp32: set[str] = set()  # components switched to their fp32 fallback graph for the rest of the render
        self.where: dict[str, Callable[[int], str]] = {}  # component -> call index -> "denoising step k/n"

    def check(self) -> None:
        if is_cancelled(self.cancel):
            raise Cancelled("cancelled")

    def start(self, stage: str, total: int) -> None:
        self.stage_done[stage], self.stage_total[stage] = 0, total
        if self.stage_fn is not None:
            self.stage_fn(stage, 0, total)

    def step(self, stage: str) -> None:
        self.done += 1
        self.stage_done[stage] = self.stage_done.get(stage, 0) + 1
        if self.stage_fn is not None:
            self.stage_fn(stage, self.stage_done[stage], self.stage_total.get(stage, 0))
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total))
        self.check()


class Pipeline:
    def __init__(self, bundle_dir: str | os.PathLike = "engines/default", backend: str | Backend = "onnx",
                 providers: list[str] | str | None = None, threads: int | None = None, *,
                 checkpoint: str | os.PathLike | None = None, verify: bool = True, chunk_seconds: float = 30.0,
                 text_cache: int = 32, prepare: bool = True, window_frames: int | None = None,
                 overlap_frames: int | None = None, window_batch: int = 1, balance_chunks: bool = True,
                 fp16_fallback: bool = False, postfilter: bool = True):
        """`window_frames` / `overlap_frames` (latent frames) override the manifest's generator windows (rounded up to
        the generator's length multiple; overlap <= window / 2); `window_batch` windows go into one generator call.
        `chunk_seconds` is the longest decoder chunk; `balance_chunks` decodes a clip in the fewest chunks that
        long, shortened evenly (benchmarks/RESULTS.md: the overlaps are the only frames decoded twice).

        `fp16_fallback`: with an fp16 bundle exported with `--fp16 --fp16-fallback` (models.*.fp32_file), a model
        call whose fp16 output holds NaN/inf is run again with that component's fp32 graph, which then serves the
        rest of the render (an Fp16FallbackWarning says so). Non-finite values are never replaced by anything else:
        if the fp32 graph fails too, the render raises NonFiniteError. No effect on an fp32 bundle.

        `postfilter`: with a bundle that has one (manifest `postfilter`), put every decoded chunk back on the band
        envelope its latent predicts (mousai_runtime/postfilter.py); False decodes with the DMAE alone."""
        if not isinstance(bundle_dir, (str, os.PathLike)):
            raise InputError(f"bundle_dir must be a folder path (str or os.PathLike), got {type(bundle_dir).__name__}")
        if chunk_seconds is not None and (isinstance(chunk_seconds, bool) or not isinstance(
                chunk_seconds, (int, float, np.integer, np.floating)) or not math.isfinite(chunk_seconds)
                or not 0 < chunk_seconds <= MAX_SECONDS):
            raise InputError(f"chunk_seconds must be a number > 0 and <= {MAX_SECONDS:g} (or None: one chunk), got "
                             f"{chunk_seconds!r}")
        if isinstance(text_cache, bool) or not isinstance(text_cache, (int, np.integer)) or text_cache < 0:
            raise InputError(f"text_cache must be an integer >= 0, got {text_cache!r}")
        self.bundle = Bundle.load(bundle_dir, verify=verify)
        self.backend = make_backend(backend, self.bundle, providers=providers, threads=threads, checkpoint=checkpoint)
        b = self.bundle
        if not isinstance(fp16_fallback, bool):
            raise InputError(f"fp16_fallback must be true or false, got {fp16_fallback!r}")
        self.fp16_fallback = fp16_fallback and b.precision == "fp16"
        if self.fp16_fallback:
            missing = [c for c in b.models if not b.has_fp32_fallback(c)]
            if missing:
                raise BundleError(f"{b.path}: this fp16 bundle has no fp32 fallback graphs for {missing}: re-export "
                                  "it with `mousai export --fp16 --fp16-fallback`")
            if not getattr(self.backend, "supports_fp32_fallback", False):
                raise BackendError(f"--fp16-fallback needs --engine onnx (the {self.backend.kind} backend cannot run "
                                  "the fp32 fallback graphs)")
        self.kind = b.kind
        self.tokenizer = None if b.is_autoencoder else self._load_tokenizer()
        self.window_frames, self.overlap_frames, self.window_batch = None, None, 1
        if not b.is_autoencoder:
            self.window_frames, self.overlap_frames = self._windows(window_frames, overlap_frames)
            if isinstance(window_batch, bool) or not isinstance(window_batch, (int, np.integer)) or window_batch < 1:
                raise InputError(f"window_batch must be an integer >= 1, got {window_batch!r}")
            self.window_batch = int(window_batch)
        self.sample_rate, self.hop = b.sample_rate, b.hop
        chunk_frames = None if chunk_seconds is None else max(1, round(chunk_seconds * b.sample_rate / b.hop))
        self.decoder = ChunkedDecoder(self._decoder_fn, hop=b.hop, multiple_frames=b.decoder_multiple_frames,
                                      audio_scale=b.audio_scale, receptive_field=b.receptive_field,
                                      channels=b.channels, chunk_frames=chunk_frames, balance=balance_chunks)
        if not isinstance(postfilter, bool):
            raise InputError(f"postfilter must be true or false, got {postfilter!r}")
        self.postfilter = PostFilter.from_bundle(b) if postfilter and b.postfilter is not None else None
        if self.postfilter is not None:
            self.decoder.post_fn = self.postfilter.apply
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._text_cache_size = text_cache
        if prepare:
            self.backend.prepare(["encoder", "decoder"] if b.is_autoencoder else ["text_encoder", "generator", "decoder"])

    def _windows(self, window: int | None, overlap: int | None) -> tuple[int, int]:
        b, m = self.bundle, self.bundle.generator_multiple
        w = window if window is not None else b.window_frames if b.window_frames is not None else DEFAULT_WINDOW_FRAMES
        o = overlap if overlap is not None else b.overlap_frames if b.overlap_frames is not None else \
            DEFAULT_OVERLAP_FRAMES
        for name, v in (("window_frames", w), ("overlap_frames", o)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        try:
            return check_window(round_up(int(w), m), round_up(int(o), m), m)
        except ValueError as e:
            raise InputError(str(e)) from None

    def _run(self, component: str, feeds: dict[str, np.ndarray], tracker: "_Tracker | None" = None) -> np.ndarray:
        """One model call through the backend: the fault test hook (mousai_runtime.faults, inactive unless a test
        turns it on) and, with fp16_fallback, the fp32 re-run of a call whose fp16 output is not finite. A
        non-finite output is returned as it is (the caller reports it, naming the step)."""
        t = tracker if tracker is not None else _Tracker(1, None, None, None)
        call = t.calls.get(component, 0)
        t.calls[component] = call + 1
        if component in t.fp32:
            return faults.apply(component, call, "fp32", self.backend.run_fp32(component, feeds))
        out = faults.apply(component, call, self.bundle.precision, self.backend.run(component, feeds))
        if self.fp16_fallback and not np.isfinite(out).all():
            where = t.where.get(component, lambda i: "in its output")(call)
            warnings.warn(Fp16FallbackWarning(
                f"the fp16 {component} gave NaN/inf {where}: re-ran it with its fp32 graph, which serves the "
                "rest of this render"), stacklevel=2)
            t.fp32.add(component)
            out = faults.apply(component, call, "fp32", self.backend.run_fp32(component, feeds))
        return out

    def _require_generator(self) -> None:
        if self.bundle.is_autoencoder:
            raise InputError(AUTOENCODER_ONLY)

    # ---------------------------------------------------------------------------------------------- text
    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        t = self.bundle.text
        try:
            tok = Tokenizer.from_str(self.bundle.read_bytes(t["tokenizer"]).decode("utf-8"))
        except BundleError:
            raise
        except Exception as e:
            raise BundleError(f"{self.bundle.path}: unreadable tokenizer {t['tokenizer']}: {' '.join(str(e).split())}")
        direction = (tok.padding or {}).get("direction", "right")
        pad_token = tok.id_to_token(t["pad_id"]) or "[PAD]"
        tok.enable_truncation(max_length=t["max_length"])
        tok.enable_padding(direction=direction, pad_id=t["pad_id"], pad_token=pad_token, length=t["max_length"])
        return tok

    def text_states(self, prompt: str, _tracker: "_Tracker | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """(states [1, max_length, features], mask [1, max_length]) float32, cached per prompt."""
        self._require_generator()
        check_prompt(prompt)
        with self._lock:
            hit = self._text_cache.get(prompt)
            if hit is not None:
                self._text_cache.move_to_end(prompt)
                return hit
            enc = self.tokenizer.encode(prompt)
        if enc.overflowing:
            warnings.warn(f"the prompt is longer than {self.bundle.text['max_length']} tokens and was truncated",
                          stacklevel=3)
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.asarray([enc.attention_mask], dtype=np.int64)
        states = self._run("text_encoder", {"input_ids": ids, "attention_mask": mask}, _tracker).astype(np.float32)
        if not np.isfinite(states).all():
            raise NonFiniteError("text_encoder")
        states.setflags(write=False)
        maskf = mask.astype(np.float32)
        maskf.setflags(write=False)
        with self._lock:
            self._text_cache[prompt] = (states, maskf)
            while len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)
        return states, maskf

    # ---------------------------------------------------------------------------------------------- checks
    def check_inputs(self, prompt: Any, seconds: Any, steps: Any = None, guidance: Any = None, seed: Any = 0,
                     decoder_steps: Any = None) -> tuple[str, float, int, float, int, int]:
        """Validate and fill defaults; raises InputError (a ValueError) with a one-line message."""
        self._require_generator()
        d = self.bundle.defaults
        check_prompt(prompt)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)):
            raise InputError(f"seconds must be a number, got {seconds!r}")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds <= 0:
            raise InputError(f"seconds must be a finite number > 0, got {seconds}")
        if seconds > d["max_seconds"]:
            raise InputError(f"seconds {seconds!r} is longer than this bundle's maximum of {d['max_seconds']:g} s")
        if round(seconds * self.sample_rate) < 1:
            raise InputError(f"seconds {seconds!r} is shorter than one sample")
        steps = _check_steps("steps", d["generator_steps"] if steps is None else steps)
        decoder_steps = _check_steps("decoder steps", d["decoder_steps"] if decoder_steps is None else decoder_steps)
        guidance = d["guidance"] if guidance is None else guidance
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(guidance)):
            raise InputError(f"guidance must be a finite number, got {guidance!r}")
        if abs(float(guidance)) > MAX_GUIDANCE:
            raise InputError(f"guidance must be between -{MAX_GUIDANCE:g} and {MAX_GUIDANCE:g}, got {guidance!r}")
        return prompt, seconds, steps, float(guidance), _check_seed(seed), decoder_steps

    def samplers(self, sampler: Any = None, decoder_sampler: Any = None) -> tuple[str, str]:
        """(generator sampler, decoder sampler): the arguments, else the manifest's defaults.sampler /
        defaults.decoder_sampler (missing = "ddim"). A `sampler` given without `decoder_sampler` sets both."""
        b = self.bundle
        gen = b.sampler if sampler is None else sampler
        dec = decoder_sampler if decoder_sampler is not None else sampler if sampler is not None else \
            b.decoder_sampler
        for name, v in (("sampler", gen), ("decoder sampler", dec)):
            if not isinstance(v, str) or v not in SAMPLERS:
                raise InputError(f"{name} must be one of {', '.join(SAMPLERS)}, got {v!r}")
        return gen, dec

    # ---------------------------------------------------------------------------------------------- models
    def _decoder_fn(self, x: np.ndarray, sigma: np.ndarray, latent: np.ndarray) -> np.ndarray:
        return self._run("decoder", {"x": x, "sigma": sigma, "latent": latent})

    def _decoder_for(self, tracker: _Tracker, steps: int) -> ChunkedDecoder:
        """The chunked decoder with its model calls counted in this render's tracker (a shallow copy: no state)."""
        dec = copy.copy(self.decoder)
        dec.model_fn = lambda x, sigma, latent: self._run("decoder", {"x": x, "sigma": sigma, "latent": latent},
                                                          tracker)
        tracker.where["decoder"] = lambda i: f"in chunk {i // steps + 1} at denoising step {i % steps + 1}/{steps}"
        return dec

    def frames_for(self, seconds: float) -> tuple[int, int]:
        """(latent frames, audio samples) of a clip."""
        n = int(round(seconds * self.sample_rate))
        return -(-n // self.hop), n

    def window_plan(self, frames: int):
        """The generator's WindowPlan for a clip of `frames` latent frames, or None when one call per step does."""
        self._require_generator()
        t_gen = round_up(frames, self.bundle.generator_multiple)
        if t_gen <= self.window_frames:
            return None
        return plan_windows(t_gen, self.window_frames, self.overlap_frames, self.bundle.generator_multiple)

    def generator_calls(self, frames: int, steps: int) -> int:
        """Generator calls for a clip of `frames` latent frames (progress units)."""
        plan = self.window_plan(frames)
        return steps * (1 if plan is None else -(-len(plan) // self.window_batch))

    def _generate_latent(self, prompt: str, frames: int, steps: int, guidance: float, seed: int,
                         tracker: _Tracker, sampler: str = "ddim") -> np.ndarray:
        tracker.start("text", 1)
        tracker.check()
        states, mask = self.text_states(prompt, tracker)
        tracker.step("text")
        b = self.bundle
        t_gen = round_up(frames, b.generator_multiple)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0, seed_words(seed)])))
        x = rng.standard_normal((1, b.latent_channels, t_gen), dtype=np.float32)
        g = np.full((1,), guidance, dtype=np.float32)

        def model_fn(xx: np.ndarray, sigma: np.ndarray) -> np.ndarray:
            tracker.check()
            n = xx.shape[0]
            if n == 1:
                feeds = {"text_states": states, "text_mask": mask, "guidance": g}
            else:  # several windows in one call
                feeds = {"text_states": np.repeat(states, n, 0), "text_mask": np.repeat(mask, n, 0),
                         "guidance": np.full((n,), guidance, dtype=np.float32)}
            return self._run("generator", {"x": xx, "sigma": sigma, **feeds}, tracker)

        plan = self.window_plan(frames)
        per_step = 1 if plan is None else -(-len(plan) // self.window_batch)
        tracker.where["generator"] = lambda i: f"at denoising step {i // per_step + 1}/{steps}"
        if plan is None:  # the whole latent in one call per step
            tracker.start("generator", steps)
            z = sample(sampler, model_fn, x, linear_sigmas(steps), callback=lambda i, _: tracker.step("generator"),
                       component="generator")
        else:  # overlapping windows, v combined with complementary raised-cosine weights, then one DDIM update
            windowed = WindowedModel(model_fn, plan, self.window_batch, on_call=lambda: tracker.step("generator"))
            tracker.start("generator", steps * windowed.calls_per_step)
            z = sample(sampler, windowed, x, linear_sigmas(steps), component="generator")
        return np.ascontiguousarray(z[..., :frames])

    def generate_latent(self, prompt: str, seconds: float, steps: int | None = None, guidance: float | None = None,
                        seed: int = 0, progress: ProgressFn | None = None, cancel: Any = None,
                        sampler: str | None = None) -> np.ndarray:
        """The generator's latent [1, C, frames] for a clip of `seconds`."""
        prompt, seconds, steps, guidance, seed, _ = self.check_inputs(prompt, seconds, steps, guidance, seed)
        sampler, _ = self.samplers(sampler)
        frames, _ = self.frames_for(seconds)
        tracker = _Tracker(1 + self.generator_calls(frames, steps), progress, None, cancel)
        return self._generate_latent(prompt, frames, steps, guidance, seed, tracker, sampler)

    def decode(self, latent: np.ndarray, steps: int | None = None, seed: int = 0, samples: int | None = None,
               progress: ProgressFn | None = None, cancel: Any = None, sampler: str | None = None) -> np.ndarray:
        """latent [1, C, T] -> audio [2, samples or T * hop] (chunked, noise from `seed`; `sampler` default: the
        manifest's defaults.decoder_sampler)."""
        _, sampler = self.samplers(None, sampler)
        steps = _check_steps("decoder steps", self.bundle.defaults["decoder_steps"] if steps is None else steps)
        seed = _check_seed(seed)
        latent = _float_array(latent, "latent")
        if latent.ndim != 3 or latent.shape[0] != 1 or latent.shape[1] != self.bundle.latent_channels \
                or latent.shape[2] < 1:
            raise InputError(f"latent must be [1, {self.bundle.latent_channels}, frames], got {latent.shape}")
        if not np.isfinite(latent).all():
            raise InputError("the latent contains NaN or infinite values")
        self._check_length(latent.shape[2] * self.hop, "latent")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))
                                    or not 0 < samples <= latent.shape[2] * self.hop):
            raise InputError(f"samples must be an integer in [1, {latent.shape[2] * self.hop}], got {samples!r}")
        tracker = _Tracker(self.decoder.total_steps(latent.shape[-1], steps), progress, None, cancel)
        return self._decoder_for(tracker, steps).decode(latent, steps, GlobalNoise(seed, self.bundle.channels),
                                                        samples, on_step=lambda: tracker.step("decoder"),
                                                        sampler=sampler)[0]

    def _check_length(self, samples: int, what: str) -> None:
        top = self.bundle.defaults.get("max_seconds")
        if top is not None and samples > top * self.sample_rate:
            raise InputError(f"the {what} is {samples:,} samples ({samples / self.sample_rate!r} s) long, more than "
                             f"this bundle's maximum of {top:g} s")

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """audio [2, L] (any L, audio units) -> latent [1, C, ceil(L / hop)] (the encoder's magnitude STFT in numpy)."""
        kind = getattr(getattr(audio, "dtype", None), "kind", "f")
        if kind in "iub":
            raise InputError(f"audio must be floating point (samples in [-1, 1]), got {audio.dtype} samples: convert "
                             "integer PCM first, e.g. x.astype(np.float32) / 32768 for int16")
        audio = _float_array(audio, "audio")
        if audio.ndim != 2 or audio.shape[0] != self.bundle.channels or audio.shape[1] < 1:
            raise InputError(f"audio must be [{self.bundle.channels}, samples], got {audio.shape}")
        if not np.isfinite(audio).all():
            raise InputError("the audio contains NaN or infinite samples")
        self._check_length(audio.shape[1], "audio")
        n = audio.shape[1]
        frames = -(-n // self.hop)
        padded = np.zeros((1, audio.shape[0], frames * self.hop), np.float32)
        padded[0, :, :n] = audio
        s = self.bundle.stft
        mag = magnitude_stft(padded, s["n_fft"], s["hop"], s["center"], s["normalized"])
        if not np.isfinite(mag).all():
            raise InputError("the audio is too loud to analyse (its STFT overflows float32): scale it to [-1, 1]")
        z = self._run("encoder", {"magnitude": mag})
        if not np.isfinite(z).all():
            raise NonFiniteError("encoder")
        return np.ascontiguousarray(z[..., :frames])

    # ---------------------------------------------------------------------------------------------- generation
    def stream(self, prompt: str, seconds: float, steps: int | None = None, guidance: float | None = None,
               seed: int = 0, decoder_steps: int | None = None, progress: ProgressFn | None = None,
               cancel: Any = None, stage_progress: StageFn | None = None, sampler: str | None = None,
               decoder_sampler: str | None = None) -> Iterator[np.ndarray]:
        """Validate now, then yield float32 [2, n] audio blocks in order as each decoder chunk finishes.

        `sampler` / `decoder_sampler` ("ddim" or "dpmpp-2m"; default: the manifest's defaults.sampler /
        defaults.decoder_sampler) pick the generator's and the decoder's sampler.
        Raises Cancelled (from the iterator) within one denoising step of `cancel` being set.
        """
        prompt, seconds, steps, guidance, seed, dsteps = self.check_inputs(prompt, seconds, steps, guidance, seed,
                                                                           decoder_steps)
        _check_callbacks(progress, stage_progress, cancel)
        samplers = self.samplers(sampler, decoder_sampler)
        frames, samples = self.frames_for(seconds)
        dec_total = self.decoder.total_steps(frames, dsteps)
        tracker = _Tracker(1 + self.generator_calls(frames, steps) + dec_total, progress, stage_progress, cancel)
        return self._stream(prompt, frames, samples, steps, guidance, seed, dsteps, dec_total, tracker, samplers)

    def _stream(self, prompt, frames, samples, steps, guidance, seed, dsteps, dec_total, tracker,
                samplers=("ddim", "ddim")) -> Iterator[np.ndarray]:
        latent = self._generate_latent(prompt, frames, steps, guidance, seed, tracker, samplers[0])
        tracker.start("decoder", dec_total)
        noise = GlobalNoise(seed, self.bundle.channels)
        decoder = self._decoder_for(tracker, dsteps)
        for block in decoder.stream(latent, dsteps, noise, samples, on_step=lambda: tracker.step("decoder"),
                                    sampler=samplers[1]):
            yield block[0]

    def generate(self, prompt: str, seconds: float, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, decoder_steps: int | None = None, progress: ProgressFn | None = None,
                 cancel: Any = None, stage_progress: StageFn | None = None, sampler: str | None = None,
                 decoder_sampler: str | None = None) -> np.ndarray:
        """The whole clip: float32 [2, round(seconds * sample_rate)] in [-1, 1]-ish audio units."""
        it = self.stream(prompt, seconds, steps, guidance, seed, decoder_steps, progress, cancel, stage_progress,
                         sampler, decoder_sampler)
        _, samples = self.frames_for(float(seconds))
        out = np.empty((self.bundle.channels, samples), dtype=np.float32)
        pos = 0
        for block in it:
            out[:, pos:pos + block.shape[-1]] = block
            pos += block.shape[-1]
        assert pos == samples, (pos, samples)
        return out

    # ---------------------------------------------------------------------------------------------- info
    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    def describe(self) -> str:
        kind = " (autoencoder only)" if self.bundle.is_autoencoder else ""
        return f"bundle {self.bundle.name}{kind} ({self.bundle.path}); backend {self.backend.describe()}"


def _check_steps(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    if v > MAX_STEPS:
        raise InputError(f"{name} must be <= {MAX_STEPS}, got {v}")
    return int(v)


def _float_array(a: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be an array of numbers: {' '.join(str(e).split())[:200]}") from None


def _check_callbacks(progress: Any, stage_progress: Any, cancel: Any) -> None:
    """Checked before the render: a wrong callback would otherwise fail at the first step, mid-render."""
    for name, fn in (("progress", progress), ("stage_progress", stage_progress)):
        if fn is not None and not callable(fn):
            raise InputError(f"{name} must be a function (or None), got {type(fn).__name__}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InputError(f"cancel must be a CancelToken or threading.Event (an object with is_set()), got "
                         f"{type(cancel).__name__}")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return int(seed)


__all__ = ["Pipeline", "InputError", "Cancelled", "CancelToken", "BundleError", "BackendError", "Fp16FallbackWarning",
           "check_prompt"]
