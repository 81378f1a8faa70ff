"""Deterministic English sentences of a requested spoken length.

A tiny grammar over a few hundred common words. The vocabulary is picked so
that every mouth shape shows up often: bilabials (p, b, m), labiodentals
(f, v), rounded vowels (moon, boat, wall, water), open vowels (father, car,
hot), spread vowels (tree, see, key), dentals (the, teeth) and so on.
"""

from __future__ import annotations

import numpy as np

_NAMES = (
    "Bob", "Pam", "Mary", "Paul", "Maya", "Ben", "Mike", "Fay", "Vera", "Owen",
    "Ruth", "Luke", "Eve", "Tom", "Anna", "Joe", "Rose", "Sue", "Max", "Olive",
    "Peter", "Bella", "Victor", "Fiona", "Walter", "Molly", "Arthur", "Lee",
)  # fmt: skip

_PRONOUNS = ("I", "We", "You", "They", "She", "He")

_DETERMINERS = ("the", "a", "my", "your", "our", "his", "her", "their", "this", "that", "one", "every")

_ADJECTIVES = (
    "big", "small", "warm", "cool", "blue", "green", "red", "yellow", "brown", "old",
    "new", "young", "happy", "quiet", "loud", "soft", "round", "smooth", "bright", "dark",
    "heavy", "tiny", "huge", "cheap", "deep", "sweet", "free", "famous", "funny", "gentle",
    "proper", "purple", "pink", "busy", "lovely", "empty", "fresh", "brave", "calm", "clean",
    "cold", "dry", "easy", "fine", "full", "good", "open", "plain", "rough", "sharp",
    "strong", "thin", "wide", "wise", "smart", "shiny", "pretty", "wooden", "woolen", "narrow",
)  # fmt: skip

_NOUNS = (
    "boat", "moon", "book", "room", "phone", "apple", "father", "mother", "baby", "puppy",
    "map", "box", "ball", "bed", "bus", "cup", "pen", "pie", "pipe", "farm",
    "fish", "food", "foot", "fox", "van", "vase", "voice", "wave", "wall", "water",
    "window", "woman", "wood", "wheel", "tree", "sea", "street", "key", "cheese", "piece",
    "queen", "team", "car", "card", "garden", "heart", "park", "star", "arm", "jar",
    "shop", "top", "pot", "rock", "clock", "sock", "dog", "frog", "log", "goat",
    "road", "coat", "stone", "rope", "home", "bone", "nose", "rose", "shoe", "spoon",
    "school", "pool", "tooth", "roof", "juice", "flute", "cat", "hat", "bag", "hand",
    "lamp", "bread", "egg", "bell", "desk", "chair", "table", "kitchen", "river", "bridge",
    "hill", "ship", "house", "mouse", "cloud", "tower", "flower", "boy", "toy", "coin",
    "letter", "paper", "picture", "movie", "museum", "umbrella", "oven", "feather", "valley", "village",
)  # fmt: skip

_TRANSITIVE = (
    "found", "moved", "bought", "brought", "fixed", "opened", "painted", "pushed", "pulled", "washed",
    "watched", "carried", "dropped", "filled", "followed", "held", "kept", "left", "liked", "loved",
    "made", "met", "missed", "needed", "picked", "saw", "showed", "took", "threw", "used",
    "wanted", "warmed", "visited", "baked", "borrowed", "cooked", "covered", "forgot", "polished", "wrapped",
)  # fmt: skip

_INTRANSITIVE = (
    "walked", "waited", "laughed", "smiled", "swam", "ran", "jumped", "slept", "sat", "stood",
    "stopped", "worked", "talked", "played", "arrived", "danced", "rested", "shouted", "whispered", "hummed",
    "paused", "wandered", "returned", "moved", "floated", "waved", "hopped", "marched",
)  # fmt: skip

_PREPOSITIONS = ("to", "from", "by", "near", "behind", "beside", "under", "over", "into", "past", "toward", "with")

_ADVERBS = (
    "again", "today", "later", "outside", "away", "upstairs", "together", "early", "slowly", "quickly",
    "softly", "loudly", "quietly", "happily", "carefully", "gently", "proudly", "calmly", "twice", "often",
)  # fmt: skip

_SLOTS: dict[str, tuple[str, ...]] = {
    "name": _NAMES,
    "pron": _PRONOUNS,
    "det": _DETERMINERS,
    "adj": _ADJECTIVES,
    "noun": _NOUNS,
    "vt": _TRANSITIVE,
    "vi": _INTRANSITIVE,
    "prep": _PREPOSITIONS,
    "adv": _ADVERBS,
}

# Each template is one sentence; a bare word (not a slot name) is used literally.
# Lengths range from 3 to 9 words so the last sentence can fill the target closely.
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("det", "noun", "vi"),
    ("name", "vi", "adv"),
    ("name", "vt", "det", "noun"),
    ("det", "adj", "noun", "vi", "adv"),
    ("name", "vi", "prep", "the", "noun"),
    ("pron", "vt", "det", "adj", "noun", "adv"),
    ("det", "adj", "noun", "vt", "det", "adj", "noun"),
    ("pron", "vt", "det", "noun", "and", "det", "noun"),
    ("name", "vt", "det", "adj", "noun", "prep", "det", "noun"),
    ("name", "and", "name", "vt", "det", "noun", "prep", "the", "noun"),
)

_VOWELS = "aeiouAEIOU"


def random_sentences(rng: np.random.Generator, target_seconds: float, words_per_minute: int) -> str:
    """Sentences that take about `target_seconds` to say at `words_per_minute`."""
    target_words = max(1, round(target_seconds * words_per_minute / 60))
    sentences: list[list[str]] = []
    words_so_far = 0
    while words_so_far < target_words:
        template = _pick_template(rng, target_words - words_so_far, first=not sentences)
        if template is None:
            break
        sentence = _fill(rng, template)
        sentences.append(sentence)
        words_so_far += len(sentence)
    return " ".join(_render(sentence) for sentence in sentences)


def _pick_template(rng: np.random.Generator, remaining: int, first: bool) -> tuple[str, ...] | None:
    """A template that fits `remaining` words, or None when stopping is closer to the target."""
    fitting = [t for t in _TEMPLATES if len(t) <= remaining]
    if fitting:
        return fitting[int(rng.integers(len(fitting)))]
    shortest = min(_TEMPLATES, key=len)
    # Overshooting by less than we would undershoot is the better approximation;
    # and there is always at least one sentence.
    if first or len(shortest) - remaining < remaining:
        return shortest
    return None


def _fill(rng: np.random.Generator, template: tuple[str, ...]) -> list[str]:
    words = []
    for slot in template:
        choices = _SLOTS.get(slot)
        words.append(choices[int(rng.integers(len(choices)))] if choices else slot)
    return _fix_articles(words)


def _fix_articles(words: list[str]) -> list[str]:
    # None of our vowel-initial words starts with a consonant sound ("a useful"), so spelling decides.
    return ["an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in _VOWELS else w for i, w in enumerate(words)]


def _render(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."
