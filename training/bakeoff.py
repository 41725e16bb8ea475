"""The decoder bake-off: train one autoencoder candidate on the corpus at a fixed CPU budget, resumably.

    python -m training.bakeoff mag --data /work/data/corpus --out /work/runs/bake-mag --cpu-hours 3 --threads 1

Candidates share the corpus, the crops (seeded by step), the optimiser and the budget, counted in CPU seconds of the
training process (so a run slowed down by other work on the machine is not cut short). Every `--eval-minutes` the
EMA weights are measured on the dev half of the held-out recordings (the final half is kept for the bake-off
table, `python -m training.bakeoff_table`): chroma agreement of the round trip, log-mel L1, and the ridge probe
(latent -> chroma, the early sign that the latent holds notes). Resume by running the same command again.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from training.data.dataset import AudioFolder, RandomCrops
from training.eval import metrics, musicness
from training.model import framedec as fd
from training.model.diffusion import ddim_sample, linear_sigmas, v_loss

SR = 48000
LATENT_HOP = 1024


# ---- candidates ------------------------------------------------------------------------------------------------

class Candidate(nn.Module):
    """An encoder with the chroma head plus one decoder kind; loss(audio) and reconstruct(audio)."""

    aux_weight = 1.0

    def __init__(self):
        super().__init__()
        self.encoder = fd.SpecEncoder(fd.SpecEncoderConfig())

    def encode(self, audio: Tensor) -> Tensor:
        return self.encoder(audio)

    def aux_loss(self, z: Tensor, audio: Tensor) -> Tensor:
        target = fd.chroma_target(audio, LATENT_HOP)
        return F.mse_loss(self.encoder.aux(z), target)


_MEL: dict[int, Tensor] = {}


def log_mel_of_mag(mag: Tensor) -> Tensor:
    """log(1e-5 + mel) of |STFT| [B, C, 1025, T] with the eval's filterbank (n_fft 2048)."""
    if 0 not in _MEL:
        _MEL[0] = torch.from_numpy(metrics.mel_filterbank(SR, 2048)).float()
    return torch.log(metrics.EPS + torch.einsum("mf,bcft->bcmt", _MEL[0], mag))


