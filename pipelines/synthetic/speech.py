"""Real speech with phoneme timings from espeak-ng, offline.

The espeak-ng shared library and its data ship inside the ``espeakng-loader``
wheel; we drive it through ctypes in synchronous mode with phoneme events on,
so every call returns the waveform together with when each phoneme starts.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np

# Constants from espeak-ng's speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
# Without this flag a missing data folder makes the library call exit().
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_ENDPAUSE = 0x1000
_BUFFER_MS = 200

_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7

_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4

_STRESS_MARKS = "',"
PAUSE = "_"
# Below about -60 dBFS counts as silence when finding where speech really ends.
_SILENCE_LEVEL = 1e-3


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice and its prosody settings."""

    language: str = "en-us"
    variant: str = ""  # espeak-ng voice variant such as "m3" or "f2"; "" = the language default
    words_per_minute: int = 160
    pitch: int = 50  # espeak 0..100
    pitch_range: int = 50  # espeak 0..100

    def __post_init__(self) -> None:
        # espeak-ng clamps out-of-range values silently; fail loudly instead.
        if not 80 <= self.words_per_minute <= 450:
            raise ValueError(f"words_per_minute must be in 80..450, got {self.words_per_minute}")
        for name in ("pitch", "pitch_range"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{name} must be in 0..100, got {value}")

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass(frozen=True)
class Phoneme:
    """One phoneme (or a pause, symbol "_") and the time span it occupies."""

    symbol: str  # espeak-ng phoneme mnemonic without stress marks, e.g. "a", "oU", "m"
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Speech:
    """A synthesized utterance with phonemes that tile it from 0 to its end."""

    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: tuple[Phoneme, ...]
    text: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the message
        ("sample", ctypes.c_int),  # the same instant in samples ("internal use" per the header)
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class _PhonemeEvent:
    symbol: str
    sample: int  # start of the phoneme, in samples from the start of the audio


class _Engine:
    """One freshly loaded and initialised copy of the espeak-ng library.

    espeak-ng keeps synthesis state in C statics that no API resets (pitch
    flutter phase, gain control, cycle counters), so an utterance depends on
    every utterance spoken before it in the process. Unloading and reloading
    the library (about 1 ms) is the only way to make output a pure function of
    text and voice, so each synthesis gets its own engine.
    """

    def __init__(self, library_path: str, data_path: str) -> None:
        self.library_path = library_path
        self._lib = _load(library_path)
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFFER_MS,
            data_path.encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if self.sample_rate <= 0:
            _ctypes.dlclose(self._lib._handle)
            raise RuntimeError(f"espeak-ng at {library_path} failed to initialise with data {data_path}")
        self._chunks: list[np.ndarray] = []
        self._events: list[_PhonemeEvent] = []
        # ctypes frees the trampoline when the Python object dies, so keep it on the instance.
        self._callback = _SynthCallback(self._on_synth)
        self._lib.espeak_SetSynthCallback(self._callback)

    def close(self) -> None:
        self._lib.espeak_Terminate()
        # Drops the last reference, so the next dlopen starts from pristine statics.
        _ctypes.dlclose(self._lib._handle)

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, list[_PhonemeEvent]]:
        """Int16 samples and the phoneme events of one utterance."""
        self._apply(voice)
        encoded = text.encode("utf-8")
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_AUTO | _ENDPAUSE, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples, self._events

    def _apply(self, voice: Voice) -> None:
        if self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.espeak_name!r}")
        self._lib.espeak_SetParameter(_RATE, voice.words_per_minute, 0)
        self._lib.espeak_SetParameter(_VOLUME, 100, 0)
        self._lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
        self._lib.espeak_SetParameter(_RANGE, voice.pitch_range, 0)

    def _on_synth(self, wav, num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                symbol = event.id.string.decode("utf-8", errors="replace")
                self._events.append(_PhonemeEvent(symbol, self._event_sample(event)))
            i += 1
        return 0  # 0 = keep synthesizing

    def _event_sample(self, event: _Event) -> int:
        # `sample` is exact but undocumented; trust it only while it agrees with the
        # documented millisecond position, else fall back to the coarser value.
        from_ms = event.audio_position * self.sample_rate // 1000
        if abs(event.sample - from_ms) <= self.sample_rate // 1000 + 1:
            return event.sample
        return from_ms


def _load(library_path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(library_path)
    except OSError as error:
        raise RuntimeError(f"cannot load espeak-ng from {library_path}: {error}") from error
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    return lib


# Two engines alive at once would share one loaded library, and so its state.
_engine_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    # A thread of the parent may have held the lock at fork time; that thread
    # does not exist in the child, so the copied lock would never be released.
    global _engine_lock
    _engine_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def synthesize(text: str, voice: Voice = Voice()) -> Speech:
    """Speak `text` with espeak-ng and return the audio with phoneme timings."""
    _check_variant(voice.variant)
    with _engine_lock:
        engine = _Engine(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
        try:
            raw, events = engine.synthesize(text, voice)
        finally:
            engine.close()
    samples = raw.astype(np.float32) / np.float32(32768.0)
    phonemes = _build_phonemes(events, len(samples), _speech_end(samples), engine.sample_rate)
    return Speech(samples=samples, sample_rate=engine.sample_rate, phonemes=phonemes, text=text)


@functools.cache
def voice_variants() -> list[str]:
    """Names of the voice variants bundled with espeak-ng, sorted."""
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(path.name for path in folder.iterdir() if path.is_file())


def _check_variant(variant: str) -> None:
    # espeak-ng silently ignores an unknown variant, which would hide typos.
    if variant and variant not in voice_variants():
        raise ValueError(f"unknown espeak-ng voice variant {variant!r}")


def _speech_end(samples: np.ndarray) -> int:
    """Index just after the last non-silent sample (0 for pure silence)."""
    loud = np.flatnonzero(np.abs(samples) > _SILENCE_LEVEL)
    return int(loud[-1]) + 1 if len(loud) else 0


def _normalise_symbol(symbol: str) -> str:
    # espeak writes pauses as "_", "_:", "_!" ...; the mouth does the same in all of them.
    if symbol.startswith(PAUSE):
        return PAUSE
    return symbol.lstrip(_STRESS_MARKS)


def _build_phonemes(
    events: list[_PhonemeEvent], num_samples: int, speech_end: int, sample_rate: int
) -> tuple[Phoneme, ...]:
    """Phonemes tiling [0, num_samples): each ends where the next starts."""
    starts: list[tuple[str, int]] = [(PAUSE, 0)]  # covers any lead-in before the first event
    for event in events:
        symbol = _normalise_symbol(event.symbol)
        # Clamp so a stray position can never reorder phonemes or leave the audio.
        sample = min(max(event.sample, starts[-1][1]), num_samples)
        if symbol:
            starts.append((symbol, sample))
    ends = [start for _, start in starts[1:]] + [num_samples]
    spans = [(symbol, start, end) for (symbol, start), end in zip(starts, ends) if end > start]
    spans = _merge_pauses(_split_trailing_silence(spans, speech_end))
    return tuple(Phoneme(symbol, start / sample_rate, end / sample_rate) for symbol, start, end in spans)


def _split_trailing_silence(spans: list[tuple[str, int, int]], speech_end: int) -> list[tuple[str, int, int]]:
    # Without a final pause event the last phoneme would swallow the silent tail.
    if not spans:
        return spans
    symbol, start, end = spans[-1]
    if symbol != PAUSE and start < speech_end < end:
        return spans[:-1] + [(symbol, start, speech_end), (PAUSE, speech_end, end)]
    return spans


def _merge_pauses(spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    merged: list[tuple[str, int, int]] = []
    for symbol, start, end in spans:
        if merged and symbol == PAUSE and merged[-1][0] == PAUSE:
            merged[-1] = (PAUSE, merged[-1][1], end)
        else:
            merged.append((symbol, start, end))
    return merged
