"""Real recordings from Debian packages (fetched with ``apt-get download``, unpacked with ``dpkg-deb -x``).

Nothing is installed: ``.deb`` files are cached in ``debs_dir`` and unpacked under
``debs_dir/extracted/<deb file name>/``. Each source below lists its package (with fallbacks for other
Debian releases, chosen with ``apt-cache policy``), finds the music files inside, reads the tags
(libsndfile reads Vorbis comments; Warzone's Opus files have ``album.json``; Frets on Fire has
``song.ini``) and attaches to every track a ``genre`` label, the licence that applies to that file
(from the package's ``usr/share/doc/<pkg>/copyright``: per-file DEP-5 stanzas where the file is
machine-readable, else the statement in it; a track's own licence tag or the album's ``license.txt``
where more specific) and the copyright holder.

Public API::

    DEBIAN_SOURCES                     # name -> DebianSource
    fetch_deb(package, debs_dir) -> Path
    extract_deb(deb, debs_dir) -> Path
    resolve_package(candidates) -> str
    dep5_licence(copyright_text, relpath) -> (licence, copyright) | None
    DebianSource.prepare(debs_dir, log) -> list[Path]    # download + unpack, returns package roots
    DebianSource.tracks(roots) -> list[RecordingJob]      # what to convert; job.load(sr) -> [2, N]
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import json
import os
import re
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..audio import AudioError, info, load_audio, load_audio_bytes

MIN_SECONDS = 20.0  # shorter files are jingles / stingers (victory fanfares, 5 s loops): not kept


# --------------------------------------------------------------------------------------------------
# apt / dpkg
# --------------------------------------------------------------------------------------------------
def _run(cmd: Sequence[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


_apt_updated = False


def _apt_update(log: Callable[[str], None] = print) -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update ...")
        r = _run(["apt-get", "update", "-qq"])
        if r.returncode != 0:
            log(f"apt-get update failed: {r.stderr.strip()[-300:]}")
        _apt_updated = True


def _candidate_version(pkg: str) -> Optional[str]:
    r = _run(["apt-cache", "policy", pkg])
    m = re.search(r"Candidate:\s*(\S+)", r.stdout or "")
    return m.group(1) if m and m.group(1) != "(none)" else None


def resolve_package(candidates: Sequence[str], debs_dir: Optional[Path] = None,
                    log: Callable[[str], None] = print) -> str:
    """First of ``candidates`` that is cached in ``debs_dir`` or has an apt candidate version."""
    if debs_dir is not None:
        for c in candidates:
            if sorted(Path(debs_dir).glob(f"{c}_*.deb")):
                return c
    for attempt in range(2):
        for c in candidates:
            if _candidate_version(c):
                if c != candidates[0]:
                    log(f"note: package {candidates[0]} not in this release; using {c}")
                return c
        if attempt == 0:
            _apt_update(log)
    raise RuntimeError(f"none of the packages {', '.join(candidates)} is available from apt "
                       f"(try: apt-cache search {candidates[0].split('-')[0]})")


def fetch_deb(package: str, debs_dir: Path, log: Callable[[str], None] = print) -> Path:
    """``apt-get download package`` into ``debs_dir`` (reused if already there). Runs ``apt-get update``
    once if apt cannot find the package."""
    debs_dir = Path(debs_dir)
    debs_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(debs_dir.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    for attempt in range(2):
        log(f"apt-get download {package} ...")
        r = _run(["apt-get", "download", package], cwd=debs_dir)
        have = sorted(debs_dir.glob(f"{package}_*.deb"))
        if r.returncode == 0 and have:
            return have[-1]
        if attempt == 0:
            _apt_update(log)
    raise RuntimeError(f"apt-get download {package} failed: {(r.stderr or r.stdout).strip()[-400:]}")


def deb_version(deb: Path) -> str:
    r = _run(["dpkg-deb", "-f", str(deb), "Version"])
    return r.stdout.strip()


def extract_deb(deb: Path, debs_dir: Path) -> Path:
    """``dpkg-deb -x`` into ``debs_dir/extracted/<deb name>/`` once (a ``.done`` marker records success)."""
    dest = Path(debs_dir) / "extracted" / Path(deb).name[: -len(".deb")]
    marker = dest / ".done"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    r = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if r.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed: {r.stderr.strip()[-400:]}")
    marker.write_text(deb_version(Path(deb)) + "\n")
    return dest


# --------------------------------------------------------------------------------------------------
# Licences
# --------------------------------------------------------------------------------------------------
def parse_dep5(text: str) -> list[tuple[list[str], str, str]]:
    """Machine-readable copyright file -> ``[(patterns, copyright, licence)]`` in file order."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        cur = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and cur:
                fields[cur] += "\n" + line.strip()
            elif ":" in line:
                cur, _, v = line.partition(":")
                cur = cur.strip().lower()
                fields[cur] = v.strip()
        if "files" in fields and "license" in fields:
            lic = fields["license"].split("\n", 1)[0].strip()
            cop = " ".join(fields.get("copyright", "").split())
            out.append((fields["files"].split(), cop, lic))
    return out


