"""Tests for espeak-ng speech synthesis and the sentence generator."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from pipelines.synthetic import speech
from pipelines.synthetic.speech import PAUSE, Phoneme, Speech, Voice, synthesize, voice_variants
from pipelines.synthetic.text import random_sentences

TEXT = "The quick brown fox jumps over the lazy dog. My father moved the blue boat to the warm sea."


@pytest.fixture(scope="module")
def spoken() -> Speech:
    return synthesize(TEXT)


def _rms(utterance: Speech, start_s: float, end_s: float) -> float:
    rate = utterance.sample_rate
    segment = utterance.samples[round(start_s * rate) : round(end_s * rate)].astype(np.float64)
    return float(np.sqrt(np.mean(segment**2)))


def test_audio_format(spoken: Speech) -> None:
    assert spoken.sample_rate == 22050
    assert spoken.samples.dtype == np.float32 and spoken.samples.ndim == 1
    assert 3.0 < spoken.duration_s < 10.0
    assert np.abs(spoken.samples).max() <= 1.0
    assert spoken.text == TEXT


def test_phonemes_tile_the_audio(spoken: Speech) -> None:
    phonemes = spoken.phonemes
    assert len(phonemes) > 40
    assert phonemes[0].start_s == 0.0
    assert phonemes[-1].end_s == pytest.approx(spoken.duration_s)
    for phoneme, following in zip(phonemes, phonemes[1:]):
        assert phoneme.start_s < phoneme.end_s == following.start_s
    assert all(p.symbol and not p.symbol.startswith(("'", ",")) for p in phonemes)
    # Pauses are merged, never adjacent.
    assert not any(a.symbol == b.symbol == PAUSE for a, b in zip(phonemes, phonemes[1:]))


def test_loud_in_phonemes_silent_in_pauses(spoken: Speech) -> None:
    sounds = [p for p in spoken.phonemes if p.symbol != PAUSE]
    pauses = [p for p in spoken.phonemes if p.symbol == PAUSE]
    # The sentence break and the trailing pause at least.
    assert len(pauses) >= 2 and spoken.phonemes[-1].symbol == PAUSE
    assert spoken.phonemes[-1].end_s - spoken.phonemes[-1].start_s > 0.2
    for pause in pauses:
        assert _rms(spoken, pause.start_s, pause.end_s) < 1e-3
    loud = [_rms(spoken, p.start_s, p.end_s) > 0.005 for p in sounds]
    assert np.mean(loud) > 0.95
    vowel_rms = [_rms(spoken, p.start_s, p.end_s) for p in sounds if p.symbol in {"oU", "u:", "A:", "aU", "eI"}]
    assert len(vowel_rms) >= 5 and min(vowel_rms) > 0.05


def test_deterministic_regardless_of_history() -> None:
    first = synthesize("Bob moved the blue boat.", Voice(variant="m3"))
    # espeak-ng keeps pitch-flutter state across utterances; other calls must not change the next one.
    synthesize("Something else entirely, at a different speed.", Voice(variant="f2", words_per_minute=250))
    second = synthesize("Bob moved the blue boat.", Voice(variant="m3"))
    assert np.array_equal(first.samples, second.samples)
    assert first.phonemes == second.phonemes


def test_longer_text_gives_longer_audio() -> None:
    short = synthesize("Hello there.")
    long = synthesize("Hello there. My father moved the blue boat to the warm sea every morning.")
    assert long.duration_s > short.duration_s + 2.0
    assert len(long.phonemes) > 2 * len(short.phonemes)


def test_speaking_rate_scales_duration() -> None:
    slow = synthesize(TEXT, Voice(words_per_minute=120))
    fast = synthesize(TEXT, Voice(words_per_minute=220))
    assert 1.5 < slow.duration_s / fast.duration_s < 2.2  # nominally 220 / 120 = 1.83
    assert [p.symbol for p in slow.phonemes] == [p.symbol for p in fast.phonemes]


def test_variant_and_pitch_change_the_voice(spoken: Speech) -> None:
    variants = voice_variants()
    assert {"f3", "m3", "klatt"} <= set(variants) and variants == sorted(variants)
    female = synthesize(TEXT, Voice(variant="f3"))
    higher = synthesize(TEXT, Voice(pitch=80))
    for other in (female, higher):
        assert len(other.samples) != len(spoken.samples) or not np.array_equal(other.samples, spoken.samples)
    assert [p.symbol for p in female.phonemes] == [p.symbol for p in spoken.phonemes]


def test_bilabials_are_reported() -> None:
    symbols = [p.symbol for p in synthesize("mama papa").phonemes]
    assert symbols.count("m") == 2 and symbols.count("p") == 2


def test_rejects_bad_voices() -> None:
    with pytest.raises(ValueError, match="variant"):
        synthesize("hello", Voice(variant="no-such-variant"))
    with pytest.raises(ValueError, match="no voice"):
        synthesize("hello", Voice(language="xx-nowhere"))
    with pytest.raises(ValueError, match="words_per_minute"):
        Voice(words_per_minute=20)


def test_unloadable_library_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech.espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    with pytest.raises(RuntimeError, match="/nonexistent/libespeak-ng.so"):
        synthesize("hello")


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_works_in_worker_processes(spoken: Speech, method: str) -> None:
    texts = [TEXT, "mama papa", TEXT]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(synthesize, texts)
    assert np.array_equal(results[0].samples, spoken.samples)
    assert np.array_equal(results[2].samples, spoken.samples)
    assert results[0].phonemes == spoken.phonemes
    assert np.array_equal(results[1].samples, synthesize("mama papa").samples)


def test_build_phonemes_fills_gaps_and_merges_pauses() -> None:
    events = [
        speech._PhonemeEvent("'a", 100),
        speech._PhonemeEvent("_:", 300),
        speech._PhonemeEvent("_", 300),  # zero length: dropped
        speech._PhonemeEvent("_", 350),  # adjacent pause: merged
        speech._PhonemeEvent(",m", 500),
    ]
    phonemes = speech._build_phonemes(events, num_samples=1000, speech_end=800, sample_rate=1000)
    assert phonemes == (
        Phoneme("_", 0.0, 0.1),
        Phoneme("a", 0.1, 0.3),
        Phoneme("_", 0.3, 0.5),
        Phoneme("m", 0.5, 0.8),
        Phoneme("_", 0.8, 1.0),
    )


def test_sentences_are_deterministic_and_sized() -> None:
    text = random_sentences(np.random.default_rng(7), target_seconds=10.0, words_per_minute=150)
    assert text == random_sentences(np.random.default_rng(7), target_seconds=10.0, words_per_minute=150)
    assert text != random_sentences(np.random.default_rng(8), target_seconds=10.0, words_per_minute=150)
    assert text.endswith(".") and text[0].isupper()
    assert abs(len(text.split()) - 25) <= 2
    assert random_sentences(np.random.default_rng(0), 0.1, 150).endswith(".")


def test_sentences_cover_mouth_shapes_and_duration() -> None:
    wpm = 160
    text = random_sentences(np.random.default_rng(3), target_seconds=30.0, words_per_minute=wpm)
    utterance = synthesize(text, Voice(words_per_minute=wpm))
    symbols = {p.symbol for p in utterance.phonemes}
    bilabial, labiodental, rounded, spread = {"p", "b", "m"}, {"f", "v"}, {"u:", "oU", "w"}, {"i:", "i"}
    assert bilabial | labiodental | rounded | spread <= symbols
    assert {"A:", "aa", "a"} & symbols  # open vowels
    assert 22.0 < utterance.duration_s < 40.0
