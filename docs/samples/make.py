"""Regenerate the example clips of docs/samples with the shipped default bundle (run from the repo root):

    python docs/samples/make.py

Each clip is made by the CLI exactly as a user would (`mousai generate ... --spectrogram`), then stored as Ogg Vorbis
(q 0.6) to keep the repo lean; README.md here lists prompt, seed, settings and the RTF printed.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SECONDS = 12
# prompts fixed before generating, one per family of the corpus; seed 0 for all
SAMPLES = [
    ("01-classical", "classical, piano"),
    ("02-electronic", "electronic music"),
    ("03-metal", "metal"),
    ("04-ambient", "ambient"),
    ("05-jazz", "jazz music"),
]


def main() -> None:
    lines = ["# Example clips of the default model", "",
             f"Made with `python docs/samples/make.py`: `mousai generate PROMPT -o X --seconds {SECONDS} --seed 0` with "
             "the shipped `engines/default` at its default settings, on the 2-core CPU of the build machine; stored as "
             "Ogg Vorbis. Prompts were fixed before generating (one per family of the corpus), one try each, not "
             "picked.", "", "| clip | prompt | RTF printed | spectrogram |", "|---|---|---|---|"]
    for name, prompt in SAMPLES:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "generate", prompt, "-o", str(wav),
                                "--seconds", str(SECONDS), "--seed", "0", "--spectrogram", str(HERE / f"{name}.png")],
                               capture_output=True, text=True, check=True)
            rtf = re.search(r"real-time factor ([\d.]+)", p.stdout + p.stderr)
            audio, sr = sf.read(wav, dtype="float32")
            sf.write(HERE / f"{name}.ogg", audio, sr, format="OGG", subtype="VORBIS")
        lines.append(f"| [{name}.ogg]({name}.ogg) | `{prompt}` | {rtf.group(1) if rtf else '?'} | "
                     f"![{name}]({name}.png) |")
        print(lines[-1])
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