class MagCandidate(Candidate):
    """Candidate 4: latent -> log |STFT| (n_fft 2048, hop 256); phase by fast Griffin-Lim."""

    gl_iterations = 32

    def __init__(self):
        super().__init__()
        self.decoder = fd.MagDecoder(fd.MagDecoderConfig())

    def loss(self, audio: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.decoder.cfg
        z = self.encode(audio)
        target = fd.stft(audio, cfg.n_fft, cfg.hop)[..., : z.shape[-1] * self.decoder.factor]
        true_log = fd.log_magnitude(target)
        pred_log = self.decoder(z)
        l1 = (pred_log - true_log).abs().mean()
        mag, pred_mag = target.abs(), pred_log.exp()
        sc = torch.linalg.vector_norm(pred_mag - mag) / torch.linalg.vector_norm(mag).clamp_min(1e-6)
        mel = (log_mel_of_mag(pred_mag) - log_mel_of_mag(mag)).abs().mean()
        aux = self.aux_loss(z, audio)
        loss = l1 + sc + mel + self.aux_weight * aux
        return loss, {"l1": l1.item(), "sc": sc.item(), "mel": mel.item(), "aux": aux.item()}

    @torch.no_grad()
    def reconstruct(self, audio: Tensor) -> Tensor:
        cfg = self.decoder.cfg
        z = self.encode(audio)
        log_mag = self.decoder(z)
        n = z.shape[-1] * LATENT_HOP
        pad = F.pad(log_mag, (0, 1), value=math.log(fd.LOG_EPS))  # the STFT of n samples has n / hop + 1 frames
        return fd.griffin_lim(pad, cfg.n_fft, cfg.hop, n, self.gl_iterations)


class SpecDiffCandidate(Candidate):
    """Candidate 2: v-diffusion over the compressed complex STFT (n_fft 1024, hop 256), latent at the deepest level."""

    decode_steps = 8

    def __init__(self):
        super().__init__()
        self.decoder = fd.SpecDiffusionDecoder(fd.SpecDiffusionConfig())

    def frames(self, audio: Tensor, t: int) -> Tensor:
        cfg = self.decoder.cfg
        return self.decoder.to_frames(fd.stft(audio, cfg.n_fft, cfg.hop)[..., : t * 4])

    def loss(self, audio: Tensor) -> tuple[Tensor, dict[str, float]]:
        z = self.encode(audio)
        x0 = self.frames(audio, z.shape[-1])
        v = v_loss(lambda x, s: self.decoder(x, s, z), x0)
        aux = self.aux_loss(z, audio)
        return v + self.aux_weight * aux, {"v": v.item(), "aux": aux.item()}

    @torch.no_grad()
    def reconstruct(self, audio: Tensor, seed: int = 0) -> Tensor:
        cfg = self.decoder.cfg
        z = self.encode(audio)
        t = z.shape[-1]
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(audio.shape[0], self.decoder.io_channels, t * 4, generator=g)
        x = ddim_sample(lambda x, s: self.decoder(x, s, z), noise, linear_sigmas(self.decode_steps))
        spec = F.pad(self.decoder.from_frames(x), (0, 1))
        return fd.istft(spec, cfg.n_fft, cfg.hop, t * LATENT_HOP)


RESOLUTIONS = ((1024, 256), (2048, 512))  # the eval's log-mel is read off the second


def waveform_losses(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(multi-resolution STFT loss: spectral convergence + log-magnitude L1, log-mel L1) of output y against x."""
    mr = 0.0
    for nf, hop in RESOLUTIONS:
        with torch.no_grad():
            mx = fd.magnitude(fd.stft(x, nf, hop))
        my = fd.magnitude(fd.stft(y, nf, hop))
        mr = mr + torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(mx).clamp_min(1e-6) \
            + (torch.log(my + fd.LOG_EPS) - torch.log(mx + fd.LOG_EPS)).abs().mean()
    return mr / len(RESOLUTIONS), (log_mel_of_mag(my) - log_mel_of_mag(mx)).abs().mean()


class PhaseCandidate(Candidate):
    """Candidate 3: latent -> log |STFT| + phase (n_fft 1024, hop 256) -> inverse STFT, trained on the magnitude,
    multi-resolution STFT and log-mel of the output waveform, and the magnitude-weighted anti-wrapped errors of the
    phase's time and frequency derivatives (instantaneous frequency, group delay: what the magnitude determines; the
    absolute phase does not enter). No discriminator: the CPU cannot afford one."""

    def __init__(self):
        super().__init__()
        self.decoder = fd.PhaseDecoder(fd.PhaseDecoderConfig())

    def loss(self, audio: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.decoder.cfg
        z = self.encode(audio)
        n = z.shape[-1] * LATENT_HOP
        target = fd.stft(audio, cfg.n_fft, cfg.hop)[..., : n // cfg.hop]
        pred_log, pred_spec = self.decoder.spectrum(z)
        true_mag = fd.magnitude(target)
        l1 = (pred_log - torch.log(true_mag + fd.LOG_EPS)).abs().mean()
        w = true_mag / true_mag.mean().clamp_min(1e-6)
        dphi_p, dphi_t = pred_spec.angle(), target.angle()
        inst_freq = (w[..., 1:] * fd.anti_wrap(dphi_p.diff(dim=-1) - dphi_t.diff(dim=-1))).mean()
        group_delay = (w[..., 1:, :] * fd.anti_wrap(dphi_p.diff(dim=-2) - dphi_t.diff(dim=-2))).mean()
        y = fd.istft(F.pad(pred_spec, (0, 1)), cfg.n_fft, cfg.hop, n)
        mr, mel = waveform_losses(y, audio[..., :n])
        aux = self.aux_loss(z, audio)
        loss = l1 + mr + mel + 0.5 * (inst_freq + group_delay) + self.aux_weight * aux
        return loss, {"l1": l1.item(), "mr": mr.item(), "mel": mel.item(), "if": inst_freq.item(),
                      "gd": group_delay.item(), "aux": aux.item()}

    @torch.no_grad()
    def reconstruct(self, audio: Tensor) -> Tensor:
        return self.decoder(self.encode(audio))


class IFPhaseCandidate(Candidate):
    """Candidate 3b: latent -> log |STFT| + phase advance per frame, integrated (`fd.IFPhaseDecoder`) -> inverse
    STFT. Losses: log-magnitude L1, the magnitude-weighted anti-wrapped error of the phase advance against the
    target's (its instantaneous frequency), the multi-resolution STFT and log-mel of the output waveform."""

    def __init__(self):
        super().__init__()
        self.decoder = fd.IFPhaseDecoder(fd.PhaseDecoderConfig())

    def loss(self, audio: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.decoder.cfg
        z = self.encode(audio)
        n = z.shape[-1] * LATENT_HOP
        target = fd.stft(audio, cfg.n_fft, cfg.hop)[..., : n // cfg.hop]
        pred_log, advance, pred_spec = self.decoder.spectrum(z)
        true_mag = fd.magnitude(target)
        l1 = (pred_log - torch.log(true_mag + fd.LOG_EPS)).abs().mean()
        w = (true_mag / true_mag.mean().clamp_min(1e-6))[..., 1:]
        inst_freq = (w * fd.anti_wrap(advance[..., 1:] - target.angle().diff(dim=-1))).mean()
        y = fd.istft(F.pad(pred_spec, (0, 1)), cfg.n_fft, cfg.hop, n)
        mr, mel = waveform_losses(y, audio[..., :n])
        aux = self.aux_loss(z, audio)
        loss = l1 + mr + mel + 0.5 * inst_freq + self.aux_weight * aux
        return loss, {"l1": l1.item(), "mr": mr.item(), "mel": mel.item(), "if": inst_freq.item(), "aux": aux.item()}

    @torch.no_grad()
    def reconstruct(self, audio: Tensor) -> Tensor:
        return self.decoder(self.encode(audio))


DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "engines" / "checkpoints" / "default"


class WaveCandidate(Candidate):
    """Candidate 1, the baseline: the shipped waveform v-diffusion DMAE (the paper's kind), continued from its
    committed weights with its encoder unfrozen and the same chroma head on its latent. Decoded with 4 DDIM steps,
    without the post-filter (which is fitted to one encoder)."""

    decode_steps = 4

    def __init__(self):
        nn.Module.__init__(self)
        from training.checkpoint import load_models

        _, models = load_models(DEFAULT_CHECKPOINT, ("dmae",))
        self.dmae = models["dmae"].float()
        self.dmae.encoder.aux = nn.Conv1d(self.dmae.cfg.latent_channels, 12, 5, padding=2)

    # properties, not submodules: registered twice, their tensors would be shared in the state (safetensors refuses)
    @property
    def encoder(self) -> nn.Module:
        return self.dmae.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.dmae.decoder

    def encode(self, audio: Tensor) -> Tensor:
        return self.dmae.encode(audio)

    def loss(self, audio: Tensor) -> tuple[Tensor, dict[str, float]]:
        z = self.encode(audio)
        v = v_loss(lambda x, s: self.dmae.denoise(x, s, z), audio * self.dmae.cfg.audio_scale)
        aux = self.aux_loss(z, audio)
        return v + self.aux_weight * aux, {"v": v.item(), "aux": aux.item()}

    @torch.no_grad()
    def reconstruct(self, audio: Tensor, seed: int = 0) -> Tensor:
        return self.dmae.decode(self.encode(audio), steps=self.decode_steps, generator=torch.Generator().manual_seed(seed))


CANDIDATES = {"mag": MagCandidate, "specdiff": SpecDiffCandidate, "phase": PhaseCandidate,
              "ifphase": IFPhaseCandidate, "wave": WaveCandidate}


# ---- evaluation --------------------------------------------------------------------------------------------------

def holdout_clips(data: Path, half: str, seconds: float = 5.0) -> list[np.ndarray]:
    """The eval's held-out real clips (2 per track), split by track: 'dev' = tracks 0, 2, 4... of the sorted list
    (watched during training), 'final' = tracks 1, 3, 5... (the bake-off table only)."""
    from training.eval.reconstruction import holdout_clips as eval_clips

    clips = eval_clips(data, seconds=seconds, per_track=2)
    tracks = sorted({c.name.split("@")[0] for c in clips})
    chosen = set(tracks[0::2] if half == "dev" else tracks[1::2])
    n = int(seconds * SR) // LATENT_HOP * LATENT_HOP
    return [c.audio[:, :n] for c in clips if c.name.split("@")[0] in chosen]


def ridge_probe(model: Candidate, fit_audio: list[np.ndarray], test_audio: list[np.ndarray],
                context: int = 2, ridge: float = 1.0) -> float:
    """Chroma agreement of a ridge map latent (+-context frames) -> centred log chroma, fitted on `fit_audio`."""
    def features(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(a)[None]
        with torch.no_grad():
            z = model.encode(x)[0].numpy().T  # [T, 32]
        zp = np.pad(z, ((context, context), (0, 0)), mode="edge")
        feats = np.concatenate([zp[i:i + len(z)] for i in range(2 * context + 1)] + [np.ones((len(z), 1))], 1)
        c = musicness.chroma(a, hop=LATENT_HOP)[: len(z)]
        return feats[: len(c)], c

    xs, ys = zip(*(features(a) for a in fit_audio))
    x, y = np.concatenate(xs), np.concatenate(ys)
    y_target = musicness.centred_log_chroma(y)
    w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y_target)
    scores = []
    for a in test_audio:
        f, c = features(a)
        pred = f @ w
        keep = musicness.voiced(c)
        cos = [float(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t) + 1e-9))
               for p, t in zip(pred[keep], musicness.centred_log_chroma(c)[keep])]
        scores.append(np.mean(cos))
    return float(np.median(scores))


def evaluate(model: Candidate, clips: list[np.ndarray], fit_clips: list[np.ndarray]) -> dict[str, float]:
    model.eval()
    agree, mel, mr, peak, mot = [], [], [], [], []
    for a in clips:
        y = model.reconstruct(torch.from_numpy(a)[None])[0].numpy()
        agree.append(musicness.agreement(a, y))
        mel.append(metrics.log_mel_l1(a, y))
        mr.append(metrics.mrstft_l1(a, y))
        m = musicness.measures(y)
        peak.append(m["peakiness"])
        mot.append(m["motion"])
    out = {"agreement": float(np.median(agree)), "log_mel_l1": float(np.mean(mel)), "mrstft": float(np.mean(mr)),
           "peakiness": float(np.median(peak)), "motion": float(np.median(mot)),
           "ridge_probe": ridge_probe(model, fit_clips, clips)}
    model.train()
    return out


# ---- state ---------------------------------------------------------------------------------------------------------

def save_state(out: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, doc: dict) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"opt.{names[id(p)]}.{key}"] = st[key].contiguous()
                doc.setdefault("opt_steps", {})[names[id(p)]] = float(st["step"])
    tmp = out / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "state.safetensors")
    (out / "state.json.tmp").write_text(json.dumps(doc, indent=1))
    os.replace(out / "state.json.tmp", out / "state.json")
    save_file({k: v.half().contiguous() for k, v in ema.state_dict().items()}, str(out / "ema_fp16.safetensors"))


