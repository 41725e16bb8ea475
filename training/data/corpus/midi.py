"""Procedurally generated arrangements rendered to 48 kHz stereo with FluidSynth.

Each track is a pure function of ``(style, seed)``: tempo, key/mode, instruments, chord progressions,
song form, drum/bass/comping patterns and a motif-based lead melody are drawn from
``np.random.default_rng([style_index, seed])``. The arrangement is written as a Standard MIDI File (a
~60-line writer below: no dependency needed for something this small) and rendered by driving
``fluidsynth.Synth`` (pyfluidsynth) directly: every part sits on its own MIDI channel with its own pan,
and the output is read with ``fluid_synth_write_float`` as two separate float buffers, so the result is
real stereo (``pretty_midi.fluidsynth`` would give mono) and bit-for-bit deterministic (the s16 path
dithers with a random table).

Needs the FluidSynth library (Debian ``libfluidsynth3``) and a GM soundfont (Debian
``fluid-soundfont-gm``: ``/usr/share/sounds/sf2/FluidR3_GM.sf2``, MIT licence).

Public API::

    STYLES                                   # name -> Style
    generate(style, seed, seconds=120.0) -> Arrangement
    write_midi(arr, path) -> Path
    render(arr, sr=48000, soundfont=None) -> np.ndarray float32 [2, N]
    fluidsynth_status() -> (ok: bool, reason: str)
    find_soundfont() -> str | None
    soundfont_licence(path) -> str
    track_plan(minutes, seed=0) -> list[(style, seed, seconds)]
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

PPQ = 480
STEP = PPQ // 4  # a 16th note
DRUM_CH = 9

# --------------------------------------------------------------------------------------------------
# General MIDI names (the ones used here)
# --------------------------------------------------------------------------------------------------
GM_NAMES = {
    0: "acoustic piano", 1: "bright piano", 4: "electric piano", 5: "electric piano", 6: "harpsichord",
    7: "clavinet", 8: "celesta", 9: "glockenspiel", 11: "vibraphone", 12: "marimba", 16: "organ",
    17: "percussive organ", 18: "rock organ", 19: "church organ", 21: "accordion", 22: "harmonica",
    24: "nylon guitar", 25: "steel guitar", 26: "jazz guitar", 27: "clean electric guitar",
    28: "muted guitar", 29: "overdriven guitar", 30: "distortion guitar", 32: "acoustic bass",
    33: "electric bass", 34: "picked bass", 35: "fretless bass", 36: "slap bass", 38: "synth bass",
    39: "synth bass", 40: "violin", 41: "viola", 42: "cello", 43: "contrabass", 45: "pizzicato strings",
    46: "harp", 47: "timpani", 48: "strings", 49: "slow strings", 50: "synth strings", 52: "choir",
    53: "voice oohs", 56: "trumpet", 57: "trombone", 58: "tuba", 60: "french horn", 61: "brass section",
    62: "synth brass", 64: "soprano sax", 65: "alto sax", 66: "tenor sax", 68: "oboe", 70: "bassoon",
    71: "clarinet", 72: "piccolo", 73: "flute", 75: "pan flute", 79: "ocarina", 80: "square lead",
    81: "sawtooth lead", 82: "calliope lead", 84: "charang lead", 85: "voice lead", 87: "bass and lead",
    88: "new age pad", 89: "warm pad", 90: "polysynth pad", 91: "choir pad", 92: "bowed pad",
    93: "metallic pad", 94: "halo pad", 95: "sweep pad", 98: "crystal", 99: "atmosphere", 100: "brightness",
    101: "goblins", 102: "echoes", 104: "sitar", 105: "banjo", 108: "kalimba", 110: "fiddle",
    114: "steel drums",
}

# GM percussion keys
KICK, RIM, SNARE, CLAP, CHH, PHH, OHH, LTOM, MTOM, HTOM, CRASH, RIDE, RBELL, TAMB, COWBELL = (
    36, 37, 38, 39, 42, 44, 46, 45, 47, 50, 49, 51, 53, 54, 56)
SHAKER, CLAVES, CONGA_HI, CONGA_LO, TRIANGLE = 70, 75, 63, 64, 81

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}

# --------------------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------------------
# Drum patterns: per GM key a string of steps (16ths; 12 per bar in 3/4). x accent, o normal, g ghost.
DRUMS = {
    "rock": {KICK: "x.....x.x.......", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o."},
    "rock2": {KICK: "x.......x.x.....", SNARE: "....x.......x..g", CHH: "x.o.x.o.x.o.x.o."},
    "metal": {KICK: "x.x.x.x.x.x.x.x.", SNARE: "....x.......x...", RIDE: "o.o.o.o.o.o.o.o."},
    "metal16": {KICK: "xoxoxoxoxoxoxoxo", SNARE: "....x.......x...", CHH: "x...x...x...x..."},
    "pop": {KICK: "x.......x.x.....", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o.",
            TAMB: "....o.......o..."},
    "jazz": {RIDE: "o...o.o.o...o.o.", PHH: "....o.......o...", KICK: "g.......g.......",
             SNARE: "......g.......g."},
    "blues": {KICK: "x.......x.......", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o."},
    "funk": {KICK: "x..x..x...x..x..", SNARE: "....x..g.g..x..g", CHH: "xoooxoooxoooxooo"},
    "bossa": {RIM: "x..x..x...x..x..", KICK: "x..xx..xx..xx..x", CHH: "o.o.o.o.o.o.o.o.",
              SHAKER: "goggoggoggoggogg"},
    "reggae": {KICK: "........x.......", RIM: "........x.......", CHH: "o.o.o.o.o.o.o.o."},
    "country": {KICK: "x.......x.......", SNARE: "gogxgogogogxgogo"},
    "march": {KICK: "x...x...x...x...", SNARE: "x.gox.gox.gox.go", CRASH: "x.......x......."},
    "techno": {KICK: "x...x...x...x...", CLAP: "....x.......x...", OHH: "..o...o...o...o.",
               CHH: "g.g.g.g.g.g.g.g."},
    "house": {KICK: "x...x...x...x...", CLAP: "....x.......x...", OHH: "..o...o...o...o.",
              SHAKER: "gogggogggogggogg"},
    "trance": {KICK: "x...x...x...x...", CLAP: "....x.......x...", OHH: "..o...o...o...o.",
               CHH: "gggggggggggggggg"},
    "dnb": {KICK: "x.........x.....", SNARE: "....x.......x...", CHH: "o.o.o.oo.oo.o.o.", RIDE: "g...g...g...g..."},
    "hiphop": {KICK: "x......x.x......", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o."},
    "synthwave": {KICK: "x...x...x...x...", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o."},
    "disco": {KICK: "x...x...x...x...", SNARE: "....x.......x...", OHH: "..o...o...o...o.",
              CHH: "o.g.o.g.o.g.o.g."},
    "chip": {KICK: "x.......x.x.....", SNARE: "....x.......x...", CHH: "o.o.o.o.o.o.o.o."},
    "waltz": {KICK: "x...........", TRIANGLE: "....g...g..."},
}


@dataclass(frozen=True)
class Style:
    name: str
    family: str  # the genre label
    tempo: tuple[int, int]
    modes: tuple[str, ...]
    progressions: tuple[tuple, ...]  # each: degrees (0-based, diatonic) or (semitones, "dom7") pairs
    bass: str
    comp: str
    lead: Optional[str]
    drums: tuple[str, ...] = ()
    meter: int = 4
    bars_per_chord: tuple[int, ...] = (1,)
    swing: float = 0.0  # delay of off-beat 8ths as a fraction of an 8th (0.33 = triplet swing)
    sevenths: bool = False
    programs: dict = field(default_factory=dict)  # role -> choices of GM programs
    reverb: int = 40  # CC91
    lead_rhythm: str = "medium"  # slow / medium / fast
    mood: tuple[str, str] = ("bright", "dark")  # (major-ish, minor-ish)


def _s(name, family, tempo, modes, progressions, bass, comp, lead, drums=(), **kw) -> Style:
    return Style(name, family, tempo, tuple(modes), tuple(tuple(p) for p in progressions), bass, comp, lead,
                 tuple(drums), **kw)


BLUES12 = tuple((s, "dom7") for s in (0, 0, 0, 0, 5, 5, 0, 0, 7, 5, 0, 7))
STYLE_LIST = [
    _s("rock", "rock", (100, 140), ("major", "mixolydian", "minor"),
       [(0, 3, 4, 0), (0, 6, 3, 0), (0, 5, 3, 4), (5, 3, 0, 4)], "root8", "power8", "melody", ("rock", "rock2"),
       programs={"comp": (29, 30, 27), "lead": (29, 18, 81), "bass": (33, 34), "pad": (18, 16)}, reverb=35,
       mood=("energetic", "gritty")),
    _s("metal", "metal", (140, 185), ("minor",), [(0, 5, 6, 0), (0, 0, 5, 6), (0, 1, 0, 6)], "root16", "power16",
       "riff", ("metal", "metal16"), programs={"comp": (30,), "lead": (30, 29), "bass": (34, 33)}, reverb=30,
       lead_rhythm="fast", mood=("aggressive", "aggressive")),
    _s("pop", "pop", (96, 126), ("major",), [(0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (3, 0, 4, 5)],
       "pop", "strum", "melody", ("pop",), programs={"comp": (0, 25, 4), "lead": (73, 85, 65, 11),
                                                     "bass": (33, 35), "pad": (48, 89)}, reverb=50,
       mood=("happy", "bittersweet")),
    _s("jazz", "jazz", (110, 190), ("major", "dorian"), [(1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4), (1, 4, 0, 5)],
       "walking", "jazz_comp", "melody", ("jazz",), swing=0.33, sevenths=True,
       programs={"comp": (0, 26, 4), "lead": (66, 65, 56, 11), "bass": (32,)}, reverb=45,
       lead_rhythm="fast", mood=("smooth", "smoky")),
    _s("blues", "blues", (70, 118), ("mixolydian",), [BLUES12], "shuffle", "shuffle_comp", "melody", ("blues",),
       swing=0.33, programs={"comp": (0, 16, 27), "lead": (27, 22, 26, 66), "bass": (33, 32)}, reverb=45,
       mood=("soulful", "soulful")),
    _s("funk", "funk", (94, 116), ("dorian", "mixolydian"), [(0, 3), (0, 0, 3, 0), (0, 6, 0, 3)], "funk",
       "stabs16", "riff", ("funk",), sevenths=True,
       programs={"comp": (7, 28, 4), "lead": (61, 62, 65), "bass": (36, 33)}, reverb=30, mood=("groovy", "groovy")),
    _s("bossa nova", "latin", (120, 146), ("major", "dorian"), [(1, 4, 0, 0), (0, 3, 1, 4), (0, 1, 4, 0)],
       "bossa", "bossa", "melody", ("bossa",), sevenths=True, bars_per_chord=(1, 2),
       programs={"comp": (24,), "lead": (73, 65, 64, 11), "bass": (32, 35), "pad": (48, 49)}, reverb=50,
       lead_rhythm="slow", mood=("relaxed", "wistful")),
    _s("reggae", "reggae", (70, 90), ("major", "minor"), [(0, 3), (0, 4, 3, 0), (0, 5, 3, 4)], "reggae",
       "skank", "melody", ("reggae",), swing=0.15,
       programs={"comp": (27, 16, 17), "lead": (16, 61, 73), "bass": (33, 38)}, reverb=40, lead_rhythm="slow",
       mood=("laid-back", "laid-back")),
    _s("country", "country", (96, 132), ("major",), [(0, 3, 0, 4), (0, 0, 3, 4), (0, 4, 3, 0)], "root_fifth",
       "strum", "melody", ("country",), programs={"comp": (25, 105), "lead": (110, 22, 25), "bass": (32, 33)},
       reverb=35, mood=("cheerful", "lonesome")),
    _s("waltz", "classical", (120, 180), ("major", "minor"), [(0, 3, 4, 0), (0, 5, 1, 4), (0, 4, 4, 0)],
       "waltz", "waltz", "melody", ("waltz", ""), meter=3, bars_per_chord=(1, 2),
       programs={"comp": (48, 45, 0), "lead": (40, 73, 71, 68), "bass": (43, 42)}, reverb=65,
       mood=("graceful", "melancholic")),
    _s("march", "classical", (104, 124), ("major",), [(0, 4, 0, 4), (0, 3, 4, 0)], "march", "march", "melody",
       ("march",), programs={"comp": (61, 60), "lead": (56, 72, 71), "bass": (58, 57)}, reverb=45,
       mood=("proud", "solemn")),
    _s("baroque", "classical", (84, 120), ("major", "minor"), [(0, 3, 4, 0), (0, 5, 1, 4), (0, 4, 5, 2)],
       "baroque", "arp16", "melody", (), programs={"comp": (6, 46, 0), "lead": (40, 68, 73), "bass": (42, 70)},
       reverb=55, mood=("elegant", "dramatic")),
    _s("ambient", "ambient", (60, 84), ("major", "minor", "dorian"), [(0, 3), (0, 5, 3, 4), (0, 2, 5, 3)],
       "drone", "pad", "sparse", (), bars_per_chord=(2, 4), sevenths=True,
       programs={"comp": (88, 89, 94, 92, 95), "lead": (98, 11, 8, 108, 75), "bass": (89, 50), "pad": (91, 99, 52)},
       reverb=100, lead_rhythm="slow", mood=("calm", "dreamy")),
    _s("techno", "electronic", (124, 138), ("minor", "dorian"), [(0,), (0, 0, 5, 6), (0, 6)], "techno",
       "stabs", "arp", ("techno",), bars_per_chord=(2, 4),
       programs={"comp": (90, 81, 50), "lead": (81, 80, 84), "bass": (38, 39), "pad": (89, 95)}, reverb=40,
       lead_rhythm="fast", mood=("hypnotic", "dark")),
    _s("house", "electronic", (118, 126), ("minor", "dorian", "major"), [(0, 5, 3, 4), (0, 3), (1, 4, 0, 0)],
       "house", "offbeat", "melody", ("house",), sevenths=True,
       programs={"comp": (0, 4, 90), "lead": (81, 85, 11), "bass": (38, 39, 33), "pad": (48, 89)}, reverb=45,
       mood=("uplifting", "deep")),
    _s("trance", "electronic", (134, 142), ("minor",), [(0, 5, 2, 6), (0, 5, 3, 4), (5, 6, 0, 0)], "offbeat8",
       "pad", "arp", ("trance",), bars_per_chord=(1, 2),
       programs={"comp": (90, 94, 50), "lead": (81, 80, 87), "bass": (38, 39), "pad": (89,)}, reverb=70,
       lead_rhythm="fast", mood=("euphoric", "euphoric")),
    _s("drum and bass", "electronic", (168, 176), ("minor", "dorian"), [(0, 5), (0, 6, 5, 6), (0, 3)], "sub",
       "pad", "sparse", ("dnb",), bars_per_chord=(2,),
       programs={"comp": (89, 94, 4), "lead": (4, 81, 11), "bass": (38, 39, 87)}, reverb=60,
       mood=("energetic", "dark")),
    _s("hip hop", "hip hop", (78, 96), ("minor", "dorian"), [(0, 3), (0, 5, 3, 4), (1, 4, 0, 0)], "hiphop",
       "jazz_comp", "sparse", ("hiphop",), swing=0.2, sevenths=True, bars_per_chord=(1, 2),
       programs={"comp": (4, 5, 0), "lead": (11, 65, 73), "bass": (33, 38, 32)}, reverb=35,
       lead_rhythm="slow", mood=("chill", "moody")),
    _s("synthwave", "electronic", (88, 118), ("minor",), [(0, 5, 2, 6), (0, 5, 3, 4), (5, 3, 0, 4)], "root8",
       "pad", "melody", ("synthwave",), bars_per_chord=(1, 2),
       programs={"comp": (90, 89, 50), "lead": (81, 80, 62), "bass": (39, 38)}, reverb=70,
       mood=("nostalgic", "nostalgic")),
    _s("disco", "disco", (112, 126), ("minor", "dorian", "major"), [(0, 3), (0, 5, 1, 4), (1, 4, 0, 5)],
       "octave8", "chicken", "melody", ("disco",), sevenths=True,
       programs={"comp": (28, 27), "lead": (48, 61, 73), "bass": (33, 36), "pad": (48, 49)}, reverb=45,
       mood=("funky", "funky")),
    _s("chiptune", "electronic", (128, 166), ("major", "minor"), [(0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4)],
       "root8", "arp16", "melody", ("chip",), programs={"comp": (80,), "lead": (80, 81), "bass": (80, 38)},
       reverb=10, lead_rhythm="fast", mood=("playful", "adventurous")),
]
STYLES: dict[str, Style] = {s.name: s for s in STYLE_LIST}


# --------------------------------------------------------------------------------------------------
# Arrangement data
# --------------------------------------------------------------------------------------------------
@dataclass
class Part:
    role: str
    channel: int
    program: int
    pan: int
    volume: int
    reverb: int
    chorus: int = 0
    notes: list = field(default_factory=list)  # (start_tick, dur_tick, pitch, velocity)

    @property
    def instrument(self) -> str:
        return "drums" if self.channel == DRUM_CH else GM_NAMES.get(self.program, f"program {self.program}")


@dataclass
class Arrangement:
    style: str
    family: str
    seed: int
    bpm: int
    key: str  # e.g. "A minor"
    meter: int
    bars: int
    parts: list[Part]
    mood: str

    @property
    def ticks(self) -> int:
        return self.bars * self.meter * PPQ

    @property
    def seconds(self) -> float:
        return self.ticks / PPQ * 60.0 / self.bpm

    @property
    def instruments(self) -> list[str]:
        out = []
        for p in self.parts:
            if p.notes and p.instrument not in out:
                out.append(p.instrument)
        return out

    def metadata(self) -> dict:
        tempo = ("slow" if self.bpm < 90 else "medium tempo" if self.bpm < 120 else "fast" if self.bpm < 150
                 else "very fast")
        return {"style": self.style, "genre": self.family, "bpm": self.bpm, "tempo": tempo, "key": self.key,
                "instruments": self.instruments, "mood": self.mood,
                "time_signature": f"{self.meter}/4", "seed": self.seed}


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def _chord(entry, scale: Sequence[int], sevenths: bool) -> tuple[int, tuple[int, ...]]:
    """(root pitch class offset from the key, intervals above the root)."""
    if isinstance(entry, tuple):  # (semitones, quality)
        semis, q = entry
        return semis % 12, {"dom7": (0, 4, 7, 10), "maj": (0, 4, 7), "min": (0, 3, 7)}[q]
    d = int(entry) % 7
    tones = [scale[(d + k) % 7] + 12 * ((d + k) // 7) for k in (0, 2, 4, 6)]
    ivs = tuple(t - tones[0] for t in tones)
    return scale[d], ivs if sevenths else ivs[:3]


def _vel(ch: str, rng) -> int:
    base = {"x": 112, "o": 88, "g": 50}[ch]
    return int(np.clip(base + rng.integers(-8, 9), 1, 127))


class _Gen:
    def __init__(self, style: Style, seed: int, seconds: float, style_index: int):
        self.s = style
        self.seed = seed
        self.rng = np.random.default_rng([style_index, seed])
        r = self.rng
        self.bpm = int(r.integers(style.tempo[0], style.tempo[1] + 1))
        self.mode = str(r.choice(style.modes))
        self.root = int(r.integers(0, 12))
        self.scale = MODES[self.mode]
        self.meter = style.meter
        self.steps = 4 * self.meter  # 16ths per bar
        self.bar_ticks = self.meter * PPQ
        self.swing = style.swing
        self.key = f"{NOTE_NAMES[self.root]} {self.mode}"
        self.mood = style.mood[0] if self.mode in ("major", "mixolydian") else style.mood[1]
        bars_target = max(8, int(round(seconds * self.bpm / 60.0 / self.meter)))
        self.bars_target = bars_target
        progs = list(style.progressions)
        r.shuffle(progs)
        self.prog_a = progs[0]
        self.prog_b = progs[1] if len(progs) > 1 else progs[0]
        self.bpc_a = int(r.choice(style.bars_per_chord))
        self.bpc_b = int(r.choice(style.bars_per_chord))
        self.drum_pats = [d for d in style.drums if d]
        self.use_drums = bool(self.drum_pats) and not (style.drums and "" in style.drums and r.random() < 0.5)
        self.drum_a = DRUMS[r.choice(self.drum_pats)] if self.use_drums else None
        self.drum_b = DRUMS[r.choice(self.drum_pats)] if self.use_drums else None
        self.lead_rhythm = style.lead_rhythm

    # --- timing helpers ---
    def t(self, bar: int, step: float) -> int:
        """Tick of 16th ``step`` in ``bar`` with swing applied to off-beat 8ths."""
        base = bar * self.bar_ticks + step * STEP
        if self.swing and float(step) % 4 == 2:
            base += self.swing * 2 * STEP
        return int(round(base))

    def human(self, tick: int, amount: int = 8) -> int:
        return max(0, tick + int(self.rng.integers(-amount, amount + 1)))

    # --- form ---
    def form(self) -> list[tuple[str, int, tuple, int]]:
        """Sections: (name, bars, progression, bars per chord)."""
        r = self.rng
        a_len = len(self.prog_a) * self.bpc_a
        b_len = len(self.prog_b) * self.bpc_b
        a_bars = a_len * max(1, int(round(8 / a_len))) if a_len < 8 else a_len
        b_bars = b_len * max(1, int(round(8 / b_len))) if b_len < 8 else b_len
        out = [("intro", max(2, min(4, a_bars)), self.prog_a, self.bpc_a)]
        total = out[0][1]
        cycle = ["verse", "chorus", "verse", "chorus", "bridge", "chorus", "chorus"]
        k = 0
        while total < self.bars_target - 2:
            name = cycle[k % len(cycle)]
            k += 1
            if name == "verse":
                out.append((name, a_bars, self.prog_a, self.bpc_a))
            elif name == "chorus":
                out.append((name, b_bars, self.prog_b, self.bpc_b))
            else:
                prog = tuple(self.prog_b[int(j)] for j in r.permutation(len(self.prog_b)))
                out.append((name, b_bars, prog, self.bpc_b))
            total += out[-1][1]
        out.append(("outro", 2, (self.prog_a[0],), 2))
        return out

    def generate(self) -> Arrangement:
        s, r = self.s, self.rng
        progs = s.programs
        pick = lambda role, default: int(r.choice(progs.get(role, (default,))))  # noqa: E731
        lp = 30 + int(r.integers(0, 20))
        parts = {
            "bass": Part("bass", 0, pick("bass", 33), 64 + int(r.integers(-6, 7)), 100, s.reverb // 2),
            "comp": Part("comp", 1, pick("comp", 0), lp, 88, s.reverb, 20),
            "lead": Part("lead", 2, pick("lead", 73), 128 - lp + int(r.integers(-8, 9)), 96, s.reverb, 10),
        }
        if "pad" in progs and r.random() < 0.7:
            parts["pad"] = Part("pad", 3, pick("pad", 89), 64 + int(r.integers(-20, 21)), 70, min(127, s.reverb + 20),
                                40)
        if self.use_drums:
            parts["drums"] = Part("drums", DRUM_CH, 0, 64, 100, s.reverb // 2)
        bar = 0
        prev_voicing = None
        self.lead_pitch = None
        sections = self.form()
        for si, (name, nbars, prog, bpc) in enumerate(sections):
            intensity = {"intro": 0, "verse": 1, "bridge": 1, "chorus": 2, "outro": 0}[name]
            motif = self.make_motif()
            for b in range(nbars):
                ci = (b // bpc) % len(prog)
                root_pc, ivs = _chord(prog[ci], self.scale, s.sevenths)
                nxt_pc, _ = _chord(prog[((b + 1) // bpc) % len(prog)], self.scale, s.sevenths)
                chord_root = self.root + root_pc
                last_bar = b == nbars - 1
                # comping
                prev_voicing = self.comp(parts["comp"], bar, chord_root, ivs, prev_voicing, intensity, name)
                if "pad" in parts and intensity >= 1 and b % bpc == 0:
                    self.pad(parts["pad"], bar, chord_root, ivs, bpc)
                if name != "intro" or r.random() < 0.5:
                    self.bass(parts["bass"], bar, chord_root, ivs, self.root + nxt_pc, name == "outro")
                if "drums" in parts and name != "outro":
                    pat = self.drum_b if name == "chorus" else self.drum_a
                    self.drums(parts["drums"], bar, pat, intensity, b == 0 and si > 0,
                               last_bar and si < len(sections) - 2)
                if s.lead and intensity >= 1 and not (name == "verse" and b < 2 and s.lead != "arp"):
                    self.lead(parts["lead"], bar, chord_root, ivs, motif, b, intensity)
                bar += 1
        # final ring-out: end of outro, cut lead
        arr = Arrangement(s.name, s.family, self.seed, self.bpm, self.key, self.meter, bar,
                          [p for p in parts.values() if p.notes], self.mood)
        for p in arr.parts:
            p.notes = _fix_overlaps(sorted(p.notes))
        return arr

    # --- parts ---
    def voicing(self, chord_root: int, ivs, prev) -> list[int]:
        pcs = [(chord_root + i) % 12 for i in ivs]
        best, best_cost = None, 1e9
        for inv in range(len(pcs)):
            rot = pcs[inv:] + pcs[:inv]
            for base in range(48, 62):
                if base % 12 != rot[0]:
                    continue
                v = [base]
                for pc in rot[1:]:
                    p = v[-1] + ((pc - v[-1]) % 12 or 12)
                    v.append(p)
                center = 62 if prev is None else float(np.mean(prev))
                cost = abs(np.mean(v) - center) + (0 if v[-1] <= 79 else 20)
                if cost < best_cost:
                    best, best_cost = v, cost
        return best

    def comp(self, part: Part, bar: int, chord_root: int, ivs, prev, intensity: int, section: str):
        s, r = self.s, self.rng
        v = self.voicing(chord_root, ivs, prev)
        n = self.steps
        vel = 62 + 12 * intensity
        hits: list[tuple[float, float, list[int]]] = []  # (step, length in steps, pitches)
        style = s.comp
        if section == "outro":
            style = "pad"
        if style == "pad":
            hits = [(0, n, v)]
        elif style in ("power8", "power16"):
            p = chord_root % 12 + 40
            pw = [p, p + 7, p + 12]
            step = 2 if style == "power8" else 1
            hits = [(k, step * 0.9, pw) for k in range(0, n, step)]
            if intensity == 0:
                hits = [(0, n, pw)]
        elif style == "strum":
            pat = [0, 4, 6, 8, 12, 14] if self.meter == 4 else [0, 4, 8]
            hits = [(k, 2 if k + 2 < n else 1.5, v) for k in pat if k < n]
        elif style == "jazz_comp":
            ks = sorted(set(int(x) for x in r.choice(range(0, n, 2), size=int(r.integers(2, 4)), replace=False)))
            hits = [(k, int(r.choice([2, 3, 4])), v[-3:]) for k in ks]
        elif style == "shuffle_comp":
            hits = [(k, 1.5, v) for k in range(0, n, 4)]
        elif style == "stabs16":
            ks = [k for k in range(n) if r.random() < (0.35 if k % 2 else 0.2)]
            hits = [(k, 0.8, v[-3:]) for k in ks] or [(2, 1, v)]
        elif style == "stabs":
            ks = [k for k in (2, 3, 6, 10, 11, 14) if r.random() < 0.55]
            hits = [(k, 1, v) for k in ks] or [(2, 1, v)]
        elif style == "bossa":
            hits = [(k, 1.6, v) for k in (0, 3, 6, 10, 13) if k < n]
        elif style == "skank":
            hits = [(k, 1, v) for k in (4, 12)] + ([(k, 1, v) for k in (6, 14)] if intensity >= 2 else [])
        elif style == "offbeat":
            hits = [(k, 1.5, v) for k in (2, 6, 10, 14)]
        elif style == "chicken":
            hits = [(k, 0.5, v[-2:]) for k in range(1, n, 2) if r.random() < 0.6]
        elif style == "waltz":
            hits = [(4, 3, v), (8, 3, v)]
        elif style == "march":
            hits = [(k, 1.8, v) for k in (2, 6, 10, 14)]
        elif style == "arp16":
            order = v + [v[1] + 12, v[2] + 12] if len(v) >= 3 else v
            for k in range(n):
                hits.append((k, 1, [order[(k if (k // 8) % 2 == 0 else -k) % len(order)]]))
        else:
            hits = [(0, n, v)]
        for st, ln, pitches in hits:
            t0 = self.human(self.t(bar, st), 6)
            dur = max(30, int(ln * STEP) - 10)
            for j, p in enumerate(pitches):
                strum = j * 12 if style in ("strum", "bossa") else 0
                part.notes.append((t0 + strum, dur, int(p), int(np.clip(vel + r.integers(-6, 7), 1, 127))))
        return v

    def pad(self, part: Part, bar: int, chord_root: int, ivs, bpc: int):
        v = self.voicing(chord_root, ivs, None)
        t0 = self.t(bar, 0)
        for p in v:
            part.notes.append((t0, bpc * self.bar_ticks - 20, p + 12, 60))

    def bass(self, part: Part, bar: int, chord_root: int, ivs, next_root: int, outro: bool):
        s, r = self.s, self.rng
        root = 28 + (chord_root - 28) % 12  # E1..D#2
        fifth = root + 7
        third = root + ivs[1]
        octv = root + 12
        n = self.steps
        notes: list[tuple[float, float, int, int]] = []
        kind = "drone" if outro else s.bass
        if kind == "root8":
            notes = [(k, 1.8, root, 96 if k % 4 == 0 else 84) for k in range(0, n, 2)]
        elif kind == "root16":
            notes = [(k, 0.9, root, 100 if k % 4 == 0 else 80) for k in range(n)]
        elif kind == "pop":
            notes = [(0, 3, root, 100), (3, 1, root, 80), (6, 2, root, 90), (8, 3, fifth if r.random() < 0.5 else root, 96),
                     (12, 2, root, 88), (14, 2, octv if r.random() < 0.3 else root, 84)]
        elif kind == "walking":
            tones = [root, third, fifth, root + ivs[-1] if len(ivs) > 3 else octv]
            nr = 28 + (next_root - 28) % 12
            approach = nr + int(r.choice([-1, 1]))
            seq = [root, int(r.choice(tones[1:])), int(r.choice(tones[1:])), approach]
            notes = [(4 * q, 3.8, seq[q], 92 if q == 0 else 82) for q in range(self.meter)]
        elif kind == "shuffle":
            seq = [root, third, fifth, root + 9, octv, root + 9, fifth, third]
            notes = [(2 * k, 1.8, seq[k % 8], 92 if k % 2 == 0 else 78) for k in range(n // 2)]
        elif kind == "funk":
            pat = [(0, root), (3, octv), (6, root), (7, root + 10), (10, root), (11, fifth), (14, octv)]
            notes = [(k, 0.9, p, 100 if k == 0 else 76 + int(r.integers(0, 20))) for k, p in pat]
        elif kind == "bossa":
            notes = [(0, 2.8, root, 92), (6, 1.8, fifth - 12 if fifth - 12 >= 28 else fifth, 84),
                     (8, 2.8, fifth - 12 if fifth - 12 >= 28 else fifth, 84), (14, 1.8, root, 82)]
        elif kind == "reggae":
            notes = [(2, 1.8, root, 96), (4, 1.5, root, 84), (6, 1.8, third, 86), (8, 3, fifth, 90),
                     (12, 1.8, root + 10 if r.random() < 0.5 else octv, 84)]
        elif kind == "root_fifth":
            notes = [(0, 3.6, root, 96), (8, 3.6, fifth if fifth <= 52 else fifth - 12, 90)]
            if r.random() < 0.3:
                notes.append((12, 1.8, third, 80))
        elif kind == "waltz":
            notes = [(0, 3.6, root, 96)]
        elif kind == "march":
            notes = [(0, 3.6, root, 96), (8, 3.6, fifth if fifth <= 52 else fifth - 12, 90)]
        elif kind == "baroque":
            seq = [root, octv, fifth, octv]
            notes = [(2 * k, 1.8, seq[k % 4], 80) for k in range(n // 2)]
        elif kind == "drone":
            notes = [(0, n - 0.2, root, 80)]
        elif kind == "techno":
            notes = [(k, 0.8, root if k % 4 != 3 else octv, 100 if k % 4 == 2 else 80) for k in range(n) if k % 4 != 0]
        elif kind == "house":
            notes = [(k, 1.5, root if r.random() < 0.8 else octv, 96) for k in (2, 6, 10, 14)]
        elif kind == "offbeat8":
            notes = [(k, 0.9, root, 100 if k % 4 == 2 else 80) for k in range(n) if k % 4 != 0]
        elif kind == "sub":
            notes = [(0, 5.8, root, 100), (6, 1.8, root, 90), (10, 5.8, root + (0 if r.random() < 0.6 else 3), 96)]
        elif kind == "hiphop":
            notes = [(0, 3, root, 100), (7, 1.5, root, 84), (9, 3, fifth if r.random() < 0.5 else root, 90),
                     (14, 1.8, root + 10 if r.random() < 0.4 else root, 80)]
        elif kind == "octave8":
            notes = [(k, 0.9, root if (k // 2) % 2 == 0 else octv, 96) for k in range(0, n, 2)]
        else:
            notes = [(0, n - 0.2, root, 90)]
        for st, ln, p, v in notes:
            if st >= n:
                continue
            part.notes.append((self.human(self.t(bar, st), 5), max(30, int(ln * STEP) - 8), int(p),
                               int(np.clip(v + r.integers(-5, 6), 1, 127))))

    def drums(self, part: Part, bar: int, pat: dict, intensity: int, crash: bool, fill: bool):
        r = self.rng
        n = self.steps
        for key, steps in pat.items():
            if intensity == 0 and key not in (CHH, RIDE, SHAKER, RIM, PHH, KICK):
                continue
            for k, c in enumerate(steps[:n]):
                if c == ".":
                    continue
                if fill and k >= n - 4 and key in (SNARE, RIM, CLAP):
                    continue
                v = _vel(c, r)
                if intensity == 0:
                    v = int(v * 0.7)
                part.notes.append((self.human(self.t(bar, k), 4), 60, key, v))
        if crash and intensity >= 1:
            part.notes.append((self.t(bar, 0), 240, CRASH, 100))
        if fill:
            toms = [SNARE, HTOM, MTOM, LTOM] if r.random() < 0.6 else [SNARE, SNARE, SNARE, SNARE]
            for j, k in enumerate(range(n - 4, n)):
                part.notes.append((self.t(bar, k), 60, toms[j], 80 + 8 * j))

    def make_motif(self) -> list[tuple[int, int, int]]:
        """Two bars of (start step, length, contour step) for the lead."""
        r = self.rng
        n = self.steps
        choices = {"slow": ([4, 6, 8, 2], [0.35, 0.2, 0.3, 0.15]), "medium": ([2, 4, 1, 3, 6], [0.35, 0.3, 0.1, 0.15, 0.1]),
                   "fast": ([1, 2, 3, 4], [0.35, 0.4, 0.1, 0.15])}[self.lead_rhythm]
        motif = []
        for half in range(2):
            k = 0
            while k < n:
                ln = int(r.choice(choices[0], p=choices[1]))
                ln = min(ln, n - k)
                rest = r.random() < 0.18
                if not rest:
                    motif.append((half * n + k, ln, int(r.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))))
                k += ln
        return motif

    def lead(self, part: Part, bar: int, chord_root: int, ivs, motif, b: int, intensity: int):
        s, r = self.s, self.rng
        n = self.steps
        scale_pcs = sorted({(self.root + x) % 12 for x in self.scale})
        lo, hi = (55, 79) if part.program not in (30, 29) else (52, 76)
        if self.lead_pitch is None:
            self.lead_pitch = 60 + (chord_root % 12)
        chord_pcs = {(chord_root + i) % 12 for i in ivs}
        if s.lead == "arp":
            tones = sorted(set(60 + (chord_root + i) % 12 + (12 if (chord_root + i) % 12 < 4 else 0) for i in ivs))
            tones = tones + [t + 12 for t in tones]
            pat = r.permutation(len(tones)) if b % 4 == 0 or not hasattr(self, "_arp") else self._arp
            self._arp = pat
            step = 1 if self.bpm < 150 else 2
            for j, k in enumerate(range(0, n, step)):
                p = tones[pat[j % len(pat)] % len(tones)]
                part.notes.append((self.t(bar, k), STEP * step - 20, int(p), 70 + (14 if k % 4 == 0 else 0)))
            return
        if s.lead == "sparse":
            if r.random() < 0.5:
                return
            for _ in range(int(r.integers(1, 4))):
                k = int(r.integers(0, n))
                p = 72 + int(r.choice(sorted(chord_pcs))) % 12
                part.notes.append((self.t(bar, k), int(STEP * r.integers(4, 12)), p, 60 + int(r.integers(0, 20))))
            return
        half = (b % 2) * n
        events = [(st - half, ln, c) for st, ln, c in motif if half <= st < half + n]
        if s.lead == "riff" and b % 4 == 3:
            events = events[: max(1, len(events) // 2)]
        if b % 8 == 7:  # cadence: long note on the chord root
            events = [e for e in events if e[0] < n // 2] + [(n // 2, n // 2, 0)]
        for st, ln, c in events:
            target = self.lead_pitch + c
            # snap: strong beats to chord tones, others to scale tones
            pcs = chord_pcs if st % 4 == 0 else scale_pcs
            cands = [p for p in range(lo, hi + 1) if p % 12 in pcs]
            p = min(cands, key=lambda x: (abs(x - target), x))
            self.lead_pitch = p
            vel = 78 + 8 * intensity + (8 if st % 4 == 0 else 0) + int(r.integers(-6, 7))
            part.notes.append((self.human(self.t(bar, st), 6), max(40, int(ln * STEP) - 15), int(p),
                               int(np.clip(vel, 1, 127))))


def _fix_overlaps(notes: list) -> list:
    """Shorten a note that would still sound when the same pitch starts again on its channel (the
    note-off would otherwise cut the new note); drop exact duplicates."""
    last: dict[int, int] = {}
    out: list = []
    for n in notes:
        start, dur, pitch, vel = n
        j = last.get(pitch)
        if j is not None:
            ps, pd, pp, pv = out[j]
            if ps == start:
                continue
            if ps + pd >= start:
                out[j] = (ps, max(10, start - ps - 5), pp, pv)
        last[pitch] = len(out)
        out.append(n)
    return out


def generate(style: str, seed: int, seconds: float = 120.0) -> Arrangement:
    """Arrangement of roughly ``seconds`` seconds in ``style`` (a key of :data:`STYLES`); pure in (style, seed)."""
    if style not in STYLES:
        raise KeyError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    idx = list(STYLES).index(style)
    return _Gen(STYLES[style], int(seed), float(seconds), idx).generate()


def track_plan(minutes: float, seed: int = 0, min_seconds: float = 75.0, max_seconds: float = 165.0
               ) -> list[tuple[str, int, float]]:
    """``(style, seed, seconds)`` for enough tracks to reach ``minutes``, cycling over all styles.

    Track ``i`` is the same whatever ``minutes`` is (a longer plan only appends tracks).
    """
    out, total, i = [], 0.0, 0
    names = list(STYLES)
    while total < minutes * 60.0:
        style = names[i % len(names)]
        rng = np.random.default_rng([seed, i, 7])
        sec = float(np.round(rng.uniform(min_seconds, max_seconds), 1))
        out.append((style, seed * 100003 + i, sec))
        total += sec
        i += 1
    return out


# --------------------------------------------------------------------------------------------------
# Standard MIDI File writer
# --------------------------------------------------------------------------------------------------
def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """events: (tick, order, raw bytes) -> MTrk chunk (delta times, end-of-track appended)."""
    events = sorted(events, key=lambda e: (e[0], e[1]))
    data = bytearray()
    last = 0
    for tick, _, raw in events:
        data += _vlq(tick - last) + raw
        last = tick
    data += _vlq(0) + b"\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(data)) + bytes(data)


def midi_bytes(arr: Arrangement) -> bytes:
    """The arrangement as a type-1 Standard MIDI File."""
    tempo_us = int(round(60_000_000 / arr.bpm))
    root_name, mode = arr.key.split(" ", 1)
    sharps = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F#": 6, "C#": 7, "F": -1, "Bb": -2, "Eb": -3,
              "Ab": -4}
    minor = mode in ("minor", "dorian")
    rel = NOTE_NAMES[(NOTE_NAMES.index(root_name) + (3 if minor else 0)) % 12]
    sf = sharps.get(rel, 0)
    name = f"{arr.style} {arr.seed}".encode()
    meta = [(0, 0, b"\xff\x03" + _vlq(len(name)) + name),
            (0, 1, b"\xff\x51\x03" + tempo_us.to_bytes(3, "big")),
            (0, 2, bytes([0xFF, 0x58, 4, arr.meter, 2, 24, 8])),
            (0, 3, bytes([0xFF, 0x59, 2, sf & 0xFF, 1 if minor else 0]))]
    chunks = [_track(meta)]
    for p in arr.parts:
        ch = p.channel
        ev = []
        nm = p.instrument.encode()
        ev.append((0, 0, b"\xff\x03" + _vlq(len(nm)) + nm))
        if ch != DRUM_CH:
            ev.append((0, 1, bytes([0xC0 | ch, p.program])))
        for cc, val in ((7, p.volume), (10, p.pan), (91, p.reverb), (93, p.chorus)):
            ev.append((0, 2, bytes([0xB0 | ch, cc, int(np.clip(val, 0, 127))])))
        for start, dur, pitch, vel in p.notes:
            ev.append((start + dur, 3, bytes([0x80 | ch, pitch, 0])))  # offs before ons at the same tick
            ev.append((start, 4, bytes([0x90 | ch, pitch, vel])))
        chunks.append(_track(ev))
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(chunks), PPQ)
    return header + b"".join(chunks)


def write_midi(arr: Arrangement, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(midi_bytes(arr))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)


def find_soundfont() -> Optional[str]:
    """A General MIDI soundfont: ``$MOUSAI_SOUNDFONT`` or the Debian locations; ``None`` if there is none."""
    env = os.environ.get("MOUSAI_SOUNDFONT")
    for p in ((env,) if env else ()) + SOUNDFONT_CANDIDATES:
        if p and os.path.isfile(p):
            return p
    return None


def fluidsynth_status() -> tuple[bool, str]:
    """``(True, soundfont path)`` if rendering works here, else ``(False, reason)``."""
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; raises ImportError if libfluidsynth is missing)
    except Exception as e:  # ImportError, OSError
        return False, f"pyfluidsynth / libfluidsynth unavailable ({e}); apt-get install libfluidsynth3"
    sf = find_soundfont()
    if sf is None:
        return False, "no GM soundfont found; apt-get install fluid-soundfont-gm"
    return True, sf


def soundfont_licence(path: Optional[str] = None) -> str:
    """Licence of the soundfont, read from its Debian copyright file when there is one."""
    path = path or find_soundfont() or ""
    real = os.path.realpath(path)
    for pkg in ("fluid-soundfont-gm", "musescore-general-soundfont", "timgm6mb-soundfont"):
        cp = Path(f"/usr/share/doc/{pkg}/copyright")
        if cp.is_file() and ("FluidR3" in real if pkg == "fluid-soundfont-gm" else pkg.split("-")[0] in real.lower()):
            text = cp.read_text(errors="replace")
            lic = "MIT" if "MIT license" in text or "MIT License" in text else "see " + str(cp)
            return f"{lic} ({os.path.basename(real)}, Debian {pkg}, {cp})"
    return f"unknown ({os.path.basename(real)})"


def _write_float_fn():
    import fluidsynth

    fn = getattr(fluidsynth._fl, "fluid_synth_write_float")
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return fn


def render(arr: Arrangement, sr: int = 48000, soundfont: Optional[str] = None, tail: float = 2.5,
           peak: float = 0.89) -> np.ndarray:
    """Render with FluidSynth to float32 stereo ``[2, N]`` at ``sr``, peak-normalised to ``peak``."""
    import fluidsynth

    ok, why = fluidsynth_status()
    if not ok:
        raise RuntimeError(why)
    soundfont = soundfont or why
    synth = fluidsynth.Synth(gain=0.4, samplerate=float(sr), channels=16,
                             **{"synth.reverb.room-size": 0.6, "synth.reverb.width": 0.9,
                                "synth.cpu-cores": 1, "synth.polyphony": 256})
    write_float = _write_float_fn()
    try:
        sfid = synth.sfload(soundfont)
        if sfid < 0:
            raise RuntimeError(f"cannot load soundfont {soundfont}")
        events = []  # (sample, order, fn, args)
        for p in arr.parts:
            ch = p.channel
            synth.program_select(ch, sfid, 128 if ch == DRUM_CH else 0, 0 if ch == DRUM_CH else p.program)
            for cc, val in ((7, p.volume), (10, p.pan), (91, p.reverb), (93, p.chorus)):
                synth.cc(ch, cc, int(np.clip(val, 0, 127)))
            for start, dur, pitch, vel in p.notes:
                events.append((start + dur, 0, ch, pitch, 0))
                events.append((start, 1, ch, pitch, vel))
        spt = sr * 60.0 / (arr.bpm * PPQ)  # samples per tick
        events.sort()
        total = int(round(arr.ticks * spt + tail * sr))
        left = np.zeros(total, dtype=np.float32)
        right = np.zeros(total, dtype=np.float32)
        pos = 0

        def run(until: int):
            nonlocal pos
            until = min(until, total)
            while pos < until:
                n = min(until - pos, 1 << 16)
                write_float(synth.synth, n, left.ctypes.data + 4 * pos, 0, 1, right.ctypes.data + 4 * pos, 0, 1)
                pos += n

        for tick, kind, ch, pitch, vel in events:
            run(int(round(tick * spt)))
            if kind == 1:
                synth.noteon(ch, pitch, vel)
            else:
                synth.noteoff(ch, pitch)
        run(total)
    finally:
        synth.delete()
    out = np.stack([left, right])
    m = float(np.max(np.abs(out))) if out.size else 0.0
    if m > 0:
        out *= np.float32(peak / m)
    return out
