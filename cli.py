"""mousai: train, export and run Moûsai text-to-music models.

Each command imports what it needs lazily, so `mousai generate` works on the runtime-only install (no torch).
User errors print one line on stderr and exit with code 2, never a traceback; that includes the command-line
parser's own errors (unknown option, a value that is not a number, a missing argument). An unexpected exception is
one line too, with exit code 1 (MOUSAI_DEBUG=1 shows its traceback).
"""
from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

# typer may use click or its own vendored copy of it: find the exception classes through a public name
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _one_line(s: Any) -> str:
    from mousai_runtime.cli_impl import printable

    return printable(" ".join(str(s).split()))


def _escape_unencodable(err: UnicodeError) -> tuple[Any, int]:
    """Encoding error handler of the standard streams: bytes from argv come back as they were (surrogateescape),
    any other character the stream's encoding lacks (an ascii / C-locale terminal) as a backslash escape."""
    import codecs

    try:
        return codecs.lookup_error("surrogateescape")(err)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(err)


class _GuardedStdout:
    """sys.stdout that records a failed write (stdout on /dev/full, a closed pipe) instead of raising it in the
    middle of a command whose work is done; the command's exit code stands and one warning says what was lost."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                return self._stream.write(text)
            except OSError as e:
                self.failure = e
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._stream.flush()
            except OSError as e:
                self.failure = e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _standard_streams() -> _GuardedStdout:
    """Usable sys.stdout / sys.stderr whatever the caller gave: a closed stream (sys.* is None) goes to
    /dev/null, unencodable characters are escaped, and stdout's write errors are held (see _GuardedStdout)."""
    import codecs

    codecs.register_error("mousai-escape", _escape_unencodable)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or getattr(stream, "closed", False):
            stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
            setattr(sys, name, stream)
        try:
            stream.reconfigure(errors="mousai-escape")
        except (AttributeError, ValueError, OSError):
            pass
    guard = sys.stdout if isinstance(sys.stdout, _GuardedStdout) else _GuardedStdout(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    return guard


class OneLineErrors(TyperGroup):
    """The root command: parser errors and unexpected exceptions become one `error: ...` line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        stdout = _standard_streams()
        import warnings

        saved_format = warnings.formatwarning
        warnings.formatwarning = lambda message, category, *a, **k: f"warning: {_one_line(message)}\n"
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except _CLICK_EXCEPTION as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `mousai` alone: the help text
                e.show()
            else:
                hint = ""
                ctx = getattr(e, "ctx", None)
                if isinstance(e, _USAGE_ERROR) and ctx is not None:
                    hint = f" (see: {ctx.command_path} --help)"
                typer.echo(f"error: {_one_line(e.format_message())}{hint}", err=True)
            code = e.exit_code
        except MemoryError:
            typer.echo("error: out of memory", err=True)
            code = 1
        except Exception as e:  # a bug, or an error nobody turned into a message: still no traceback
            if os.environ.get("MOUSAI_DEBUG"):
                raise
            if type(e).__name__ == "Abort":
                typer.echo("error: aborted", err=True)
                code = 1
            else:
                typer.echo(f"error: internal error: {type(e).__name__}: {_one_line(e)[:300]} (MOUSAI_DEBUG=1 shows "
                           "the traceback; please report it)", err=True)
                code = 1
        finally:
            warnings.formatwarning = saved_format
        stdout.flush()
        if stdout.failure is not None:
            typer.echo(f"warning: could not print the result to stdout ({stdout.failure.strerror or stdout.failure})",
                       err=True)
            stdout._stream = open(os.devnull, "w")  # noqa: SIM115 (the interpreter's final flush must not fail)
            stdout.failure = None
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="mousai",
    help="Train, export and run Moûsai text-to-music diffusion models (48 kHz stereo).\n\n"
    "Quick start:  mousai generate \"calm ambient pads with soft piano\" -o out.wav",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect training corpora.", no_args_is_help=True)
app.add_typer(data_app, name="data")
import_app = typer.Typer(help="Import checkpoints made by other code.", no_args_is_help=True)
app.add_typer(import_app, name="import")


def fail(message: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {_one_line(message)}", err=True)
    return typer.Exit(code)


def refuse_overlap(out: Path, flag: str = "--out", **inputs: Optional[Path]) -> None:
    """exit 2 when `out` is, contains or lies inside an input (writing or replacing it would destroy the input)."""
    from mousai_runtime.files import UnsafePathError, check_apart

    try:
        check_apart(out, {k.replace("_", " "): v for k, v in inputs.items()}, flag)
    except UnsafePathError as e:
        raise fail(str(e))


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError, or torch's allocator failure (a RuntimeError: "DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def _default_bundle() -> Path:
    """engines/default beside cli.py (a checkout / editable install), else the copy `pip install .` puts in
    <prefix>/share/mousai/engines/default."""
    here = Path(__file__).resolve().parent / "engines" / "default"
    installed = Path(sys.prefix) / "share" / "mousai" / "engines" / "default"
    return here if here.is_dir() or not installed.is_dir() else installed


DEFAULT_BUNDLE = _default_bundle()


# ---------------------------------------------------------------------------------------------- model


@app.command()
def params(
    config: str = typer.Option("tiny", "--config", "-c", help="tiny, paper, or a config JSON / checkpoint folder."),
) -> None:
    """Print the parameter count of each model of a config: `dmae N` and `generator N`."""
    try:
        import torch

        from training.model.configs import load_config
        from training.model.dmae import DMAE
        from training.model.generator import Generator

        cfg = load_config(config)
    except ValueError as e:
        raise fail(str(e))
    with torch.device("meta"):  # no memory is spent on weights
        dmae, gen = DMAE(cfg.dmae), Generator(cfg.generator)
    typer.echo(f"dmae {sum(p.numel() for p in dmae.parameters())}")
    typer.echo(f"generator {sum(p.numel() for p in gen.parameters())}")


@app.command()
def init(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (must not exist unless --force)."),
    config: str = typer.Option("tiny", "--config", "-c", help="tiny, paper, or a config JSON file."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the initial weights."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
) -> None:
    """Write a randomly initialised checkpoint (safetensors + config.json), e.g. to try export and runtime."""
    try:
        from training.args import check_seed

        check_seed("--seed", seed)
        import torch

        from training.checkpoint import save_checkpoint
        from training.model.configs import load_config
        from training.model.dmae import DMAE
        from training.model.generator import Generator

        cfg = load_config(config)
    except ValueError as e:
        raise fail(str(e))
    if out.exists() and not force:
        raise fail(f"{out} exists (use --force to replace it)")
    torch.manual_seed(seed)
    dmae, gen = DMAE(cfg.dmae), Generator(cfg.generator)
    try:
        save_checkpoint(out, cfg, {"dmae": dmae.state_dict(), "generator": gen.state_dict()},
                        meta={"kind": "random-init", "seed": seed})
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror or e}")
    typer.echo(f"wrote {out} ({cfg.name}: dmae {sum(p.numel() for p in dmae.parameters()):,} + "
               f"generator {sum(p.numel() for p in gen.parameters()):,} parameters)")


# ---------------------------------------------------------------------------------------------- data


@data_app.command("build")
def data_build(
    out: Path = typer.Argument(..., help="Folder for the corpus (audio/, metadata.jsonl, manifest.json)."),
    sources: Optional[str] = typer.Option(None, "--sources", help="Comma-separated sources (default: all)."),
) -> None:
    """Build the open training corpus offline: Debian music packages + rendered MIDI, as 48 kHz stereo FLAC."""
    try:
        from training.data.corpus.build import main as build_main
    except ImportError as e:
        raise fail(f"the corpus builder needs the training extras: pip install 'mousai[train,data]' ({e})")
    code = build_main(str(out), sources)
    raise typer.Exit(code)


@import_app.command("archisound")
def import_archisound(
    path: Path = typer.Argument(..., help="The authors' checkpoint: a folder (config.json + *.safetensors or "
                                          "pytorch_model.bin) or a bare state-dict file. Not shipped: bring your own."),
    out: Path = typer.Option(..., "--out", "-o", help="mousai checkpoint folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
) -> None:
    """Import an archinetai/archisound DMAE (e.g. dmae1d-ATC64-v2) as a mousai checkpoint computing the same function."""
    try:
        from training.archisound import ImportError_, import_archisound as run_import
        from training.checkpoint import CheckpointError
    except ImportError as e:
        raise fail(f"import needs the training extras: pip install 'mousai[train]' ({e})")
    try:
        cfg = run_import(path, out, force=force)
    except (ImportError_, CheckpointError) as e:
        raise fail(str(e))
    d = cfg.dmae.decoder
    typer.echo(f"wrote {out}: DMAE with patch {d.patch_size}, channels {d.channels}, inject depth {d.inject_depth}")


# ---------------------------------------------------------------------------------------------- train


class Stage(str, Enum):
    autoencoder = "autoencoder"
    generator = "generator"


@app.command()
def train(
    stage: Stage = typer.Argument(..., help="autoencoder (the DMAE) or generator (needs --dmae)."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoint/, state/, tb/, samples/, train.log)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Corpus folder: audio + optional metadata.jsonl "
                                                             "(on --resume: default the run's own)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="tiny, paper or a JSON file "
                                                                      "(default tiny; on --resume the run's own)."),
    steps: int = typer.Option(1000, "--steps", help="Train until this global step (also on --resume)."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from out/state."),
    dmae: Optional[Path] = typer.Option(None, "--dmae", help="Trained DMAE checkpoint (generator stage)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per step (default 8)."),
    crop_length: Optional[int] = typer.Option(None, "--crop-length", help="Samples per crop (2^16 / 2^18)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 1e-4)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed (default 0)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (1 on a shared machine)."),
    ckpt_every: int = typer.Option(250, "--ckpt-every", help="Checkpoint every N steps."),
    sample_every: int = typer.Option(1000, "--sample-every", help="Write an audio sample every N steps (0 = never)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a TTY)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="New run: start from this checkpoint's "
                                             "weights at its step, e.g. the committed engines/checkpoints/..."),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--train-encoder",
                                                  help="autoencoder: train the decoder only, so the latents stay "
                                                  "fixed while a generator trains on them (default: the run's own; "
                                                  "off for a new run)."),
    genre_balance: Optional[float] = typer.Option(None, "--genre-balance", min=0.0, max=1.0,
                                                  help="Draw tracks by length x (genre length)^-B: 0 by length, 1 "
                                                  "every genre alike (default: the run's own; 0 for a new run)."),
    short_captions: Optional[float] = typer.Option(None, "--short-captions", min=0.0, max=1.0,
                                                   help="generator: share of captions cut to 1-3 fragments, so "
                                                   "short typed prompts ('jazz') are trained on (default: the "
                                                   "run's own; 0 for a new run)."),
) -> None:
    """Train the DMAE or the generator (AdamW, EMA, atomic checkpoints, exact --resume, DDP under torchrun)."""
    try:
        from training.train import TrainingError, train as run_train
    except ImportError as e:
        raise fail(f"training needs the training extras: pip install 'mousai[train]' ({e})")
    new_folder = not out.exists()
    try:
        result = run_train(stage=stage.value, data=str(data) if data else None, config=config, out=str(out),
                           steps=steps, resume=resume, batch_size=batch_size, crop_length=crop_length, lr=lr,
                           seed=seed, threads=threads, ckpt_every=ckpt_every, sample_every=sample_every,
                           dmae=str(dmae) if dmae else None, progress=progress,
                           init_from=str(init_from) if init_from else None, freeze_encoder=freeze_encoder,
                           genre_balance=genre_balance, short_captions=short_captions)
    except (TrainingError, ValueError, FileNotFoundError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, TrainingError) and not _out_of_memory(e):
            raise  # a bug: the internal-error line
        if new_folder and out.is_dir() and {p.name for p in out.iterdir()} <= {".lock"}:
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # refused before any work: leave no empty run folder behind
        if _out_of_memory(e):
            raise fail(f"out of memory ({_one_line(e)[:120]}): try a smaller --batch-size or --crop-length")
        raise fail(str(e))
    except KeyboardInterrupt:
        from training.train import interrupted_message

        raise fail(interrupted_message(out), code=130)
    loss = "no step trained" if result.loss is None else f"loss {result.loss:.4f}"  # --steps 0 is valid
    typer.echo(f"step {result.step}: {loss}; checkpoint {result.checkpoint or 'none saved'}")


# ---------------------------------------------------------------------------------------------- export


class EngineKind(str, Enum):
    onnx = "onnx"
    trt = "trt"


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (config.json + *.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write, e.g. engines/mymodel."),
    engine: EngineKind = typer.Option(EngineKind.onnx, "--engine", help="onnx, or trt (TensorRT; needs a GPU)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 graphs with fp32 islands (softmax, norms)."),
    fp16_fallback: bool = typer.Option(False, "--fp16-fallback", help="With --fp16: also keep the fp32 graphs "
                                       "(fp32/*.onnx), so `generate --fp16-fallback` can re-run a NaN/inf step."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    check: bool = typer.Option(True, "--check/--no-check", help="Measure ONNX Runtime vs PyTorch parity."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle folder."),
) -> None:
    """Export a checkpoint to a bundle: ONNX graphs + tokenizer + manifest with parity figures."""
    try:
        from mousai_export import ExportError, export_bundle
    except ImportError as e:
        raise fail(f"export needs the export extras: pip install 'mousai[export]' ({e})")
    try:
        export_bundle(str(checkpoint), str(out), engine=engine.value, fp16=fp16, opset=opset, check=check,
                      force=force, fp16_fallback=fp16_fallback)
    except ExportError as e:
        raise fail(str(e))
    typer.echo(f"wrote bundle {out}")


# ---------------------------------------------------------------------------------------------- runtime


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the music should be, e.g. \"upbeat techno, 128 bpm\"."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.wav or .flac)."),
    seconds: float = typer.Option(10.0, "--seconds", "-s", help="Length of the clip in seconds."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Generator denoising steps (default: bundle's)."),
    decoder_steps: Optional[int] = typer.Option(None, "--decoder-steps", help="Decoder denoising steps "
                                                "(default: bundle's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddim or dpmpp-2m, for both stages "
                                          "(default: bundle's)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same music."),
    model: Path = typer.Option(DEFAULT_BUNDLE, "--model", help="Bundle folder (default: engines/default)."),
    engine: str = typer.Option("onnx", "--engine", help="onnx, trt or torch."),
    format: Optional[str] = typer.Option(None, "--format", help="wav or flac (default: from the file name)."),
    loudness: Optional[float] = typer.Option(None, "--loudness", help="Normalise to this LUFS, e.g. -14."),
    spectrogram: Optional[Path] = typer.Option(None, "--spectrogram", help="Also write a spectrogram PNG."),
    fp16_fallback: bool = typer.Option(False, "--fp16-fallback", help="fp16 bundle exported with --fp16-fallback: "
                                       "re-run a component whose fp16 output is NaN/inf with its fp32 graph."),
    postfilter: bool = typer.Option(True, "--postfilter/--no-postfilter", help="Put the decoded audio back on the "
                                    "band envelope its latent encodes (bundles with a postfilter, e.g. the "
                                    "default); --no-postfilter hears the DMAE decoder alone."),
    allow_clipping: bool = typer.Option(False, "--allow-clipping", help="Write a clip that peaks above +12 dBFS "
                                        "(a broken bundle) instead of refusing it (flac clips it to +-1)."),
) -> None:
    """Generate music from a text prompt with a bundle (numpy + ONNX Runtime; no torch needed)."""
    from mousai_runtime.cli_impl import generate_command

    raise typer.Exit(generate_command(prompt=prompt, out=str(out), seconds=seconds, steps=steps, guidance=guidance,
                                      seed=seed, model=str(model), engine=engine, format=format, loudness=loudness,
                                      spectrogram=str(spectrogram) if spectrogram else None,
                                      fp16_fallback=fp16_fallback, decoder_steps=decoder_steps, sampler=sampler,
                                      postfilter=postfilter, allow_clipping=allow_clipping))


@app.command()
def info(model: Path = typer.Argument(DEFAULT_BUNDLE, help="Bundle folder (default: engines/default).")) -> None:
    """Print a bundle's manifest as a readable table."""
    from mousai_runtime.cli_impl import info_command

    raise typer.Exit(info_command(str(model)))


# ---------------------------------------------------------------------------------------------- checkpoints

checkpoint_app = typer.Typer(help="Work with checkpoints (safetensors + config.json).", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("combine")
def checkpoint_combine(
    generator: Path = typer.Option(..., "--generator", help="Checkpoint with the trained generator."),
    dmae: Path = typer.Option(..., "--dmae", help="Checkpoint with a later DMAE (same encoder: --freeze-encoder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights as float16 (half the size)."),
) -> None:
    """Pair a generator with a DMAE whose decoder trained on after the generator's run began. Refused unless the
    DMAE's encoder is the one the generator's latents came from."""
    try:
        import torch

        from training.checkpoint import CheckpointError, combine
    except ImportError as e:
        raise fail(f"needs the training extras: pip install 'mousai[train]' ({e})")
    try:
        combine(generator, dmae, out, dtype=torch.float16 if fp16 else None)
    except (CheckpointError, OSError) as e:
        raise fail(_one_line(e))
    typer.echo(f"wrote {out}")


@checkpoint_app.command("fit-envelope")
def checkpoint_fit_envelope(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder with DMAE weights (written into, atomically)."),
    data: Path = typer.Option(..., "--data", help="Corpus folder (mousai data build): its training split is used."),
    clips: int = typer.Option(400, "--clips", min=10, help="5 s training clips to fit on."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads for the encoder."),
) -> None:
    """Fit the envelope post-filter of a checkpoint's DMAE: a linear map (closed form) from its latent to the log
    power of 32 mel bands per channel, written to CKPT/envelope.safetensors and shipped by `mousai export`. The
    runtime uses it to remove energy the decoder invents (mousai_runtime/postfilter.py); it depends only on the
    encoder, so a DMAE trained on with --freeze-encoder keeps it."""
    try:
        import torch

        from training.checkpoint import CheckpointError
        from training.postfilter import fit_checkpoint
    except ImportError as e:
        raise fail(f"needs the training extras: pip install 'mousai[train]' ({e})")
    if not (data / "metadata.jsonl").is_file():
        raise fail(f"not a corpus folder (no metadata.jsonl): {data}")
    if threads:
        torch.set_num_threads(threads)
    try:
        info = fit_checkpoint(checkpoint, data, clips, log=lambda m: typer.echo(m, err=True))
    except (CheckpointError, ValueError, OSError) as e:
        raise fail(_one_line(e))
    typer.echo(f"wrote {checkpoint / 'envelope.safetensors'}: training R^2 {info['train_r2']:.3f}")


@checkpoint_app.command("train-encoder")
def checkpoint_train_encoder(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder with DMAE weights (read only)."),
    data: Path = typer.Option(..., "--data", help="Corpus folder (mousai data build): training split, held-out split."),
    out: Path = typer.Option(..., "--out", "-o", help="New checkpoint folder (the DMAE with the new encoder)."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Crops of 2^17 samples per step."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
) -> None:
    """Train a DMAE's encoder to carry the spectral envelope (the post-filter's target) through a linear head, the
    decoder untouched. Then train the decoder on with `train autoencoder --init-from OUT --freeze-encoder`, the
    generator on the new latents, and refit the post-filter (training/envelope_encoder.py says why)."""
    try:
        import torch

        from training.checkpoint import CheckpointError
        from training.envelope_encoder import train_encoder
    except ImportError as e:
        raise fail(f"needs the training extras: pip install 'mousai[train]' ({e})")
    if not (data / "metadata.jsonl").is_file():
        raise fail(f"not a corpus folder (no metadata.jsonl): {data}")
    refuse_overlap(out, checkpoint=checkpoint, corpus_folder=data)
    if threads:
        torch.set_num_threads(threads)
    try:
        info = train_encoder(checkpoint, data, out, steps=steps, batch_size=batch_size,
                             log=lambda m: typer.echo(m, err=True))
    except (CheckpointError, ValueError, OSError, RuntimeError) as e:
        raise fail(_one_line(e))
    typer.echo(f"wrote {out}: held-out envelope R^2 {info['history'][-1]['val_r2']:.3f}")


# ---------------------------------------------------------------------------------------------- eval

eval_app = typer.Typer(help="Evaluate a bundle on the corpus: reconstruction, text relevance, diversity.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")
DEFAULT_CLASSIFIER = DEFAULT_BUNDLE.parent / "eval-genre-cnn"


@eval_app.command("classifier")
def eval_classifier(
    data: Path = typer.Option(..., "--data", help="Corpus folder (mousai data build)."),
    out: Path = typer.Option(DEFAULT_CLASSIFIER, "--out", help="Folder for model.onnx + labels.json."),
    steps: int = typer.Option(2000, "--steps", min=1, help="Training steps (batch 16 five-second clips)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder to keep log-mel features of each file."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
) -> None:
    """Train the genre classifier used only for evaluation (a small CNN on log-mel; validated on held-out
    recordings and on MIDI rendered with seeds the corpus does not use) and export it to ONNX."""
    try:
        from training.eval.report import build_classifier
    except ImportError as e:
        raise fail(f"the classifier needs the training extras: pip install 'mousai[train]' ({e})")
    if not (data / "metadata.jsonl").is_file():
        raise fail(f"not a corpus folder (no metadata.jsonl): {data}")
    refuse_overlap(out, corpus_folder=data, feature_cache=cache)
    try:
        r = build_classifier(data, out, steps=steps, threads=threads, cache=cache,
                             log=lambda m: typer.echo(m, err=True))
    except (ValueError, RuntimeError, OSError) as e:
        raise fail(_one_line(e))
    typer.echo(f"{out}: held-out accuracy {r['val_accuracy']:.3f} on {r['val_clips']} clips")


@eval_app.command("report")
def eval_report(
    data: Path = typer.Option(..., "--data", help="Corpus folder: its held-out split is what is measured."),
    model: Path = typer.Option(DEFAULT_BUNDLE, "--model", help="Bundle folder (default: engines/default)."),
    classifier: Path = typer.Option(DEFAULT_CLASSIFIER, "--classifier", help="From `mousai eval classifier`."),
    out: Path = typer.Option(Path("docs/eval"), "--out", help="Folder for REPORT.md + report.json."),
    seconds: float = typer.Option(10.0, "--seconds", min=5.0, max=60.0, help="Length of each generated clip."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Generator steps (default: bundle's)."),
    decoder_steps: Optional[int] = typer.Option(None, "--decoder-steps", min=1, help="Decoder steps."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (default: bundle's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime threads."),
) -> None:
    """Measure a bundle: DMAE reconstruction (log-mel L1, multi-resolution STFT) at 10/20/50 decoder steps next to
    Griffin-Lim; genre accuracy per genre with a confusion matrix (several prompts x 2 seeds per genre); Fréchet
    distance to real clips (and the real-vs-real floor) and seed diversity in the classifier's embedding space."""
    try:
        from training.eval.report import run_report
    except ImportError as e:
        raise fail(f"the report needs the training extras: pip install 'mousai[train]' ({e})")
    for path, what in ((data / "metadata.jsonl", "corpus metadata"), (model / "manifest.json", "bundle manifest"),
                       (classifier / "labels.json", "classifier labels")):
        if not path.is_file():
            raise fail(f"missing {what}: {path}")
    refuse_overlap(out, corpus_folder=data, bundle=model, classifier=classifier)
    kw = {k: v for k, v in (("steps", steps), ("decoder_steps", decoder_steps), ("guidance", guidance))
          if v is not None}
    try:
        doc = run_report(model, data, classifier, out, seconds=seconds, threads=threads,
                         log=lambda m: typer.echo(m, err=True), **kw)
    except (ValueError, RuntimeError, OSError) as e:
        raise fail(_one_line(e))
    typer.echo(f"{out / 'REPORT.md'}: genre accuracy {doc['text']['accuracy']:.3f} "
               f"(chance {doc['text']['chance']:.3f}), FD {doc['frechet']['generated_vs_real']:.2f}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