def _dep5_match(pattern: str, relpath: str) -> bool:
    p = pattern[2:] if pattern.startswith("./") else pattern
    parts = relpath.split("/")
    pats = [p]
    rest = p.split("/", 1)[1] if "/" in p else ""
    # The upstream root folder (e.g. "data/") is often installed under another name: also try the pattern
    # without its first folder, unless that leaves only wildcards or it is the packaging ("debian/*").
    if rest and not p.startswith("debian/") and re.search(r"[A-Za-z0-9]", rest):
        pats.append(rest)
    for i in range(len(parts)):
        suffix = "/".join(parts[i:])
        if any(fnmatch.fnmatchcase(suffix, q) for q in pats):
            return True
    return False


def dep5_licence(copyright_text: str, relpath: str) -> Optional[tuple[str, str]]:
    """Licence and copyright of ``relpath`` (path inside the package) from a DEP-5 file: the last
    matching ``Files:`` stanza wins, as the format specifies. ``None`` if the file is not DEP-5."""
    if not copyright_text.startswith("Format:"):
        return None
    found = None
    for pats, cop, lic in parse_dep5(copyright_text):
        if any(_dep5_match(p, relpath) for p in pats):
            found = (lic, cop)
    return found


_CC_URL = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/(\d\.\d)", re.I)


def licence_from_tag(tag: str) -> Optional[str]:
    m = _CC_URL.search(tag or "")
    if m:
        return f"CC-{m.group(1).upper()}-{m.group(2)}"
    return None


# --------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------
_JUNK = re.compile(r"https?://|www\.|bonkenc|downloaded|jamendo|\(c\)|©|made with", re.I)


def clean_tag(v: Optional[str]) -> Optional[str]:
    if v is None:
        return None
    v = " ".join(str(v).split())
    v = re.sub(r"\.(mp3|ogg|wav|flac)$", "", v, flags=re.I)
    if not v or _JUNK.search(v) or v.lower() in ("non", "none", "unknown", "untitled", "-"):
        return None
    return v


def year_of(v: Optional[str]) -> Optional[int]:
    m = re.search(r"(19|20)\d\d", v or "")
    return int(m.group(0)) if m else None


def title_from_name(name: str) -> str:
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", name).lstrip("@")
    stem = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem)  # CamelCase -> words
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------
@dataclass
class RecordingJob:
    """One output track: ``load(sr)`` decodes (and mixes stems) to float32 stereo ``[2, N]``."""

    source: str
    name: str  # output path relative to audio/<source>/ (without extension)
    inputs: list[str]  # files, or "archive.pk3::member"
    meta: dict
    spec: dict = field(default_factory=dict)  # what makes the output (for idempotence checks)

    def load(self, sr: int = 48000) -> np.ndarray:
        parts = []
        for inp in self.inputs:
            if "::" in inp:
                arch, member = inp.split("::", 1)
                with zipfile.ZipFile(arch) as z:
                    parts.append(load_audio_bytes(z.read(member), sr))
            else:
                parts.append(load_audio(inp, sr))
        if len(parts) == 1:
            return parts[0]
        n = max(p.shape[1] for p in parts)
        mix = np.zeros((2, n), dtype=np.float32)
        for p in parts:
            mix[:, : p.shape[1]] += p
        peak = float(np.max(np.abs(mix)))
        if peak > 0.98:  # stems summed: scale down only if they would clip
            mix *= np.float32(0.98 / peak)
        return mix


