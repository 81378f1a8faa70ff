"""From espeak-ng phonemes to a mouth shape at any instant.

Each phoneme maps to a viseme (a target mouth shape). The mouth reaches each target at the middle of its
phoneme and moves between consecutive targets along a smoothstep, so lips close fully on /p b m/, open wide on
/a/, and never jump between frames whatever the frame rate: the track is a function of continuous time, which
is what lets us render variable-frame-rate video with the right mouth at every timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipelines.synthetic.face import REST, MouthShape
from pipelines.synthetic.speech import Phoneme

# Targets per viseme class: (open, width, teeth). Rounded vowels never open fully: lips pursed and wide open
# at once is not a human mouth, and the landmark model misreads it.
VISEMES: dict[str, tuple[float, float, float]] = {
    "closed": (0.0, 0.5, 0.0),  # p b m
    "labiodental": (0.08, 0.55, 1.0),  # f v: upper teeth on the lower lip
    "dental": (0.2, 0.55, 1.0),  # th
    "sibilant": (0.12, 0.75, 1.0),  # s z: teeth together, lips spread
    "postalveolar": (0.2, 0.15, 1.0),  # sh zh ch j: lips pushed forward
    "alveolar": (0.25, 0.55, 0.6),  # t d n l
    "velar": (0.32, 0.5, 0.4),  # k g ng h
    "w": (0.12, 0.0, 0.0),
    "r": (0.2, 0.25, 0.3),
    "open": (0.9, 0.6, 0.5),  # a, ah, uh
    "mid": (0.55, 0.65, 0.6),  # e, schwa, er
    "spread": (0.3, 1.0, 0.8),  # ee, i
    "rounded": (0.38, 0.05, 0.2),  # oo
    "round_open": (0.55, 0.25, 0.3),  # aw, o
    "rest": (REST.open, REST.width, REST.teeth),
}

# espeak-ng's English mnemonics; anything unlisted falls back by its first letter (see `viseme_of`).
PHONEME_CLASSES: dict[str, str] = {
    **dict.fromkeys(["p", "b", "m"], "closed"),
    **dict.fromkeys(["f", "v"], "labiodental"),
    **dict.fromkeys(["T", "D"], "dental"),
    **dict.fromkeys(["s", "z"], "sibilant"),
    **dict.fromkeys(["S", "Z", "tS", "dZ"], "postalveolar"),
    **dict.fromkeys(["t", "d", "n", "l", "t2", "d2", "n-", "l/", "t#", "?"], "alveolar"),
    **dict.fromkeys(["k", "g", "N", "h", "x"], "velar"),
    "w": "w",
    **dict.fromkeys(["r", "r-", "R"], "r"),
    **dict.fromkeys(["a", "a#", "A:", "A@", "aa", "V", "A"], "open"),
    **dict.fromkeys(["E", "e", "@", "@2", "@5", "3", "3:", "@L", "e@", "a2"], "mid"),
    **dict.fromkeys(["i", "i:", "I", "I2", "I#", "i@", "i@3", "y", "j", ";"], "spread"),  # ; is a y-glide
    **dict.fromkeys(["u:", "U", "U@", "u", "o@"], "rounded"),
    **dict.fromkeys(["O:", "O@", "0", "O", "o", "O2", "02"], "round_open"),
    **dict.fromkeys(["_", "_:", "_!", "||", ""], "rest"),
}

# The lips reach a shape slightly before the sound it makes peaks, as in real speech; 25 ms also cancels the
# lag of a target placed mid-phoneme behind the phoneme's loudness (measured on espeak-ng speech).
LIP_LEAD_S = 0.025

# Diphthongs glide between two targets within one phoneme.
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "aI": ("a", "I"), "aI@": ("a", "@"), "aI3": ("a", "@"), "aU": ("a", "U"), "aU@": ("a", "@"), "eI": ("e", "I"),
    "oU": ("O", "U"), "OI": ("O", "I"), "I@": ("I", "@"), "e@": ("e", "@"), "U@": ("U", "@"),
}


def viseme_of(symbol: str) -> tuple[float, float, float]:
    symbol = symbol.strip("'\",%=")  # stress and syllable marks, if the engine leaves any on the symbol
    if symbol in PHONEME_CLASSES:
        return VISEMES[PHONEME_CLASSES[symbol]]
    if symbol[:1] in PHONEME_CLASSES:
        return VISEMES[PHONEME_CLASSES[symbol[:1]]]
    return VISEMES["mid"] if symbol[:1].lower() in "aeiouv@03" else VISEMES["alveolar"]


@dataclass(frozen=True)
class MouthTrack:
    """Keyframes (time, open, width, teeth) of one utterance; evaluate anywhere with `at`."""

    times: np.ndarray  # [K] seconds, increasing
    targets: np.ndarray  # [K, 3]: open, width, teeth

    def at(self, t: float) -> MouthShape:
        values = self.sample(np.array([t]))[0]
        return MouthShape(open=float(values[0]), width=float(values[1]), teeth=float(values[2]))

    def sample(self, times: np.ndarray) -> np.ndarray:
        """Mouth parameters [len(times), 3] at the given times, smoothstep between keyframes."""
        times = np.asarray(times, dtype=np.float64)
        right = np.clip(np.searchsorted(self.times, times), 1, len(self.times) - 1)
        left = right - 1
        span = self.times[right] - self.times[left]
        u = np.clip((times - self.times[left]) / np.maximum(span, 1e-9), 0.0, 1.0)
        ease = (u * u * (3 - 2 * u))[:, None]
        return self.targets[left] * (1 - ease) + self.targets[right] * ease


def mouth_track(phonemes: Sequence[Phoneme], start_s: float, articulation: float,
                rng: np.random.Generator) -> MouthTrack:
    """Keyframes for speech starting at `start_s` (video time).

    `articulation` scales how far the mouth opens (speakers differ); a little per-phoneme jitter keeps two
    instances of one vowel from looking identical.
    """
    rest = np.array(VISEMES["rest"])
    first = start_s + (phonemes[0].start_s if phonemes else 0.0) - LIP_LEAD_S
    times, targets = [-1e6, first - 0.1], [rest, rest]  # at rest until the lips get ready to speak
    for phoneme in phonemes:
        begin, end = start_s + phoneme.start_s - LIP_LEAD_S, start_s + phoneme.end_s - LIP_LEAD_S
        parts = DIPHTHONGS.get(phoneme.symbol, (phoneme.symbol,))
        for k, part in enumerate(parts):
            target = np.array(viseme_of(part), dtype=np.float64)
            if target[0] > 0:
                target[0] = np.clip(target[0] * articulation * rng.uniform(0.85, 1.1), 0.0, 1.0)
            times.append(begin + (end - begin) * (k + 1) / (len(parts) + 1))
            targets.append(target)
    last = start_s + (phonemes[-1].end_s if phonemes else 0.0) - LIP_LEAD_S
    times += [last + 0.1, last + 1e6]
    targets += [rest, rest]
    times = np.asarray(times)
    order = np.argsort(times, kind="stable")
    return MouthTrack(times=times[order], targets=np.asarray(targets)[order])
