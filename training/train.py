"""Training loop for both Moûsai stages, readable top to bottom.

    stage "autoencoder": DMAE on random stereo crops of a folder of audio        (DMAE.loss)
    stage "generator":   text-conditional latent generator on DMAE latents     (Generator.loss)

    python -m training.train autoencoder --data DATA --out runs/ae --steps 20000
    python -m training.train generator   --data DATA --out runs/gen --dmae runs/ae/checkpoint --steps 20000
    python -m training.train autoencoder --out runs/ae --resume --steps 40000     # continue (to 40k steps in total)
    torchrun --nproc_per_node 2 -m training.train autoencoder --data DATA --out runs/ae   # DDP (gloo on CPU)

Run folder (`out`):
    checkpoint/     the exportable checkpoint (EMA weights, fp32; see training/checkpoint.py). The generator
                    stage writes the DMAE it trained on next to the generator, so the folder is a full model.
    state/          everything needed to continue exactly: model.safetensors (raw weights), ema.safetensors,
                    optimizer.safetensors (flattened tensors) + state.json (step, config, hyper-parameters,
                    optimizer param groups, RNG states, data seed). No pickle anywhere.
    dmae/           (generator stage) a copy of the DMAE checkpoint the run started from
    latent_cache/   (generator stage) DMAE latents of fixed crops of every file + index.json
    text_cache/     (generator stage) frozen text-encoder states per distinct caption
    samples/        periodic audio samples; tb/ TensorBoard scalars and audio; train.log one line per log_every

Both checkpoint/ and state/ are written to a temp folder and swapped in by rename (`atomic_dir`): a SIGKILL or
a full disk at any moment leaves the previous good one in place.

Exact resume: step k's batch is a pure function of (seed, k) (see training/data/dataset.py) and step k's random
draws (diffusion sigma + noise, classifier-free-guidance drop) come from the global torch RNG re-seeded from
(seed, rank, k) at the start of the step, so a run killed and resumed reaches bit-identical weights (on the same
machine, thread count and world size).

EMA: a separately constructed model (never a deep copy sharing layers) updated after every optimizer step with
    decay(k) = min(ema_beta, 1 - (1 + k) ** -ema_power),  k = number of optimizer steps before this one,
i.e. the common warm-up form with inv_gamma = 1 (k = 0 copies the weights; 0.995 is reached at k ~ 1940 with
power 0.7). No "update after step" delay and no "update every" thinning.

DDP: when launched by torchrun (WORLD_SIZE > 1) the model runs under DistributedDataParallel (gloo on CPU, nccl
on GPU). Rank r trains on items r*B .. r*B+B-1 of step k's draw, so 2 ranks x batch 4 see exactly the crops one
process with batch 8 sees; all ranks start from the same weights; only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mousai_runtime.files import UnsafePathError, atomic_dir, check_apart, atomic_write_text, inside, sha256_file

from .checkpoint import CheckpointError, load_into, weights_sha256, load_weights, read_config, save_checkpoint
from .model.configs import ModelConfig, load_config
from .model.dmae import DMAE
from .model.generator import Generator

STAGES = ("autoencoder", "generator")
STATE_FORMAT, STATE_VERSION = "mousai-train-state", 1
DEFAULT_CROP = {"autoencoder": 2**16, "generator": 2**18}  # samples; 2**18 = 256 latent frames (paper: 2**21)
BETAS, EPS, WEIGHT_DECAY = (0.95, 0.999), 1e-6, 1e-3
_NOISE, _CFG, _SAMPLE = 1, 2, 3  # tags that separate the per-step random streams


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message is one line and says what to do."""


@dataclasses.dataclass
class TrainResult:
    stage: str
    step: int  # optimizer steps done in total
    loss: float | None  # mean loss over the last log interval (all ranks)
    losses: list[float]  # per-step loss of this process's steps in this call (this rank)
    out: Path
    checkpoint: Path | None  # None when nothing was saved (e.g. resumed at the target step)
    seconds: float
    steps_per_second: float
    weights_sha256: str  # hash of this rank's raw weights at the end (ranks must agree under DDP)


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integer parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def ema_decay(step: int, beta: float = 0.995, power: float = 0.7) -> float:
    """EMA decay for the update after `step` optimizer steps: min(beta, 1 - (1 + step) ** -power)."""
    return min(beta, 1.0 - (1.0 + step) ** -power)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:  # a frozen part is already equal; e * d + e * (1 - d) would drift by rounding
            e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _LossOf(nn.Module):
    """DDP needs the call to go through forward(); this forwards to model.loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.model.loss(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Training state: safetensors + JSON, never pickle
# ---------------------------------------------------------------------------------------------------------------


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"state.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                other.setdefault(str(pid), {})[name] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_other": other}


def _unflatten_optimizer(tensors: dict[str, Tensor], doc: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in doc.get("state_other", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in doc["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_states() -> tuple[Tensor, dict[str, Any]]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return torch.get_rng_state(), {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_states(torch_state: Tensor, doc: dict[str, Any]) -> None:
    torch.set_rng_state(torch_state)
    n = doc["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = doc["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_state(path: Path, doc: dict[str, Any], model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Write out/state atomically; state.json goes last (a folder with state.json is complete)."""
    opt_tensors, opt_doc = _flatten_optimizer(opt.state_dict())
    torch_rng, rng_doc = _rng_states()
    doc = {**doc, "optimizer": opt_doc, "rng": rng_doc}

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch_rng}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(doc, indent=1))

    atomic_dir(path, write)