def _duration(inp: str) -> float:
    if "::" in inp:
        arch, member = inp.split("::", 1)
        import io

        import soundfile as sf

        with zipfile.ZipFile(arch) as z, sf.SoundFile(io.BytesIO(z.read(member))) as f:
            return f.frames / f.samplerate
    return info(inp).duration


def _tags(inp: str) -> dict:
    if "::" in inp:
        arch, member = inp.split("::", 1)
        import io

        import soundfile as sf

        with zipfile.ZipFile(arch) as z, sf.SoundFile(io.BytesIO(z.read(member))) as f:
            return {k: getattr(f, k) for k in ("title", "artist", "album", "genre", "date", "license",
                                               "copyright") if getattr(f, k, None)}
    return info(inp).tags


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------
@dataclass
class DebianSource:
    name: str
    packages: tuple[tuple[str, ...], ...]  # per needed package: candidate names
    genre: str  # genre implied by the package
    style: Optional[str]  # default finer description
    description: str
    collect: Callable[["DebianSource", list[Path], list[str]], list[RecordingJob]]
    kind: str = "debian"
    resolved: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    def prepare(self, debs_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
        roots = []
        self.resolved = []
        for cands in self.packages:
            pkg = resolve_package(cands, debs_dir, log)
            deb = fetch_deb(pkg, debs_dir, log)
            roots.append(extract_deb(deb, debs_dir))
            self.resolved.append(pkg)
            self.versions[pkg] = deb_version(deb)
        return roots

    def tracks(self, roots: list[Path]) -> list[RecordingJob]:
        return self.collect(self, roots, self.resolved)

    def copyright_files(self, roots: list[Path]) -> dict[str, Path]:
        out = {}
        for root, pkg in zip(roots, self.resolved):
            p = root / "usr/share/doc" / pkg / "copyright"
            if p.is_file():
                out[pkg] = p
        return out


def _copyright_text(root: Path, pkg: str) -> str:
    p = root / "usr/share/doc" / pkg / "copyright"
    return p.read_text(errors="replace") if p.is_file() else ""


def _licence(root: Path, pkg: str, rel: str, fallback: str, need: Optional[str] = None) -> tuple[str, str]:
    """(licence, copyright) for file ``rel`` of package ``pkg``: DEP-5 stanza, else ``fallback`` (the
    statement read from the non-machine-readable copyright file; ``need`` is a phrase that must be in it)."""
    text = _copyright_text(root, pkg)
    d = dep5_licence(text, rel)
    if d:
        return d
    if need and need.lower() not in " ".join(text.split()).lower():
        return f"unverified: {fallback} (see /usr/share/doc/{pkg}/copyright)", ""
    return fallback, ""


def _base_meta(src: DebianSource, pkg: str, rel: str, lic: tuple[str, str]) -> dict:
    m = {"genre": src.genre, "source": src.name, "package": f"{pkg} {src.versions.get(pkg, '')}".strip(),
         "licence": lic[0], "licence_file": f"/usr/share/doc/{pkg}/copyright", "original_path": "/" + rel}
    if lic[1]:
        m["copyright"] = lic[1]
    if src.style:
        m["style"] = src.style
    return m


def _apply_tags(m: dict, tags: dict, genre_as_style: bool = True) -> dict:
    for k in ("title", "artist", "album"):
        v = clean_tag(tags.get(k))
        if v:
            m[k] = v
    y = year_of(tags.get("date"))
    if y:
        m["year"] = y
    g = clean_tag(tags.get("genre"))
    if g and genre_as_style and g.lower() not in ("soundtrack", "game", "game soundtrack", "game music", "vgm") \
            and g.lower() != m.get("genre", "").lower():
        m["style"] = g.lower()
    if tags.get("license"):
        lt = licence_from_tag(tags["license"])
        if lt:
            m["licence"] = lt
    if tags.get("copyright") and not m.get("copyright"):
        m["copyright"] = " ".join(str(tags["copyright"]).split())
    return m


def _keep(inp: str, min_seconds: float = MIN_SECONDS) -> bool:
    try:
        return _duration(inp) >= min_seconds
    except (AudioError, Exception):
        return True  # let the build report it as unreadable


def _rel(root: Path, path: str) -> str:
    return os.path.relpath(path, root)


def _slug(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")
    return s or "track"


# ---- per source ----------------------------------------------------------------------------------
def _simple_oggs(src: DebianSource, root: Path, pkg: str, pattern: str, fallback_lic: str,
                 need: Optional[str], exclude: Sequence[str] = (), genre_from_tag: bool = False,
                 defaults: Optional[dict] = None) -> list[RecordingJob]:
    jobs = []
    for f in sorted(glob.glob(str(root / pattern), recursive=True)):
        base = os.path.basename(f)
        if base in exclude or not _keep(f):
            continue
        rel = _rel(root, f)
        m = _base_meta(src, pkg, rel, _licence(root, pkg, rel, fallback_lic, need))
        m.update(defaults or {})
        tags = _tags(f)
        _apply_tags(m, tags, genre_as_style=not genre_from_tag)
        if genre_from_tag and clean_tag(tags.get("genre")):
            m["genre"] = clean_tag(tags["genre"]).lower()
        m.setdefault("title", title_from_name(base))
        sub = os.path.relpath(f, root / pattern.split("/**/")[0]) if "/**/" in pattern else base
        jobs.append(RecordingJob(src.name, _slug(os.path.splitext(sub)[0].replace("/", "__")), [f], m,
                                 {"inputs": [rel], "package": src.versions.get(pkg)}))
    return jobs


def _wesnoth(src, roots, pkgs):
    # Every track is tagged (title, composer as artist, album, "Romantic Classical", year, "Name (C)year").
    return _simple_oggs(src, roots[0], pkgs[0], "usr/share/games/wesnoth/*/data/core/music/*.ogg",
                        "GPL-2+", "GNU General Public License", exclude=("silence.ogg",))


def _warzone(src, roots, pkgs):
    root, pkg = roots[0], pkgs[0]
    music = glob.glob(str(root / "usr/share/games/warzone2100/music"))
    if not music:
        return []
    music = Path(music[0])
    pkg_lic = _licence(root, pkg, _rel(root, str(music / "menu.opus")), "GPL-2+")
    jobs = []
    seen = set()
    for aj in sorted(music.glob("albums/*/album.json")):
        album = json.loads(aj.read_text())
        lic_txt = (aj.parent / "license.txt").read_text(errors="replace") if (aj.parent / "license.txt").is_file() else ""
        for t in album.get("tracks", []):
            f = aj.parent / t["filename"]
            if not f.is_file() or not _keep(str(f)):
                continue
            seen.add(f.resolve())
            rel = _rel(root, str(f))
            lic = pkg_lic
            if "CC-BY-SA-3.0" in lic_txt and not (t["filename"].startswith("track3_enhanced")):
                lic = ("CC-BY-SA-3.0+ OR GPL-2+", f"{album.get('author', '')}")
            elif "track3_enhanced" in t["filename"]:
                lic = ("GPL-2+", "LupusMechanicus; derived from Martin Severn's Track 3")
            m = _base_meta(src, pkg, rel, lic)
            m.update({"title": t.get("title"), "artist": t.get("author") or album.get("author"),
                      "album": album.get("title")})
            if t.get("bpm"):
                m["bpm"] = t["bpm"]
            y = year_of(str(album.get("date", "")))
            if y:
                m["year"] = y
            if lic is pkg_lic:
                m["copyright"] = "1999-2004 Eidos Interactive, 2005-2013 Warzone 2100 Project"
            jobs.append(RecordingJob(src.name, _slug(f"{aj.parent.name}__{f.stem}"), [str(f)], m,
                                     {"inputs": [rel], "package": src.versions.get(pkg)}))
    for f in sorted(music.glob("*.opus")):
        if f.resolve() in seen or not _keep(str(f)):
            continue
        rel = _rel(root, str(f))
        m = _base_meta(src, pkg, rel, pkg_lic)
        m["title"] = "Warzone 2100 " + title_from_name(f.name) + " theme"
        m["copyright"] = "1999-2004 Eidos Interactive, 2005-2013 Warzone 2100 Project"
        jobs.append(RecordingJob(src.name, _slug(f.stem), [str(f)], m,
                                 {"inputs": [rel], "package": src.versions.get(pkg)}))
    return jobs


def _nexuiz(src, roots, pkgs):
    root, pkg = roots[0], pkgs[0]
    jobs = []
    for pk3 in sorted(glob.glob(str(root / "usr/share/games/nexuiz/data/*.pk3"))):
        with zipfile.ZipFile(pk3) as z:
            members = sorted(n for n in z.namelist() if n.lower().endswith(".ogg") and "cdtracks/" in n)
        for mem in members:
            inp = f"{pk3}::{mem}"
            if os.path.basename(mem) == "thunder.ogg" or not _keep(inp, 60.0):  # thunder.ogg: an effect
                continue
            rel = _rel(root, pk3) + "/" + mem
            m = _base_meta(src, pkg, rel, _licence(root, pkg, rel, "GPL-2+", "GNU General Public License"))
            m["copyright"] = "2002-2009 Alientrap and the Nexuiz contributors"
            _apply_tags(m, _tags(inp))
            t = m.get("title") or ""
            if not t or re.match(r"^[a-z]+-[a-z_]+$", t):  # "elysis-calling_bogus" -> file name
                m["title"] = title_from_name(os.path.basename(mem))
            jobs.append(RecordingJob(src.name, _slug(Path(mem).stem), [inp], m,
                                     {"inputs": [rel], "package": src.versions.get(pkg)}))
    return jobs


def _singularity(src, roots, pkgs):
    return _simple_oggs(src, roots[0], pkgs[0], "usr/share/games/singularity/music/**/*.ogg",
                        "CC-BY-SA-3.0", "Attribution, ShareAlike")


def _naev(src, roots, pkgs):
    # Only dat/snd/music (dat/snd/sounds are effects). DEP-5 file with per-track stanzas.
    return _simple_oggs(src, roots[0], pkgs[0], "usr/share/naev/dat/snd/music/*.ogg", "GPL-3+", None)


def _supertux(src, roots, pkgs):
    # Only music/ (sounds/ and speech/ are effects and voice).
    return _simple_oggs(src, roots[0], pkgs[0], "usr/share/games/supertux2/music/**/*.ogg", "GPL-2+", None)


def _openclonk(src, roots, pkgs):
    root, pkg = roots[0], pkgs[0]
    authors = root / "usr/share/games/openclonk/Music.ocg/authors.txt"
    lic = "CC-BY-3.0" if authors.is_file() and "Attribution 3.0" in authors.read_text(errors="replace") else \
        "CC-BY-3.0 or CC0-1.0 (see copyright)"
    jobs = _simple_oggs(src, root, pkg, "usr/share/games/openclonk/Music.ocg/*.ogg", lic,
                        "Creative Commons Attribution 3.0", genre_from_tag=True)
    for j in jobs:  # tracks without a genre tag (Cavern, Offshore) are ambient pieces: keep the default
        j.meta.setdefault("copyright", "Martin Strohmeier (K-Pone)")
    return jobs


def _fretsonfire(src, roots, pkgs):
    jobs = []
    fallbacks = {"fretsonfire-songs-muldjord": ("CC-BY-SA-3.0", "Creative Commons Attribution ShareAlike",
                                                "2009 El Senator (Muldjord)"),
                 "fretsonfire-songs-sectoid": ("MIT", "Permission is hereby granted, free of charge",
                                               "2006-2007 Carlos Viola Iborra (Sectoid)")}
    for root, pkg in zip(roots, pkgs):
        lic_fb, need, cop = fallbacks.get(pkg, ("see copyright", None, ""))
        for ini in sorted(glob.glob(str(root / "usr/share/games/fretsonfire/data/songs/*/*/song.ini"))):
            d = Path(ini).parent
            # Stems: song.ogg (backing) + guitar.ogg, rhythm.ogg, drums.ogg ... mixed into one track.
            stems = sorted(str(p) for p in d.glob("*.ogg"))
            if not stems or not _keep(stems[0]):
                continue
            cp = configparser.RawConfigParser(strict=False)
            try:
                cp.read(ini, encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError):
                pass
            sec = cp["song"] if cp.has_section("song") else {}
            rel = _rel(root, str(d))
            m = _base_meta(src, pkg, rel, _licence(root, pkg, rel + "/song.ogg", lic_fb, need))
            m["copyright"] = cop
            song = d / "song.ogg"
            _apply_tags(m, _tags(str(song)) if song.is_file() else {})
            name = sec.get("name") if sec else None
            artist = sec.get("artist") if sec else None
            if name:
                m["title"] = name.strip()
            if artist:
                a = re.sub(r"^(composed and performed by|by)\s+", "", artist.strip(), flags=re.I)
                a = re.sub(r"\s*-\s*www\..*$", "", a).strip()
                if a:
                    m["artist"] = a
            if sec and sec.get("genre"):
                m["style"] = sec.get("genre").strip().lower()
            if sec and year_of(sec.get("year")):
                m["year"] = year_of(sec.get("year"))
            m["title"] = re.sub(r"\s*\(fof [a-z]+\)$", "", m.get("title", d.name))
            m["stems"] = [os.path.basename(s) for s in stems]
            jobs.append(RecordingJob(src.name, _slug(f"{d.parent.name}__{d.name}"), stems, m,
                                     {"inputs": [_rel(root, s) for s in stems], "package": src.versions.get(pkg)}))
    return jobs


DEBIAN_SOURCES: dict[str, DebianSource] = {s.name: s for s in [
    DebianSource("wesnoth", (("wesnoth-1.16-music", "wesnoth-1.18-music", "wesnoth-1.14-music", "wesnoth-music"),),
                 "orchestral", None, "Battle for Wesnoth soundtrack (orchestral)", _wesnoth),
    DebianSource("warzone2100", (("warzone2100-music",),), "electronic", "ambient industrial",
                 "Warzone 2100 soundtracks (electronic / ambient / industrial)", _warzone),
    DebianSource("nexuiz", (("nexuiz-music",),), "techno", "electronic", "Nexuiz soundtrack (techno)", _nexuiz),
    DebianSource("singularity", (("singularity-music",),), "ambient", "ambient electronic",
                 "Endgame: Singularity soundtrack by Maxstack (ambient electronic)", _singularity),
    DebianSource("naev", (("naev-data",),), "electronic", "space synth", "Naev music (synth / space)", _naev),
    DebianSource("supertux", (("supertux-data",),), "game music", None, "SuperTux music (game / pop)", _supertux),
    DebianSource("fretsonfire", (("fretsonfire-songs-muldjord",), ("fretsonfire-songs-sectoid",)), "metal", None,
                 "Frets on Fire song packs by Muldjord and Sectoid (metal; stems mixed)", _fretsonfire),
    DebianSource("openclonk", (("openclonk-data",),), "ambient", None,
                 "OpenClonk music by K-Pone (rock, house, reggae, orchestral, ambient)", _openclonk),
]}