def load_state(out: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> dict:
    doc = json.loads((out / "state.json").read_text())
    t = load_file(str(out / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    for n, p in model.named_parameters():
        if f"opt.{n}.exp_avg" in t:
            opt.state[p] = {"step": torch.tensor(doc["opt_steps"][n]), "exp_avg": t[f"opt.{n}.exp_avg"],
                            "exp_avg_sq": t[f"opt.{n}.exp_avg_sq"]}
    return doc


# ---- the loop ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate", choices=sorted(CANDIDATES))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu-hours", type=float, default=3.0, help="training budget in CPU-core hours of this process")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=2 ** 16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-minutes", type=float, default=20.0, help="wall minutes between dev evaluations")
    ap.add_argument("--save-minutes", type=float, default=5.0)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="a run's ema_fp16.safetensors + state.json: continue its weights, step and CPU count on a "
                         "fresh machine (the optimiser restarts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "a")

    def emit(rec: dict) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()

    torch.manual_seed(args.seed)
    model = CANDIDATES[args.candidate]()
    ema = CANDIDATES[args.candidate]()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-2)
    doc = {"candidate": args.candidate, "step": 0, "cpu_seconds": 0.0, "args": {k: str(v) for k, v in vars(args).items()},
           "parameters": {"encoder": sum(p.numel() for n, p in model.encoder.named_parameters() if not n.startswith("aux.")),
                          "decoder": sum(p.numel() for p in model.decoder.parameters())}}
    if (args.out / "state.json").exists():
        doc = load_state(args.out, model, ema, opt)
        emit({"event": "resume", "step": doc["step"], "cpu_seconds": doc["cpu_seconds"]})
    elif args.init_from is not None:
        weights = {k: v.float() for k, v in load_file(str(args.init_from / "ema_fp16.safetensors")).items()}
        model.load_state_dict(weights)
        ema.load_state_dict(weights)
        prev = json.loads((args.init_from / "state.json").read_text())
        doc.update(step=prev["step"], cpu_seconds=prev["cpu_seconds"], init_from=str(args.init_from),
                   warmup_from=prev["step"])
        emit({"event": "init-from", "step": doc["step"], "cpu_seconds": doc["cpu_seconds"]})
    else:
        emit({"event": "start", **doc})
    crops = RandomCrops(args.data, args.crop, seed=args.seed, batch_size=args.batch_size)
    dev = holdout_clips(args.data, "dev")
    fit = [crops.item(10 ** 7 + i, 0)[0] for i in range(24)]  # training crops for the ridge probe, fixed
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    budget = args.cpu_hours * 3600
    last_save = last_eval = time.time()
    window: dict[str, list[float]] = {}
    cpu0, step0 = time.process_time(), doc["step"]
    warmup = 500
    while doc["cpu_seconds"] < budget and not stop["now"]:
        step = doc["step"]
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step - doc.get("warmup_from", 0) + 1) / warmup)
        audio, _ = crops.batch(step)
        loss, parts = model.loss(audio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, 1 - (1 + step) ** -0.7)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        doc["step"] = step + 1
        now_cpu = time.process_time()
        doc["cpu_seconds"] += now_cpu - cpu0
        cpu0 = now_cpu
        for k, v in {"loss": loss.item(), "grad_norm": gn.item(), **parts}.items():
            window.setdefault(k, []).append(v)
        if doc["step"] % 100 == 0:
            emit({"step": doc["step"], "cpu_h": round(doc["cpu_seconds"] / 3600, 3),
                  **{k: round(float(np.mean(v)), 4) for k, v in window.items()}})
            window = {}
        if time.time() - last_save > args.save_minutes * 60:
            save_state(args.out, model, ema, opt, doc)
            last_save = time.time()
        if time.time() - last_eval > args.eval_minutes * 60:
            c0 = time.process_time()
            emit({"step": doc["step"], "cpu_h": round(doc["cpu_seconds"] / 3600, 3), "eval": evaluate(ema, dev, fit)})
            cpu0 += time.process_time() - c0  # evaluation is not training budget
            last_eval = time.time()
    save_state(args.out, model, ema, opt, doc)
    emit({"step": doc["step"], "cpu_h": round(doc["cpu_seconds"] / 3600, 3), "eval": evaluate(ema, dev, fit),
          "event": "stopped" if stop["now"] else "budget reached"})
    print(f"{args.candidate}: step {doc['step']}, {doc['cpu_seconds'] / 3600:.2f} CPU hours; state in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