def read_state_doc(path: Path) -> dict[str, Any]:
    f = Path(path) / "state.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"cannot read training state {f}: {e}") from e
    if doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
        raise TrainingError(f"{f} is not a mousai training state (version {STATE_VERSION})")
    return doc


def _recover_state_dir(out: Path) -> None:
    """atomic_dir renames state -> .state.old-PID before moving the new one in: a kill between the two renames
    leaves no state/ but an intact .state.old-PID. Put it back; drop leftover temp folders."""
    for name in ("state", "checkpoint", "dmae"):
        target = out / name
        olds = sorted(out.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
        if not target.exists() and olds:
            os.replace(olds[-1], target)
            olds = olds[:-1]
        for junk in [*olds, *out.glob(f".{name}.tmp-*")]:
            shutil.rmtree(junk, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Stage 2 data: latent cache + text cache
# ---------------------------------------------------------------------------------------------------------------


def _crop_starts(n: int, crop: int) -> list[int]:
    """Crops at half-crop hops covering the file; the last one ends at the file end; short files give [0]."""
    if n <= crop:
        return [0]
    starts = list(range(0, n - crop + 1, crop // 2))
    if starts[-1] + crop < n:
        starts.append(n - crop)
    return starts


@torch.no_grad()
def build_latent_cache(folder: Any, dmae: DMAE, dmae_sha: str, crop_length: int, cache_dir: Path,
                       log: Callable[[str], None] = print, batch: int = 4) -> None:
    """Encode every file of `folder` (an AudioFolder) as fixed crops of `crop_length` samples with the DMAE encoder.

    cache_dir/index.json: {"files": {rel: {size, mtime_ns, sha256}}, "entries": {key: {shard, crops, path}}} where
    key = sha256(file sha256, crop_length, DMAE weights sha256); each shard holds "latent" [n_crops, 32, T].
    """
    from .data.audio import load_audio

    cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = cache_dir / "index.json"
    index: dict[str, Any] = {"version": 1, "files": {}, "entries": {}}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError):
            log(f"latent cache: unreadable {index_path}, rebuilding")
    files, entries = index.setdefault("files", {}), index.setdefault("entries", {})
    encoded = reused = 0
    for t in folder.tracks:
        st = os.stat(t.path)
        known = files.get(t.rel)
        if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
            sha = known["sha256"]
        else:
            sha = sha256_file(t.path)
            files[t.rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        key = _latent_key(sha, crop_length, dmae_sha)
        if key in entries and _shard(cache_dir, entries[key]).is_file():
            reused += 1
            continue
        audio = torch.from_numpy(load_audio(t.path, folder.sr))
        crops = []
        for s in _crop_starts(audio.shape[-1], crop_length):
            c = audio[:, s:s + crop_length]
            crops.append(torch.nn.functional.pad(c, (0, crop_length - c.shape[-1])))
        lat = torch.cat([dmae.encode(torch.stack(crops[i:i + batch])) for i in range(0, len(crops), batch)])
        shard = f"latent-{key[:32]}.safetensors"
        tmp = cache_dir / f".{shard}.tmp"
        save_file({"latent": lat.contiguous()}, str(tmp))
        os.replace(tmp, cache_dir / shard)
        entries[key] = {"shard": shard, "crops": int(lat.shape[0]), "path": t.rel}
        encoded += 1
        atomic_write_text(index_path, json.dumps(index, indent=1))  # progress survives a kill
    atomic_write_text(index_path, json.dumps(index, indent=1))
    log(f"latent cache: {encoded} file(s) encoded, {reused} reused ({cache_dir})")


def _shard(cache_dir: Path, entry: Any) -> Path:
    """The shard file an index entry names, confined to the cache folder (index.json is a file we read)."""
    try:
        return inside(cache_dir, entry.get("shard") if isinstance(entry, dict) else None, "latent cache shard")
    except UnsafePathError as e:
        raise TrainingError(f"{cache_dir / 'index.json'}: {e}: delete the cache folder to rebuild it") from None


def _latent_key(file_sha: str, crop_length: int, dmae_sha: str) -> str:
    return hashlib.sha256(f"{file_sha}:{crop_length}:{dmae_sha}".encode()).hexdigest()


def load_latent_cache(folder: Any, dmae_sha: str, crop_length: int, cache_dir: Path) -> list[Tensor]:
    """One tensor [n_crops, 32, T] per track of `folder`, in track order."""
    index = json.loads((cache_dir / "index.json").read_text())
    out = []
    for t in folder.tracks:
        key = _latent_key(index["files"][t.rel]["sha256"], crop_length, dmae_sha)
        out.append(load_file(str(_shard(cache_dir, index["entries"][key])))["latent"])
    return out


class LatentCrops:
    """Latent crops + captions, a pure function of (seed, step): the stage-2 counterpart of RandomCrops.

    Item i of step k uses np.random.default_rng([seed, k, i]) to pick a track (weighted by its crop count, i.e.
    its length, and by its genre's share under genre_balance > 0) and a crop; the caption is drawn as in
    RandomCrops with default_rng([seed, k, i, 1]), cut short with probability short_captions.
    """

    def __init__(self, folder: Any, latents: list[Tensor], seed: int, genre_balance: float = 0.0,
                 short_captions: float = 0.0):
        from .data.dataset import sampling_cdf

        self.folder, self.latents, self.seed = folder, latents, int(seed)
        self.short_captions = float(short_captions)
        self._cdf = sampling_cdf(folder.tracks, np.array([lat.shape[0] for lat in latents]), genre_balance)

    def item(self, step: int, i: int) -> tuple[Tensor, str]:
        from .data.dataset import caption_from_metadata

        rng = np.random.default_rng([self.seed, int(step), int(i)])
        idx = int(min(np.searchsorted(self._cdf, rng.random(), side="right"), len(self._cdf) - 1))
        crop = int(rng.integers(self.latents[idx].shape[0]))
        text = caption_from_metadata(self.folder.tracks[idx].meta, np.random.default_rng([self.seed, int(step), int(i), 1]),
                                     self.short_captions)
        return self.latents[idx][crop], text


class TextCache:
    """Frozen text-encoder states per distinct caption, in memory and on disk (`folder`, safetensors shards).

    Each caption is encoded alone (batch of one) so its states do not depend on what it was batched with;
    padded positions are zeroed (cross-attention masks them), so only the real tokens are stored.
    """

    def __init__(self, name: str, max_length: int, folder: Path | None, writer: bool):
        self.name, self.max_length, self.folder, self.writer = name, max_length, folder, writer
        self.ident = f"{name}|{max_length}"
        self._encoder: Any = None
        self.mem: dict[str, tuple[Tensor, Tensor]] = {}
        self.new: list[str] = []
        shards = sorted(folder.glob("text-*.safetensors")) if folder is not None and folder.is_dir() else []
        for f in shards:
            self._load_shard(f)
        if writer and len(shards) > 16:  # one shard per checkpoint adds up: merge them into one
            self.new = list(self.mem)
            self.flush()
            for f in shards:
                f.unlink(missing_ok=True)

    def _load_shard(self, f: Path) -> None:
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                meta = h.metadata() or {}
                if meta.get("encoder") != self.ident:
                    return
                captions = json.loads(meta["captions"])
                states, masks, lengths = h.get_tensor("states"), h.get_tensor("masks"), h.get_tensor("lengths")
        except (SafetensorError, OSError, KeyError, ValueError):
            warnings.warn(f"ignoring unreadable text cache shard {f}", stacklevel=2)
            return
        offset = 0
        for cap, mask, n in zip(captions, masks, lengths.tolist()):
            full = torch.zeros(self.max_length, states.shape[-1])
            full[:n] = states[offset:offset + n]
            offset += n
            self.mem[cap] = (full, mask.float())

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from .model.text import FrozenTextEncoder

            self._encoder = FrozenTextEncoder(self.name, self.max_length)
        return self._encoder

    def get(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        for cap in captions:
            if cap not in self.mem:
                states, mask = self.encoder([cap])
                self.mem[cap] = (states[0] * mask[0, :, None], mask[0])
                self.new.append(cap)
        return (torch.stack([self.mem[c][0] for c in captions]), torch.stack([self.mem[c][1] for c in captions]))

    def flush(self) -> None:
        """Write captions added since the last flush as one new shard (atomic); no-op on non-writer ranks."""
        if not (self.writer and self.folder is not None and self.new):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lengths = [int(torch.nonzero(self.mem[c][1]).max()) + 1 if self.mem[c][1].any() else 0 for c in self.new]
        states = torch.cat([self.mem[c][0][:n] for c, n in zip(self.new, lengths)])
        masks = torch.stack([self.mem[c][1].to(torch.uint8) for c in self.new])
        name = f"text-{time.time_ns():020d}.safetensors"
        tmp = self.folder / f".{name}.tmp"
        save_file({"states": states.contiguous(), "masks": masks, "lengths": torch.tensor(lengths)}, str(tmp),
                  metadata={"encoder": self.ident, "captions": json.dumps(self.new)})
        os.replace(tmp, self.folder / name)
        self.new = []


# ---------------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------------


def _init_distributed() -> tuple[int, int, torch.device, bool]:
    """-> (rank, world size, device, whether we created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"), False
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=2))  # rank 0 may encode a corpus meanwhile
        created = True
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, dist.get_world_size(), device, created


def _lock(out: Path) -> Any:
    """An exclusive lock on out/.lock for the life of the process (released by the OS even on SIGKILL)."""
    import fcntl

    fh = open(out / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        fh.close()
        raise TrainingError(f"another training process is using {out}") from e
    return fh


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_sigterm() -> Any:
    """SIGTERM (kill, a scheduler, a session ending) stops like Ctrl-C: the step is saved before exit. A process
    started in the background by a shell ignores SIGINT, so SIGTERM is the way to stop it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _sigterm)


def interrupted_message(out: str | os.PathLike) -> str:
    """What to tell someone who stopped a run: resume if a step was saved; before the first save there is nothing
    to resume (a generator's latent cache keeps the files it encoded, so the same command starts faster)."""
    if (Path(out).expanduser() / "state" / "state.json").is_file():
        return "interrupted: the last step is saved; continue with --resume"
    return ("interrupted before the first save: nothing to resume; run the same command again (encoded latents "
            "are kept)")


def _resolve(name: str, given: Any, saved: Any, default: Any, must_match: bool, notes: list[str]) -> Any:
    """A setting on resume: the saved value unless given; a given different value is an error or a note."""
    if given is None:
        return saved if saved is not None else default
    if saved is not None and given != saved:
        if must_match:
            raise TrainingError(f"cannot resume with {name}={given!r}: the run in this folder uses {saved!r}")
        notes.append(f"{name} changed {saved!r} -> {given!r} on resume (no longer bit-identical to an uninterrupted run)")
    return given


# ---------------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------------


def train(
    stage: str,
    data: str | os.PathLike | None,
    config: str | os.PathLike | None,
    out: str | os.PathLike,
    steps: int = 10_000,
    resume: bool = False,
    batch_size: int | None = None,
    crop_length: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    ckpt_every: int = 250,
    sample_every: int = 1000,
    log_every: int = 10,
    *,
    dmae: str | os.PathLike | None = None,
    grad_clip: float = 1.0,
    ema_beta: float = 0.995,
    ema_power: float = 0.7,
    sample_steps: int = 10,
    progress: bool | None = None,
    tensorboard: bool = True,
    init_from: str | os.PathLike | None = None,
    freeze_encoder: bool | None = None,
    genre_balance: float | None = None,
    short_captions: float | None = None,
) -> TrainResult:
    """Train stage "autoencoder" (DMAE) or "generator" (text-to-latent) into the run folder `out`.

    Args:
        stage: "autoencoder" or "generator".
        data: folder of audio (+ optional metadata.jsonl). On resume None = the run's folder.
        config: "tiny", "paper" or a JSON file. None = "tiny" for a new run, the run's config on resume. The
            generator stage takes the DMAE section from the --dmae checkpoint; None = that checkpoint's config.
        out: run folder (created). A folder that already holds a run needs resume=True.
        steps: total optimizer steps to reach (on resume too: resume to `steps`, not `steps` more).
        resume: continue the run in `out` exactly where its last state was saved.
        batch_size: crops per step over all ranks (default 8; must divide by the world size).
        crop_length: samples per crop (default 2**16 autoencoder, 2**18 generator = 256 latent frames).
        lr: AdamW learning rate (default 1e-4; may be changed on resume). betas (0.95, 0.999), eps 1e-6, wd 1e-3.
        seed: run seed for init, data and noise (default 0).
        threads: torch.set_num_threads(threads) when given.
        ckpt_every / sample_every / log_every: in steps (0 = never; the last step is always checkpointed).
        dmae: (generator stage) DMAE checkpoint folder, e.g. runs/ae/checkpoint. Copied into out/dmae.
        grad_clip: max global gradient norm (0 = no clipping; the norm is logged either way).
        ema_beta / ema_power: EMA decay min(beta, 1 - (1 + step) ** -power).
        sample_steps: decoder (and generator) denoising steps for the periodic samples.
        progress: tqdm bar (None = only when stderr is a TTY). tensorboard: write out/tb.
        init_from: (new run only) start from the weights of this checkpoint folder (e.g. the committed EMA
            weights in engines/checkpoints/) at its recorded step, with a fresh optimizer: how a run continues on a
            machine that does not have its state/ folder.
        freeze_encoder: (autoencoder stage) train the decoder only, the encoder fixed at its EMA weights, so that a
            generator can train on that encoder's latents while the decoder keeps improving; the checkpoint's
            `encoder_sha256` says which latents a DMAE makes. None = the run's own setting (default off).
        genre_balance: draw tracks by length x (their genre's total length) ** -genre_balance (0 = by length, 1 =
            every genre alike; data.dataset.sampling_cdf). None = the run's own setting (default 0).
        short_captions: (generator stage) the share of captions cut to 1-3 fragments, so that short prompts
            ("jazz") are in the training distribution (data.dataset.caption_from_metadata). None = the run's own
            setting (default 0).

    Raises TrainingError / ValueError (one-line messages) for bad input, a non-finite loss or a failed save.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    from .args import check_train_args  # every numeric argument in range before anything is created

    check_train_args(steps=steps, batch_size=batch_size, crop_length=crop_length, lr=lr, seed=seed, threads=threads,
                     ckpt_every=ckpt_every, sample_every=sample_every, log_every=log_every, grad_clip=grad_clip,
                     ema_beta=ema_beta, ema_power=ema_power, sample_steps=sample_steps, genre_balance=genre_balance,
                     short_captions=short_captions)
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        torch.set_num_threads(threads)
    rank, world, device, created_pg = _init_distributed()
    lock = None
    previous_term = _stop_on_sigterm()
    try:
        out = Path(out).expanduser().resolve()
        check_apart(out, {"corpus folder": data, "DMAE checkpoint": dmae, "--init-from checkpoint": init_from})
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file: a run folder is a folder (use a new name)")
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            lock = _lock(out)  # held until we return (the OS drops it if the process dies)
            _recover_state_dir(out)
        if world > 1:
            dist.barrier()
        return _train(stage=stage, data=data, config=config, out=out, steps=steps, resume=resume,
                      batch_size=batch_size, crop_length=crop_length, lr=lr, seed=seed, ckpt_every=ckpt_every,
                      sample_every=sample_every, log_every=log_every, dmae=dmae, grad_clip=grad_clip,
                      ema_beta=ema_beta, ema_power=ema_power, sample_steps=sample_steps, progress=progress,
                      tensorboard=tensorboard, rank=rank, world=world, device=device, init_from=init_from,
                      freeze_encoder=freeze_encoder, genre_balance=genre_balance, short_captions=short_captions)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if lock is not None:
            lock.close()
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


def _train(stage, data, config, out, steps, resume, batch_size, crop_length, lr, seed, ckpt_every,
           sample_every, log_every, dmae, grad_clip, ema_beta, ema_power, sample_steps, progress, tensorboard,
           rank, world, device, init_from=None, freeze_encoder=None, genre_balance=None,
           short_captions=None) -> TrainResult:
    from .data.dataset import AudioFolder, RandomCrops

    t_start = time.time()
    main = rank == 0
    state_dir, ckpt_dir, log_file = out / "state", out / "checkpoint", out / "train.log"

    def log(line: str) -> None:
        if main:
            with open(log_file, "a") as f:
                f.write(f"{_now()} {line}\n")

    # ---- settings: fresh run, or the saved run's settings on resume --------------------------------------------
    saved: dict[str, Any] = {}
    if (state_dir / "state.json").is_file():
        saved = read_state_doc(state_dir)
        if not resume:
            raise TrainingError(f"{out} already holds a training run ({saved.get('stage')}, step {saved.get('step')}): "
                                "pass resume=True (--resume) to continue it, or use another out folder")
    elif resume:
        raise TrainingError(f"nothing to resume in {out}: no training state ({state_dir / 'state.json'})")
    hp = saved.get("hparams", {})
    notes: list[str] = []
    if saved and saved["stage"] != stage:
        raise TrainingError(f"cannot resume: {out} holds a {saved['stage']!r} run, not {stage!r}")
    seed = _resolve("seed", seed, saved.get("seed"), 0, True, notes)
    batch_size = _resolve("batch_size", batch_size, hp.get("batch_size"), 8, False, notes)
    crop_length = _resolve("crop_length", crop_length, hp.get("crop_length"), DEFAULT_CROP[stage], False, notes)
    lr = _resolve("lr", lr, hp.get("lr"), 1e-4, False, notes)
    freeze_encoder = bool(_resolve("freeze_encoder", freeze_encoder, hp.get("freeze_encoder"), False, False, notes))
    genre_balance = float(_resolve("genre_balance", genre_balance, hp.get("genre_balance"), 0.0, False, notes))
    short_captions = float(_resolve("short_captions", short_captions, hp.get("short_captions"), 0.0, False, notes))
    if freeze_encoder and stage != "autoencoder":
        raise ValueError("freeze_encoder applies to the autoencoder stage only")
    if short_captions and stage != "generator":
        raise ValueError("short_captions applies to the generator stage only (the DMAE reads no text)")
    if saved and hp.get("world_size") != world:
        notes.append(f"world size changed {hp.get('world_size')} -> {world} (no longer bit-identical)")
    if data is None:
        if not saved:
            raise ValueError("data is required: a folder of audio files")
        data = saved["data"]
    data = str(Path(data).expanduser().resolve())
    if saved and data != saved["data"]:
        notes.append(f"data folder changed {saved['data']} -> {data}")
    if batch_size < 1 or batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the world size {world}")
    if crop_length < 1:
        raise ValueError("crop_length must be positive")
    local_batch = batch_size // world

    # ---- config + models --------------------------------------------------------------------------------------
    dmae_model = None
    dmae_sha = None
    if stage == "generator":
        dmae_src = Path(dmae).expanduser().resolve() if dmae is not None else None
        run_dmae = out / "dmae"
        if saved:
            if dmae_src is not None and not (dmae_src / "dmae.safetensors").is_file():
                raise ValueError(f"not a DMAE checkpoint folder (no dmae.safetensors): {dmae_src}")
            if dmae_src is not None and sha256_file(dmae_src / "dmae.safetensors") != saved["dmae_sha256"]:
                raise TrainingError(f"cannot resume with a different DMAE: this run trains on {run_dmae}")
        else:
            if dmae_src is None:
                raise ValueError("the generator stage needs dmae=<DMAE checkpoint folder> (--dmae runs/ae/checkpoint)")
            dmae_cfg, _ = read_config(dmae_src)  # CheckpointError (a ValueError) names what is wrong
            load_weights(dmae_src, "dmae")
            if main:
                atomic_dir(run_dmae, lambda tmp: [shutil.copy2(dmae_src / f, tmp / f)
                                                  for f in ("config.json", "dmae.safetensors")])
            if world > 1:
                dist.barrier()
        dmae_cfg, dmae_meta = read_config(run_dmae)
        dmae_sha = sha256_file(run_dmae / "dmae.safetensors")
        if saved:
            cfg = ModelConfig.from_dict(saved["model"])
            if config is not None:
                given = load_config(config)
                given = dataclasses.replace(given, dmae=dmae_cfg.dmae)
                if given.to_dict() != cfg.to_dict():
                    raise TrainingError(f"cannot resume with config {config}: the run in {out} uses another config")
        else:
            base = dmae_cfg if config is None else load_config(config)
            cfg = ModelConfig(name=base.name, dmae=dmae_cfg.dmae, generator=base.generator, text=base.text)
        dmae_model = DMAE(cfg.dmae)
        load_into(dmae_model, load_weights(run_dmae, "dmae"), "dmae")
        dmae_model = dmae_model.eval().requires_grad_(False).to(device)
        hop = cfg.dmae.hop
        if crop_length % hop:
            raise ValueError(f"generator crop_length must be a multiple of the latent hop {hop}, got {crop_length}")
    else:
        if saved:
            cfg = ModelConfig.from_dict(saved["model"])
            if config is not None and load_config(config).to_dict() != cfg.to_dict():
                raise TrainingError(f"cannot resume with config {config}: the run in {out} uses another config")
        else:
            cfg = load_config("tiny" if config is None else config)

    def build() -> nn.Module:
        return DMAE(cfg.dmae) if stage == "autoencoder" else Generator(cfg.generator)

    torch.manual_seed(seed)
    model = build().to(device)
    ema = build().to(device)  # an independent instance: its forward only ever sees its own weights
    ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    if stage == "generator" and (crop_length // cfg.dmae.hop) % model.length_multiple:
        raise ValueError(f"generator crop of {crop_length // cfg.dmae.hop} latent frames is not a multiple of "
                         f"{model.length_multiple}")

    step = 0
    if saved:
        try:
            load_into(model, load_file(str(state_dir / "model.safetensors")), "model")
            load_into(ema, load_file(str(state_dir / "ema.safetensors")), "ema")
            opt.load_state_dict(_unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")),
                                                     saved["optimizer"]))
            _set_rng_states(load_file(str(state_dir / "rng.safetensors"))["torch"], saved["rng"])
        except (SafetensorError, OSError, CheckpointError, KeyError, ValueError) as e:
            raise TrainingError(f"corrupt training state in {state_dir}: {e}") from e
        for g in opt.param_groups:
            g["lr"] = lr
        step = int(saved["step"])
    elif init_from is not None:
        component = "dmae" if stage == "autoencoder" else "generator"
        try:
            weights = load_weights(init_from, component)
            load_into(model, weights, component)
            load_into(ema, weights, component)
            meta = read_config(init_from)[1]
            # a combined checkpoint's own step is its generator's; its DMAE's is in meta["dmae"]
            if stage == "autoencoder" and isinstance(meta.get("dmae"), dict):
                meta = meta["dmae"]
            step = int(meta.get("step", 0))
        except CheckpointError as e:
            raise TrainingError(f"--init-from {init_from}: {e}") from e
    if freeze_encoder:
        # the frozen encoder is the EMA's (what checkpoints ship); AdamW skips parameters that get no gradient
        model.encoder.load_state_dict(ema.encoder.state_dict())
        model.encoder.requires_grad_(False)

    # ---- data -------------------------------------------------------------------------------------------------
    sr = cfg.dmae.sample_rate
    folder = AudioFolder(data, sr=sr, seed=seed)
    text_cache = None
    if stage == "autoencoder":
        crops = RandomCrops(folder, crop_length, seed=seed, batch_size=local_batch, sr=sr, genre_balance=genre_balance)

        def get_batch(k: int) -> tuple[Tensor, list[str]]:
            items = [crops.item(k, rank * local_batch + i) for i in range(local_batch)]
            return torch.from_numpy(np.stack([a for a, _ in items])), [t for _, t in items]
    else:
        cache_dir = out / "latent_cache"
        if main:
            build_latent_cache(folder, dmae_model, dmae_sha, crop_length, cache_dir, log=log)
        if world > 1:
            dist.barrier()
        lcrops = LatentCrops(folder, load_latent_cache(folder, dmae_sha, crop_length, cache_dir), seed, genre_balance,
                             short_captions)
        text_cache = TextCache(cfg.text.encoder, cfg.text.max_length, out / "text_cache", writer=main)
        if text_cache.encoder.features != cfg.text.features:
            raise ValueError(f"text encoder gives {text_cache.encoder.features} features, config says {cfg.text.features}")

        def get_batch(k: int) -> tuple[Tensor, list[str]]:
            items = [lcrops.item(k, rank * local_batch + i) for i in range(local_batch)]
            return torch.stack([z for z, _ in items]), [t for _, t in items]

    # ---- logging ----------------------------------------------------------------------------------------------
    tb = None
    if main and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"), purge_step=step if saved else None)
    if progress is None:
        progress = sys.stderr.isatty()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{'resume' if saved else 'start'} {stage} at step {step} -> {steps}: config {cfg.name}, "
        f"{n_params / 1e6:.2f}M parameters, batch {batch_size} x {crop_length} samples, world {world}, "
        f"threads {torch.get_num_threads()}, data {data} ({len(folder)} files, {folder.total_seconds / 60:.1f} min)")
    for note in notes:
        log("note: " + note)

    # ---- saving -----------------------------------------------------------------------------------------------
    last_saved = {"step": step if saved else None}

    def save(k: int, loss_value: float | None) -> None:
        if not main:
            return
        meta = {"stage": stage, "step": k, "ema": True, "ema_beta": ema_beta, "ema_power": ema_power,
                "seed": seed, "loss": loss_value, "time": _now(),
                "encoder_sha256": weights_sha256((ema if stage == "autoencoder" else dmae_model).encoder.state_dict())}
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "stage": stage, "step": k, "seed": seed,
               "data_seed": seed, "data": data, "model": cfg.to_dict(), "time": _now(), "loss": loss_value,
               "dmae_sha256": dmae_sha,
               "hparams": {"batch_size": batch_size, "crop_length": crop_length, "lr": lr, "betas": list(BETAS),
                           "eps": EPS, "weight_decay": WEIGHT_DECAY, "grad_clip": grad_clip, "ema_beta": ema_beta,
                           "ema_power": ema_power, "world_size": world,
                           "freeze_encoder": freeze_encoder, "genre_balance": genre_balance,
                           "short_captions": short_captions}}
        try:
            if stage == "autoencoder":
                weights = {"dmae": ema.state_dict()}
            else:
                weights = {"dmae": dmae_model.state_dict(), "generator": ema.state_dict()}
                meta["dmae"] = dmae_meta
            save_checkpoint(ckpt_dir, cfg, weights, meta, dtype=torch.float32)
            save_state(state_dir, doc, model, ema, opt)
            if text_cache is not None:
                text_cache.flush()
        except (OSError, SafetensorError) as e:
            reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
            raise TrainingError(f"saving step {k} failed ({reason}); {_last_good()}") from e
        last_saved["step"] = k
        log(f"saved step {k}: {ckpt_dir} (EMA) + {state_dir}")
        if tb is not None:
            tb.flush()

    def _last_good() -> str:
        if (ckpt_dir / "config.json").is_file():
            try:
                _, meta = read_config(ckpt_dir)
                return f"last good checkpoint: {ckpt_dir} (step {meta.get('step')})"
            except CheckpointError:
                pass
        return "no checkpoint saved yet"

    # ---- samples ----------------------------------------------------------------------------------------------
    from .data.audio import save_flac

    sample_dir = out / "samples"
    ref = get_batch(0) if main and sample_every else None

    @torch.no_grad()
    def write_sample(k: int) -> None:
        from .model.diffusion import ddim_sample, linear_sigmas

        g = torch.Generator().manual_seed(_seed(seed, _SAMPLE))
        sample_dir.mkdir(parents=True, exist_ok=True)
        if stage == "autoencoder":
            x = ref[0][:1].to(device)
            if not (sample_dir / "original.flac").exists():
                save_flac(sample_dir / "original.flac", x[0].cpu().numpy(), sr)
            audio = ema.decode(ema.encode(x), steps=sample_steps, generator=g)
            tag = "sample/reconstruction"
        else:
            prompt = ref[1][0]
            text, mask = text_cache.get([prompt])
            noise = torch.randn(1, cfg.dmae.latent_channels, crop_length // cfg.dmae.hop, generator=g)
            scale = cfg.generator.default_guidance
            latent = ddim_sample(lambda z, s: ema.guided(z, s, text.to(device), mask.to(device), scale),
                                 noise.to(device), linear_sigmas(sample_steps))
            audio = dmae_model.decode(latent, steps=sample_steps, generator=g)
            (sample_dir / f"step-{k:07d}.txt").write_text(prompt + "\n")
            tag = "sample/generation"
        wav = audio[0].float().cpu().clamp(-1, 1)
        save_flac(sample_dir / f"step-{k:07d}.flac", wav.numpy(), sr)
        if tb is not None:
            tb.add_audio(tag, wav.mean(0, keepdim=True), k, sample_rate=sr)

    # ---- loop -------------------------------------------------------------------------------------------------
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(_LossOf(model))
    else:
        net = _LossOf(model)
    model.train()
    pool = ThreadPoolExecutor(max_workers=1)  # prefetch the next batch while this step computes
    pending = pool.submit(get_batch, step) if step < steps else None
    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, desc=stage, unit="step", dynamic_ncols=True)
    losses: list[float] = []
    window: list[float] = []
    last_loss: float | None = None
    t_window, steps_window = time.time(), 0
    first_step = step
    try:
        while step < steps:
            batch, captions = pending.result()
            pending = pool.submit(get_batch, step + 1) if step + 1 < steps else None
            torch.manual_seed(_seed(seed, _NOISE, rank, step))  # sigma + noise of this step (global RNG)
            batch = batch.to(device)
            if stage == "autoencoder":
                loss = net(batch)
            else:
                text, mask = text_cache.get(captions)
                cfg_gen = torch.Generator(device=device).manual_seed(_seed(seed, _CFG, rank, step))
                loss = net(batch, text.to(device), mask.to(device), generator=cfg_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss_all = loss.detach().clone()
            if world > 1:  # one tiny all-reduce: the mean loss for logging, and NaN on any rank stops every rank
                dist.all_reduce(loss_all)
                loss_all /= world
            value = float(loss_all)
            if not math.isfinite(value):
                raise TrainingError(f"loss became {value} at step {step + 1}; {_last_good()}")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")))
            if not math.isfinite(grad_norm):
                raise TrainingError(f"gradient norm became {grad_norm} at step {step + 1}; {_last_good()}")
            opt.step()
            decay = ema_decay(step, ema_beta, ema_power)
            ema_update(ema, model, decay)
            step += 1
            losses.append(float(loss.detach()))
            window.append(value)
            steps_window += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if log_every and (step % log_every == 0 or step == steps):
                now = time.time()
                sps = steps_window / max(now - t_window, 1e-9)
                last_loss = sum(window) / len(window)
                log(f"step {step} loss {last_loss:.5f} grad_norm {grad_norm:.4f} lr {lr:.3g} ema_decay {decay:.5f} "
                    f"{sps:.3f} steps/s")
                if tb is not None:
                    for name, v in (("loss", last_loss), ("lr", lr), ("grad_norm", grad_norm),
                                    ("steps_per_s", sps), ("ema_decay", decay)):
                        tb.add_scalar(f"train/{name}", v, step)
                window, t_window, steps_window = [], now, 0
            if step == steps or (ckpt_every and step % ckpt_every == 0):
                save(step, last_loss if last_loss is not None else value)
            if main and sample_every and step % sample_every == 0:
                try:
                    write_sample(step)
                except OSError as e:  # a sample is not worth stopping for; a full disk shows up at the next save
                    log(f"warning: could not write the sample of step {step}: {e}")
    except KeyboardInterrupt:
        if world == 1 and step != last_saved["step"] and step > 0:
            save(step, last_loss)
            log(f"interrupted at step {step}; state saved")
        raise
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    if text_cache is not None:
        text_cache.flush()  # no-op on ranks other than 0
    seconds = time.time() - t_start
    done = step - first_step
    if last_loss is None and window:
        last_loss = sum(window) / len(window)
    if done:
        log(f"done: step {step}, {done} steps in {seconds:.1f} s")
    return TrainResult(
        stage=stage, step=step, loss=last_loss, losses=losses, out=out,
        checkpoint=ckpt_dir if (ckpt_dir / "config.json").is_file() else None, seconds=seconds,
        steps_per_second=done / seconds if seconds > 0 else 0.0,
        weights_sha256=weights_sha256(model.state_dict()),
    )


# ---------------------------------------------------------------------------------------------------------------
# Command line (python -m training.train ...; torchrun ... -m training.train ...)
# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--data", help="folder of audio (+ metadata.jsonl); on --resume defaults to the run's")
    p.add_argument("--config", help="tiny | paper | JSON file (default: tiny, or the run's on --resume)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--dmae", help="generator stage: DMAE checkpoint folder (e.g. runs/ae/checkpoint)")
    p.add_argument("--init-from", help="new run: start from this checkpoint's weights at its step (fresh optimizer)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int, default=10_000, help="total steps to reach")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop-length", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-beta", type=float, default=0.995)
    p.add_argument("--ema-power", type=float, default=0.7)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--genre-balance", type=float,
                   help="draw tracks by length x genre length ** -B (0 = by length, 1 = genres alike; default 0)")
    p.add_argument("--short-captions", type=float,
                   help="generator: share of captions cut to 1-3 fragments, like typed prompts (default 0)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="autoencoder: train the decoder only (the encoder, and so the latents, stay fixed)")
    a = p.parse_args(argv)
    try:
        r = train(a.stage, a.data, a.config, a.out, steps=a.steps, resume=a.resume, batch_size=a.batch_size,
                  crop_length=a.crop_length, lr=a.lr, seed=a.seed, threads=a.threads, ckpt_every=a.ckpt_every,
                  sample_every=a.sample_every, log_every=a.log_every, dmae=a.dmae, grad_clip=a.grad_clip,
                  ema_beta=a.ema_beta, ema_power=a.ema_power, sample_steps=a.sample_steps,
                  progress=False if a.no_progress else None, tensorboard=not a.no_tensorboard,
                  init_from=a.init_from, freeze_encoder=True if a.freeze_encoder else None,
                  genre_balance=a.genre_balance, short_captions=a.short_captions)
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted_message(a.out), file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{r.stage}: step {r.step}, loss {r.loss}, {r.steps_per_second:.3f} steps/s, checkpoint {r.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
