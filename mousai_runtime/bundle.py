"""Load and verify a mousai bundle (docs/bundle-format.md, format version 1).

Strict: an unknown format or version, an unknown top-level field, a missing file, a size or sha256 mismatch, a path
that is absolute or climbs out of the folder, or a manifest field of the wrong type is refused with a `BundleError`
whose message is one line. Every file listed in `files` is hashed at load (`verify=True`), and `read_bytes` hashes
again exactly the bytes it hands out, so what runs is what was verified.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .files import sha256_file
from .limits import check_agreement, check_ranges

FORMAT = "mousai-bundle"
VERSION = 1

REQUIRED_TOP = ("format", "version", "name", "precision", "audio", "latent", "stft", "decoder_info", "defaults",
                "files", "models")
OPTIONAL_TOP = ("kind", "created", "versions", "source", "parity", "text", "generator_info", "postfilter")

# what the bundle holds: a missing "kind" is a text-to-music bundle (the only kind before it existed)
TEXT_TO_MUSIC, AUTOENCODER = "text-to-music", "autoencoder"
KINDS = (TEXT_TO_MUSIC, AUTOENCODER)
KIND_TOP = {TEXT_TO_MUSIC: ("text", "generator_info"), AUTOENCODER: ()}  # sections required per kind
KIND_ABSENT = {TEXT_TO_MUSIC: (), AUTOENCODER: ("text", "generator_info")}  # sections refused per kind

# the tensors the runtime feeds and reads, by component (names from the contract)
COMPONENT_IO = {
    "text_encoder": (("input_ids", "attention_mask"), ("text_states",)),
    "generator": (("x", "sigma", "text_states", "text_mask", "guidance"), ("v",)),
    "encoder": (("magnitude",), ("latent",)),
    "decoder": (("x", "sigma", "latent"), ("v",)),
}
REQUIRED_COMPONENTS = {  # a text-to-music bundle's encoder is optional (only needed for audio input)
    TEXT_TO_MUSIC: ("text_encoder", "generator", "decoder"),
    AUTOENCODER: ("encoder", "decoder"),
}
ALLOWED_COMPONENTS = {TEXT_TO_MUSIC: tuple(COMPONENT_IO), AUTOENCODER: ("encoder", "decoder")}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# The keys each interpreted section may hold: an unknown key there could change what the numbers mean, so it is
# refused (versions, source and parity are informational and free-form).
SECTION_KEYS = {
    "audio": {"sample_rate", "channels", "audio_scale"},
    "latent": {"channels", "hop"},
    "stft": {"n_fft", "hop", "center", "normalized", "window", "pad_mode"},
    "text": {"max_length", "features", "tokenizer", "pad_id"},
    "decoder_info": {"length_multiple", "receptive_field", "receptive_field_method", "downsampling"},
    "generator_info": {"length_multiple", "window_frames", "overlap_frames"},
    "postfilter": {"kind", "file", "features", "n_fft", "hop", "bands", "context", "gain_range", "fit"},
    "defaults": {"sampler", "decoder_sampler", "schedule", "generator_steps", "decoder_steps", "guidance", "seconds", "max_seconds"},
}
MODEL_KEYS = {"file", "inputs", "outputs", "fp32_file"}
TENSOR_KEYS = {"name", "dtype", "shape"}


class BundleError(Exception):
    """A bundle that is missing, corrupt, of another format version, or inconsistent (one-line message)."""


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def check_relative_path(name: Any, what: str) -> str:
    """A plain relative path inside the bundle: no absolute path, drive, backslash, '..' or empty component."""
    if not isinstance(name, str) or not name.strip():
        raise BundleError(f"{what}: file name must be a non-empty string, got {name!r}")
    if "\\" in name or "\x00" in name:
        raise BundleError(f"{what}: refusing file name {name!r} (backslash or NUL)")
    p = PurePosixPath(name)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"{what}: refusing absolute path {name!r} (bundle paths are names inside the folder)")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise BundleError(f"{what}: refusing path {name!r} (no '..', '.' or empty components)")
    return name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise BundleError(f"duplicate key {k!r} (a manifest is ambiguous with it: parsers disagree on which wins)")
        d[k] = v
    return d


def _no_constants(name: str) -> Any:
    raise BundleError(f"{name} is not JSON (a manifest has only finite numbers)")


def parse_manifest_json(text: str) -> Any:
    """json.loads, strictly: duplicate keys and NaN / Infinity literals are refused (BundleError)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


