"""Word error rate: the word alignment against hand-counted cases and a brute-force edit distance, corpus-level
pooling, empty references and hypotheses, and the normaliser's rules."""
import itertools
import random
from functools import lru_cache

import pytest

from acm_tools import wer as W


def counts(ref, hyp):
    e = W.align(ref.split(), hyp.split())
    return e.substitutions, e.deletions, e.insertions, e.ref_words


@pytest.mark.parametrize('ref, hyp, expected', [
    ('the cat sat on the mat', 'the cat sat on the mat', (0, 0, 0, 6)),
    ('the cat sat on the mat', 'the cat sat on mat', (0, 1, 0, 6)),
    ('the cat sat on the mat', 'the cat sat on the the mat', (0, 0, 1, 6)),
    ('the cat sat on the mat', 'the dog sat on the mat', (1, 0, 0, 6)),
    ('a b c d', 'a x c d e', (1, 0, 1, 4)),
    ('a b c d', 'b c d', (0, 1, 0, 4)),
    ('a b c d', '', (0, 4, 0, 4)),
    ('', 'hello world', (0, 0, 2, 0)),
    ('', '', (0, 0, 0, 0)),
    ('a', 'b c d', (1, 0, 2, 1)),  # more errors than reference words: WER 3
    ('a b', 'b a', (2, 0, 0, 2)),  # two substitutions rather than a deletion and an insertion
    ('one two three four five', 'one three four five six', (0, 1, 1, 5)),
])
def test_alignment_hand_counted(ref, hyp, expected):
    """Should count substitutions, deletions and insertions as worked out by hand."""
    assert counts(ref, hyp) == expected


def test_rates_and_empty_cases():
    """Should give errors / reference words, None for an empty reference, and above 1 when the hypothesis has
    more errors than the reference has words."""
    assert W.wer('a b c d', 'a x c d e') == 0.5
    assert W.wer('a b c d', '') == 1.0
    assert W.wer('a', 'b c d') == 3.0
    assert W.wer('', '') is None
    assert W.wer('', 'hello') is None
    assert W.edits('', 'hello').insertions == 1


def test_corpus_wer_pools_edits():
    """Should divide all edits by all reference words (1 / 5), not average the clips' rates (0.5), and count an
    empty reference's insertions."""
    assert W.corpus_wer(['a b c d', 'e'], ['a b c d', 'x']).wer == pytest.approx(0.2)
    e = W.corpus_wer(['a b c d', ''], ['a b c d', 'uh hello'])  # "uh" is a filler, "hello" an insertion
    assert (e.errors, e.ref_words, e.wer) == (1, 4, 0.25)
    with pytest.raises(ValueError):
        W.corpus_wer(['a'], [])


@lru_cache(maxsize=None)
def distance(ref, hyp):
    """Word edit distance by the textbook recursion."""
    if not ref or not hyp:
        return len(ref) + len(hyp)
    return min(distance(ref[1:], hyp[1:]) + (ref[0] != hyp[0]), distance(ref[1:], hyp) + 1,
               distance(ref, hyp[1:]) + 1)


def test_alignment_against_brute_force():
    """Should find the minimum edit count on 500 random word sequences, with S + D + I consistent with the
    lengths: len(hyp) = len(ref) - D + I."""
    rng = random.Random(0)
    for _ in range(500):
        ref = tuple(rng.choice('abcd') for _ in range(rng.randint(0, 7)))
        hyp = tuple(rng.choice('abcde') for _ in range(rng.randint(0, 7)))
        e = W.align(list(ref), list(hyp))
        assert e.errors == distance(ref, hyp), (ref, hyp)
        assert len(hyp) == len(ref) - e.deletions + e.insertions
        assert e.substitutions + e.deletions <= len(ref)


@pytest.mark.parametrize('text, expected', [
    ('Hello, World!', 'hello world'),
    ('"Quoted" -- and dashed; semi: colon?', 'quoted and dashed semi colon'),
    ("Don't you think it's Mr. Smith's?", 'do not you think it is mister smith is'),
    ("I'm sure they'll say we've won't can't", 'i am sure they will say we have will not can not'),
    ('The colour of the theatre, realised', 'the color of the theater realized'),
    ('Café naïve façade', 'cafe naive facade'),
    ('um, the [music] answer (laughs) is hmm yes', 'the answer is yes'),
    ('twenty-five', '25'),
    ('Twenty five cats and 25 dogs', '25 cats and 25 dogs'),
    ('nineteen eighty-four', '1984'),
    ('In 1984 I had $5.', 'in 1984 i had $5'),
    ('five dollars', '$5'),
    ('one oh one', '101'),
    ('oh no', 'oh no'),
    ('the twenty first century', 'the 21st century'),
    ('in the nineteen sixties', 'in the 1960s'),
    ('three point one four', '3.14'),
    ('ten percent, ten per cent, 10%', '10% 10% 10%'),
    ('three hundred and twelve', '312'),
    ('two thousand and five', '2005'),
    ('one million two hundred thousand', '1200000'),
    ('1,000 people', '1000 people'),
    ('one of them, 1 of them', 'one of them one of them'),
    ('minus five', '-5'),
    ('a hundred', 'a 100'),
    ('ninth and 9th', '9th and 9th'),
    ('', ''),
    ('...', ''),
])
def test_normalize(text, expected):
    """Should lower-case, drop punctuation, brackets and fillers, expand contractions and titles, Americanise
    common spellings, strip diacritics and write numbers as digits, as Whisper's English normaliser does."""
    assert W.normalize(text) == expected


@pytest.mark.parametrize('spoken, written', [
    ('twenty five', '25'), ('nineteen eighty four', '1984'), ('three point five', '3.5'),
    ('ten percent', '10%'), ('five dollars', '$5'), ('the sixties', "the '60s"), ("don't", 'do not'),
    ('grey colour', 'gray color'), ('Doctor Who', 'Dr. Who'),
])
def test_spoken_and_written_forms_score_zero(spoken, written):
    """Should score a transcript that writes numbers, contractions and titles differently from the reference
    as correct."""
    assert W.wer(spoken, written) == 0.0


def test_every_pair_of_forms_normalises_alike():
    """Should map every spelled-out form of a number to the same digits (no order or case dependence)."""
    forms = ['Twenty-One', 'twenty one', '21', 'TWENTY ONE']
    for a, b in itertools.combinations(forms, 2):
        assert W.normalize(a) == W.normalize(b) == '21'