SEAL = "manifest.sha256"  # `sha256sum manifest.json` output: the manifest is covered by a hash like every file


def manifest_seal(manifest_bytes: bytes) -> str:
    """The text of manifest.sha256 for these manifest bytes (`sha256sum -c manifest.sha256` checks it)."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  manifest.json\n"


def check_manifest_seal(path: Path, manifest_bytes: bytes) -> None:
    """BundleError unless PATH/manifest.sha256 holds the sha256 of these exact manifest bytes: an edited manifest
    (a changed audio_scale, gain range or sample rate) is refused like an edited graph."""
    seal = path / SEAL
    try:
        text = seal.read_text(encoding="ascii")
    except FileNotFoundError:
        raise BundleError(f"{path}: no {SEAL} (the manifest's own hash): re-export the bundle; a bundle made before "
                          f"the manifest was hashed can be sealed with `sha256sum manifest.json > {SEAL}` in its "
                          "folder once you have checked it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable {SEAL}: {e}") from None
    parts = text.split()
    if len(parts) != 2 or not _HEX64.match(parts[0]) or parts[1].lstrip("*") != "manifest.json":
        raise BundleError(f"{path}: {SEAL} must be one line '<sha256> manifest.json' (as sha256sum writes it)")
    got = hashlib.sha256(manifest_bytes).hexdigest()
    if got != parts[0]:
        raise BundleError(f"{path}: manifest.json was changed after export (sha256 {got[:12]}..., {SEAL} says "
                          f"{parts[0][:12]}...): re-export the bundle")


# ------------------------------------------------------------------------------------------------- field checks


def _obj(m: dict, key: str, where: str = "manifest") -> dict:
    v = m.get(key)
    if not isinstance(v, dict):
        raise BundleError(f"{where}.{key} must be an object, got {type(v).__name__}")
    return v


def _int(d: dict, key: str, where: str, minimum: int | None = 1) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BundleError(f"{where}.{key} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise BundleError(f"{where}.{key} must be >= {minimum}, got {v}")
    return v


def _num(d: dict, key: str, where: str, positive: bool = False) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BundleError(f"{where}.{key} must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise BundleError(f"{where}.{key} must be > 0, got {v}")
    return float(v)


def _str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise BundleError(f"{where}.{key} must be a non-empty string, got {v!r}")
    return v


def _bool(d: dict, key: str, where: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise BundleError(f"{where}.{key} must be true or false, got {v!r}")
    return v


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints or strings (dynamic axes)


@dataclass(frozen=True)
class ModelSpec:
    component: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fp32_file: str | None = None  # fp16 bundles exported with --fp16-fallback: the fp32 graph of the component

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


_DTYPES = {"float32", "float16", "int64", "int32", "bool"}


def _tensor_list(v: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(v, list) or not v:
        raise BundleError(f"{where} must be a non-empty list")
    out = []
    for i, t in enumerate(v):
        w = f"{where}[{i}]"
        if not isinstance(t, dict):
            raise BundleError(f"{w} must be an object")
        if set(t) - TENSOR_KEYS:
            raise BundleError(f"{w}: unknown field(s) {sorted(set(t) - TENSOR_KEYS)}")
        name, dtype, shape = _str(t, "name", w), _str(t, "dtype", w), t.get("shape")
        if dtype not in _DTYPES:
            raise BundleError(f"{w}.dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(
                (isinstance(s, int) and not isinstance(s, bool) and s >= 0) or (isinstance(s, str) and s) for s in shape):
            raise BundleError(f"{w}.shape must be a list of sizes and axis names, got {shape!r}")
        out.append(TensorSpec(name, dtype, tuple(shape)))
    return tuple(out)


# ------------------------------------------------------------------------------------------------- the bundle


class Bundle:
    """A verified bundle folder. `manifest` is the parsed JSON; the properties are the fields the runtime uses."""

    def __init__(self, path: Path, manifest: dict, models: dict[str, ModelSpec]):
        self.path = path
        self.manifest = manifest
        self.models = models

    # ---- loading
    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        try:
            return cls._load(Path(path), verify)
        except BundleError as e:
            raise BundleError(_one_line(str(e))) from None

    @classmethod
    def _load(cls, path: Path, verify: bool) -> "Bundle":
        if not path.exists():
            raise BundleError(f"bundle not found: {path} (export one with `mousai export CHECKPOINT -o {path}`)")
        if not path.is_dir():
            raise BundleError(f"not a bundle folder: {path}")
        mf = path / "manifest.json"
        if not mf.is_file():
            raise BundleError(f"not a bundle (no manifest.json): {path}")
        try:
            raw = mf.read_bytes()
        except OSError as e:
            raise BundleError(f"unreadable manifest {mf}: {e}") from None
        check_manifest_seal(path, raw)
        try:
            m = parse_manifest_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"unreadable manifest {mf}: {e}")
        except BundleError as e:
            raise BundleError(f"unreadable manifest {mf}: {e}")
        if not isinstance(m, dict):
            raise BundleError(f"{mf}: the manifest must be a JSON object")
        if m.get("format") != FORMAT:
            raise BundleError(f"{mf}: not a mousai bundle manifest (format {m.get('format')!r}, expected {FORMAT!r})")
        if m.get("version") != VERSION or isinstance(m.get("version"), bool):
            raise BundleError(f"{path}: bundle format version {m.get('version')!r} is not supported "
                              f"(this runtime reads version {VERSION}); re-export it or upgrade mousai")
        unknown = sorted(set(m) - set(REQUIRED_TOP) - set(OPTIONAL_TOP))
        if unknown:
            raise BundleError(f"{mf}: unknown top-level field(s) {unknown} (format version {VERSION} has none)")
        kind = m.get("kind", TEXT_TO_MUSIC)
        if kind not in KINDS:
            raise BundleError(f"{mf}: unknown bundle kind {kind!r} (this runtime reads {' or '.join(KINDS)})")
        missing = [k for k in (*REQUIRED_TOP, *KIND_TOP[kind]) if k not in m]
        if missing:
            raise BundleError(f"{mf}: missing field(s) {missing}")
        extra = [k for k in KIND_ABSENT[kind] if k in m]
        if extra:
            raise BundleError(f"{mf}: an {kind} bundle has no {extra} section(s) (no text encoder / generator)")
        models = cls._check_fields(m)
        try:
            check_ranges(m)
            check_agreement(m)
        except ValueError as e:
            raise BundleError(f"{mf}: {e}") from None
        b = cls(path, m, models)
        b._check_files(verify)
        return b

    @staticmethod
    def _check_fields(m: dict) -> dict[str, ModelSpec]:
        kind = m.get("kind", TEXT_TO_MUSIC)
        _str(m, "name", "manifest")
        for sec, keys in SECTION_KEYS.items():
            if isinstance(m.get(sec), dict):
                unknown = sorted(set(m[sec]) - keys)
                if unknown:
                    raise BundleError(f"{sec}: unknown field(s) {unknown} (format version {VERSION} has none; a "
                                      "newer exporter? upgrade mousai)")
        if m["precision"] not in ("fp32", "fp16"):
            raise BundleError(f"manifest.precision must be 'fp32' or 'fp16', got {m['precision']!r}")
        a = _obj(m, "audio")
        _int(a, "sample_rate", "audio")
        if _int(a, "channels", "audio") != 2:
            raise BundleError(f"audio.channels must be 2 (stereo), got {a['channels']}")
        _num(a, "audio_scale", "audio", positive=True)
        lat = _obj(m, "latent")
        _int(lat, "channels", "latent"), _int(lat, "hop", "latent")
        s = _obj(m, "stft")
        _int(s, "n_fft", "stft", 2), _int(s, "hop", "stft")
        _bool(s, "center", "stft"), _bool(s, "normalized", "stft")
        if s.get("window") != "hann":
            raise BundleError(f"stft.window must be 'hann', got {s.get('window')!r}")
        if s["center"] and s.get("pad_mode") != "reflect":
            raise BundleError(f"stft.pad_mode must be 'reflect', got {s.get('pad_mode')!r}")
        t = _obj(m, "text") if "text" in m else None
        if t is not None:
            _int(t, "max_length", "text"), _int(t, "features", "text"), _int(t, "pad_id", "text", 0)
            check_relative_path(t.get("tokenizer"), "text.tokenizer")
        d = _obj(m, "decoder_info")
        mult = _int(d, "length_multiple", "decoder_info")
        if mult % lat["hop"]:
            raise BundleError(f"decoder_info.length_multiple {mult} is not a multiple of latent.hop {lat['hop']}")
        _int(d, "receptive_field", "decoder_info", 0)
        if "generator_info" in m:
            gi = _obj(m, "generator_info")
            gmult = _int(gi, "length_multiple", "generator_info")
            if "window_frames" in gi or "overlap_frames" in gi:  # optional: windowed generation of long latents
                from .windowed import check_window

                if "window_frames" not in gi or "overlap_frames" not in gi:
                    raise BundleError("generator_info: window_frames and overlap_frames come together (one is missing)")
                w = _int(gi, "window_frames", "generator_info")
                o = _int(gi, "overlap_frames", "generator_info")
                try:
                    check_window(w, o, gmult)
                except ValueError as e:
                    raise BundleError(f"generator_info: {e}")
        df = _obj(m, "defaults")
        from .sampling import SAMPLERS, SCHEDULES

        for key in ("sampler", "decoder_sampler"):  # missing sampler = "ddim" (older bundles); decoder_sampler = it
            if key in df and df[key] not in SAMPLERS:
                raise BundleError(f"defaults.{key}: this runtime implements sampler 'ddim' or 'dpmpp-2m' "
                                  f"(schedule 'linear'), not {df[key]!r}")
        if df.get("schedule", "linear") not in SCHEDULES:
            raise BundleError(f"defaults: this runtime implements sampler 'ddim' or 'dpmpp-2m' with schedule "
                              f"'linear', not {df.get('schedule')!r}")
        _int(df, "decoder_steps", "defaults")
        # an autoencoder bundle needs only the decoder's defaults; whatever else it has must still be well-formed
        need = kind == TEXT_TO_MUSIC
        if need or "generator_steps" in df:
            _int(df, "generator_steps", "defaults")
        if need or "guidance" in df:
            _num(df, "guidance", "defaults")
        top = _num(df, "max_seconds", "defaults", positive=True) if need or "max_seconds" in df else None
        sec = _num(df, "seconds", "defaults", positive=True) if need or "seconds" in df else None
        if top is not None and sec is not None and top < sec:
            raise BundleError("defaults.max_seconds is smaller than defaults.seconds")
        for opt in OPTIONAL_TOP:
            if opt in m and opt not in ("created", "kind") and not isinstance(m[opt], dict):
                raise BundleError(f"manifest.{opt} must be an object")
        if "created" in m and not isinstance(m["created"], str):
            raise BundleError("manifest.created must be a string")

        files = _obj(m, "files")
        for name, entry in files.items():
            check_relative_path(name, "files")
            if not isinstance(entry, dict) or set(entry) - {"sha256", "bytes"}:
                raise BundleError(f"files[{name!r}] must be {{'sha256': ..., 'bytes': ...}}")
            if not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
                raise BundleError(f"files[{name!r}].sha256 must be 64 lowercase hex digits")
            if "bytes" in entry:
                _int(entry, "bytes", f"files[{name!r}]", 0)
        if "postfilter" in m:
            pf = _obj(m, "postfilter")
            if pf.get("kind") != "envelope" or pf.get("features") != "latent+square":
                raise BundleError(f"postfilter: this runtime implements kind 'envelope' with features "
                                  f"'latent+square', not {pf.get('kind')!r} / {pf.get('features')!r}")
            for key in ("n_fft", "hop", "bands"):
                _int(pf, key, "postfilter")
            _int(pf, "context", "postfilter", 0)
            g = pf.get("gain_range")
            if not (isinstance(g, list) and len(g) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and math.isfinite(v) for v in g) and g[0] <= g[1]):
                raise BundleError(f"postfilter.gain_range must be [low, high] (finite numbers), got {g!r}")
            if pf["n_fft"] % pf["hop"] or lat["hop"] % pf["hop"]:
                raise BundleError(f"postfilter.hop {pf['hop']} must divide postfilter.n_fft and latent.hop")
            if check_relative_path(pf.get("file"), "postfilter.file") not in files:
                raise BundleError(f"postfilter.file {pf['file']!r} is not listed in files (it must be hashed)")
        if t is not None and t["tokenizer"] not in files:
            raise BundleError(f"text.tokenizer {t['tokenizer']!r} is not listed in files (it must be hashed)")

        specs: dict[str, ModelSpec] = {}
        ms = _obj(m, "models")
        unknown = sorted(set(ms) - set(COMPONENT_IO))
        if unknown:
            raise BundleError(f"models: unknown component(s) {unknown}")
        foreign = sorted(set(ms) - set(ALLOWED_COMPONENTS[kind]))
        if foreign:
            raise BundleError(f"models: an {kind} bundle has no {foreign} (its kind says encoder + decoder only)")
        for comp in REQUIRED_COMPONENTS[kind]:
            if comp not in ms:
                raise BundleError(f"models.{comp} is missing" + (f" (an {kind} bundle needs "
                                                                 f"{' + '.join(REQUIRED_COMPONENTS[kind])})"
                                                                 if kind == AUTOENCODER else ""))
        for comp, spec in ms.items():
            w = f"models.{comp}"
            if not isinstance(spec, dict):
                raise BundleError(f"{w} must be an object")
            if set(spec) - MODEL_KEYS:
                raise BundleError(f"{w}: unknown field(s) {sorted(set(spec) - MODEL_KEYS)}")
            f = check_relative_path(spec.get("file"), f"{w}.file")
            if f not in files:
                raise BundleError(f"{w}.file {f!r} is not listed in files (it must be hashed)")
            f32 = None
            if "fp32_file" in spec:
                if m["precision"] != "fp16":
                    raise BundleError(f"{w}.fp32_file: only an fp16 bundle carries fp32 fallback graphs")
                f32 = check_relative_path(spec["fp32_file"], f"{w}.fp32_file")
                if f32 not in files:
                    raise BundleError(f"{w}.fp32_file {f32!r} is not listed in files (it must be hashed)")
                if f32 == f:
                    raise BundleError(f"{w}.fp32_file is the fp16 graph itself")
            ins, outs = _tensor_list(spec.get("inputs"), f"{w}.inputs"), _tensor_list(spec.get("outputs"), f"{w}.outputs")
            need_in, need_out = COMPONENT_IO[comp]
            have_in, have_out = [x.name for x in ins], [x.name for x in outs]
            if sorted(have_in) != sorted(need_in):
                raise BundleError(f"{w}.inputs are {have_in}; this runtime feeds {list(need_in)}")
            if not set(need_out) <= set(have_out):
                raise BundleError(f"{w}.outputs are {have_out}; this runtime reads {list(need_out)}")
            specs[comp] = ModelSpec(comp, f, ins, outs, f32)
        return specs

    def _inside(self, name: str) -> Path:
        p = self.path / name
        root = self.path.resolve()
        real = p.resolve()
        if root != real and root not in real.parents:
            raise BundleError(f"{self.path}: {name!r} resolves outside the bundle folder ({real})")
        return p

    def _check_files(self, verify: bool) -> None:
        for name, entry in self.manifest["files"].items():
            p = self._inside(name)
            if not p.is_file():
                raise BundleError(f"{self.path}: missing file {name} (listed in manifest.json); the bundle is "
                                  "incomplete: re-export it")
            if "bytes" in entry and p.stat().st_size != entry["bytes"]:
                raise BundleError(f"{self.path}: {name} has {p.stat().st_size} bytes, the manifest says "
                                  f"{entry['bytes']}: the file is corrupt or was replaced")
            if verify:
                digest = sha256_file(p)
                if digest != entry["sha256"]:
                    raise BundleError(f"{self.path}: sha256 mismatch for {name} (got {digest[:12]}..., manifest "
                                      f"{entry['sha256'][:12]}...): the file is corrupt or was replaced")

    # ---- verified access
    def file_path(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name!r} is not listed in manifest.json files")
        return self._inside(name)

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes, hashed now: the exact bytes returned are the verified ones."""
        data = self.file_path(name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest["files"][name]["sha256"]:
            raise BundleError(f"{self.path}: sha256 mismatch for {name} (changed after loading?): refusing to use it")
        return data

    def verify_file(self, name: str) -> Path:
        """Hash a listed file again (streaming, for files too large to hand out as bytes)."""
        p = self.file_path(name)
        digest = sha256_file(p)
        if digest != self.manifest["files"][name]["sha256"]:
            raise BundleError(f"{self.path}: sha256 mismatch for {name} (changed after loading?): refusing to use it")
        return p

    def model_bytes(self, component: str) -> bytes:
        return self.read_bytes(self.model(component).file)

    def model(self, component: str) -> ModelSpec:
        if component not in self.models:
            raise BundleError(f"{self.path}: the bundle has no {component} model")
        return self.models[component]

    def has(self, component: str) -> bool:
        return component in self.models

    # ---- convenience
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        """'text-to-music' (also when the manifest has no kind) or 'autoencoder' (encoder + decoder only)."""
        return self.manifest.get("kind", TEXT_TO_MUSIC)

    @property
    def precision(self) -> str:
        """'fp32' or 'fp16' (fp16 graphs with fp32 islands; float32 inputs and outputs either way)."""
        return self.manifest["precision"]

    def has_fp32_fallback(self, component: str) -> bool:
        return self.model(component).fp32_file is not None

    @property
    def is_autoencoder(self) -> bool:
        return self.kind == AUTOENCODER

    @property
    def sample_rate(self) -> int:
        return self.manifest["audio"]["sample_rate"]

    @property
    def channels(self) -> int:
        return self.manifest["audio"]["channels"]

    @property
    def audio_scale(self) -> float:
        return float(self.manifest["audio"]["audio_scale"])

    @property
    def latent_channels(self) -> int:
        return self.manifest["latent"]["channels"]

    @property
    def hop(self) -> int:
        return self.manifest["latent"]["hop"]

    @property
    def stft(self) -> dict:
        return self.manifest["stft"]

    def _section(self, key: str) -> dict:
        if key not in self.manifest:
            raise BundleError(f"{self.path}: this {self.kind} bundle has no {key} section")
        return self.manifest[key]

    @property
    def text(self) -> dict:
        return self._section("text")

    @property
    def decoder_multiple(self) -> int:
        """Audio samples: decoder inputs are padded to a multiple of this."""
        return self.manifest["decoder_info"]["length_multiple"]

    @property
    def decoder_multiple_frames(self) -> int:
        return self.decoder_multiple // self.hop

    @property
    def receptive_field(self) -> int:
        return self.manifest["decoder_info"]["receptive_field"]

    @property
    def generator_multiple(self) -> int:
        return self._section("generator_info")["length_multiple"]

    @property
    def window_frames(self) -> int | None:
        """Latent frames per generator window for long clips (generator_info.window_frames), None if unset."""
        return self._section("generator_info").get("window_frames")

    @property
    def overlap_frames(self) -> int | None:
        return self._section("generator_info").get("overlap_frames")

    @property
    def postfilter(self) -> dict | None:
        """The post-filter settings (mousai_runtime/postfilter.py), or None when the bundle has none."""
        return self.manifest.get("postfilter")

    @property
    def defaults(self) -> dict:
        return self.manifest["defaults"]

    @property
    def sampler(self) -> str:
        """The generator's default sampler (defaults.sampler; missing = "ddim", as every bundle before it existed)."""
        return self.defaults.get("sampler", "ddim")

    @property
    def decoder_sampler(self) -> str:
        """The decoder's default sampler (defaults.decoder_sampler; missing = defaults.sampler)."""
        return self.defaults.get("decoder_sampler", self.sampler)

    def summary_rows(self) -> list[tuple[str, str]]:
        """(key, value) rows for a readable table (`mousai info`)."""
        m = self.manifest
        rows: list[tuple[str, str]] = [("path", str(self.path))]
        rows.append(("kind", self.kind + ("  (encoder + decoder only: encode/decode, no text-to-music)"
                                          if self.is_autoencoder else "")))
        for k in ("name", "created", "precision"):
            if k in m:
                rows.append((k, str(m[k])))
        for k in ("versions", "source", "audio", "latent", "stft", "text", "decoder_info", "generator_info",
                  "postfilter", "defaults"):
            for kk, vv in (m.get(k) or {}).items():
                rows.append((f"{k}.{kk}", json.dumps(vv) if not isinstance(vv, str) else vv))
        for comp, spec in self.models.items():
            ins = ", ".join(f"{t.name}{list(t.shape)}" for t in spec.inputs)
            outs = ", ".join(f"{t.name}{list(t.shape)}" for t in spec.outputs)
            rows.append((f"models.{comp}", f"{spec.file}: {ins} -> {outs}"))
        for name, e in m["files"].items():
            size = e.get("bytes")
            rows.append((f"files.{name}", f"{e['sha256'][:16]}...  " + (f"{size / 1e6:.2f} MB" if size is not None else "")))
        for comp, figs in (m.get("parity") or {}).items():
            if figs:
                rows.append((f"parity.{comp}", json.dumps(figs)))
        return rows
