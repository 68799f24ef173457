"""The synthetic speech corpus: a --quick run's clips and manifests, its determinism, the text split, the committed
validation list, Piper's phoneme ids and seeded noise, the augmentations, and that dense Whisper understands
the voices."""
import os
import subprocess
import wave

import numpy as np
import pytest

from acm_tools import speech_augment as sa
from acm_tools import speech_corpus as sc
from acm_tools import speech_text as st
from acm_tools import speech_voices as sv
from acm_tools.wer import corpus_wer
from regeneration import tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAL_LIST = os.path.join(REPO, 'docs', 'speech-val.tsv')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """A --quick corpus, made with one process -> its directory."""
    out = tmp_path_factory.mktemp('speech') / 'a'
    sc.main(['--quick', '--out', str(out), '--jobs', '1'])
    return out


@pytest.fixture(scope='module')
def pool():
    return st.pool()


def test_quick_manifests(quick):
    """Should write 6 clips a split, each voice family in each, every manifest field, and WAVs that are 16 kHz mono
    16-bit, as long as the manifest says, and at most 30 s."""
    for split in ['train', 'val']:
        rows = sc.read_manifest(quick / f'{split}.jsonl')
        assert len(rows) == sc.quick_clips
        assert {r['family'] for r in rows} == set(sv.FAMILIES)
        for r in rows:
            assert set(r) == {'id', 'file', 'text', 'voice', 'family', 'source', 'augmentation', 'seconds'}
            assert set(r['augmentation']) == {'rate', 'pitch_cents', 'reverb', 'noise', 'pad', 'peak_db', 'seed'}
            assert r['file'].startswith(f'{split}/') and r['text'] and sv.family(r['voice']) == r['family']
            with wave.open(str(quick / r['file'])) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                assert w.getnframes() / 16000 == pytest.approx(r['seconds'], abs=1e-3)
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2')
            assert 0.5 < r['seconds'] <= sc.max_seconds
            peak = 20 * np.log10(np.abs(pcm).max() / 32767)
            assert peak == pytest.approx(r['augmentation']['peak_db'], abs=0.01)


def test_same_seed_same_bytes_whatever_the_processes(quick, tmp_path):
    """Should write byte-identical clips and manifests with two processes as with one, and a different corpus
    for another seed."""
    sc.main(['--quick', '--out', str(tmp_path / 'b'), '--jobs', '2'])
    assert tree(quick) == tree(tmp_path / 'b')
    other = sc.plan('val', 6, seed=sc.seed + 1)
    assert [c.text for c in other] != [c.text for c in sc.plan('val', 6)]


def test_train_and_val_texts_share_no_sentence(pool):
    """Should keep every validation sentence, and every validation fortune, out of the training passages."""
    train, val = pool
    assert len(val) >= 2 * sc.val_clips and len(train) > 10 * len(val)
    assert not {p.fortune_key for p in train} & {p.fortune_key for p in val}
    train_sentences = set().union(*(st.sentence_keys(p.text) for p in train))
    for p in val:
        assert not st.sentence_keys(p.text) & train_sentences, p.text
        assert not any(c.isdigit() for c in p.text)
    for p in train + val:
        assert st.min_words <= p.words <= st.max_words and st.SPOKEN.match(p.text)


def test_plans_keep_the_split(pool):
    """Should plan training clips from training passages only, never in a held-out voice, and validation clips
    from distinct validation passages."""
    train_texts = {p.text for p in pool[0]}
    val = sc.plan('val', sc.val_clips)
    train = sc.plan('train', 3000)
    assert len({c.text for c in val}) == len(val)
    assert not {c.text for c in val} & train_texts
    assert {c.text for c in train} <= train_texts
    assert not {c.voice for c in train} & set(sc.held_out_voices)
    assert set(sc.held_out_voices) <= {c.voice for c in val}
    # more clips than passages: each passage is used before any is used again
    small = st.Passage('a b c', 'x#0', 'k'), st.Passage('d e f', 'x#1', 'l')
    assert sorted(c.text for c in sc.plan('train', 4, texts=small)) == ['a b c', 'a b c', 'd e f', 'd e f']
    # no clips of a split (`--train 0`: the validation set alone, as `make bf16-report` needs it)
    assert sc.plan('train', 0) == []


def test_committed_validation_list_matches_the_plan():
    """Should find docs/speech-val.tsv equal to the validation plan (regenerate it with
    `python -m acm_tools.speech_corpus --list-val docs/speech-val.tsv` when the plan changes on purpose)."""
    with open(VAL_LIST) as f:
        committed = f.read().splitlines()
    assert committed == sc.val_listing(sc.plan('val', sc.val_clips))
    voices = {line.split('\t')[1].split('+')[0] for line in committed[1:]}
    assert len(voices) >= 3 and len(committed) - 1 >= 200


def test_clean_fortunes():
    """Should drop attributions and fortunes that do not read aloud, and cut long sentences at clauses."""
    assert st.clean('A penny saved is a penny earned.\n\t\t-- Benjamin Franklin') == \
        'A penny saved is a penny earned.'
    assert st.clean('"Be vewy quiet." -- Elmer Fudd') == '"Be vewy quiet."'
    assert st.clean('Mail me at a@b.c today please') is None
    assert st.clean('Accuracy, n.:\n\tThe vice of being right') == 'The vice of being right'
    assert st.clean('Q: Why did it cross?\nA: To get over.') is None
    assert st.clean('THIS IS ALL SHOUTING, ALL OF IT') is None
    assert st.clean('Two words') is None
    long = ', '.join(['one two three four five'] * 12) + '.'
    pieces = st.sentences(long)
    assert len(pieces) == 2 and all(len(p.split()) <= st.max_words for p in pieces)
    assert ' '.join(pieces) == long


def test_espeak_clauses_and_piper_ids():
    """Should phonemize clause by clause as `espeak-ng --ipa` does, add Piper's punctuation, and lay ids out as
    ^ _ (p _)* $."""
    ph = sv.ESpeakPhonemizer('en-us')
    text = "Hello there, world. How are you? I'm fine; thanks: it's Dr. Smith's (eventually)!"
    cli = subprocess.run(['espeak-ng', '-q', '--ipa', '-v', 'en-us', text], check=True, capture_output=True,
                         text=True).stdout.split('\n')
    clauses = ph.clauses(text)
    assert [p for p, _ in clauses] == [line.strip() for line in cli if line.strip()]
    assert [m for _, m in clauses] == [',', '.', '?', ';', ':', '.', '!']
    sentences = ph.sentences('Hello there, world. How are you?')
    assert len(sentences) == 2
    assert sentences[0].endswith('wˈɜːld.') and ', ' in sentences[0] and sentences[1].endswith('?')
    piper = sv.Piper()
    ids = piper.ids('ab')
    m = piper.id_map
    assert ids == [m['^'][0], 0, m['a'][0], 0, m['b'][0], 0, m['$'][0]]


def test_piper_noise_comes_from_the_seed():
    """Should give the same audio for the same seed and different audio for another, from a graph with no
    random node left."""
    import onnx
    model, names = sv.seeded_graph(sv.piper_files()[0])
    assert names == ['noise_0', 'noise_1']
    assert not [n for n in onnx.load_from_string(model).graph.node if n.op_type.startswith('Random')]
    piper = sv.Piper()
    a, b, c = (piper('A short test.', 1.0, s)[0] for s in (1, 1, 2))
    assert np.array_equal(a, b) and not (len(a) == len(c) and np.array_equal(a, c))


def test_augmentations():
    """Should reach the asked SNR and direct-to-reverberant ratio, shift pitch by the cents asked, and give
    pink noise 10 dB less power per decade."""
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    tone = np.sin(2 * np.pi * 440 * t)
    noisy = sa.add_noise(tone, 'white', 12.0, rng)
    assert 10 * np.log10(np.mean(tone ** 2) / np.mean((noisy - tone) ** 2)) == pytest.approx(12.0, abs=0.1)
    h = sa.room_impulse(0.5, 6.0, 0.01, rng)
    assert h[0] == 1 and 10 * np.log10(1 / np.sum(h[1:] ** 2)) == pytest.approx(6.0)
    up = sa.pitch_shift(tone, 1200)
    assert abs(len(up) - len(tone)) < 800
    spectrum = np.abs(np.fft.rfft(up[4000:-4000]))
    assert np.argmax(spectrum) * 16000 / len(up[4000:-4000]) == pytest.approx(880, abs=5)
    pink = np.abs(np.fft.rfft(sa.coloured_noise(1 << 16, 'pink', rng))) ** 2
    f = np.fft.rfftfreq(1 << 16, 1 / 16000)
    band = lambda lo: pink[(f >= lo) & (f < 2 * lo)].mean()  # noqa: E731
    assert 10 * np.log10(band(100) / band(1000)) == pytest.approx(10, abs=1)


# Dense Whisper's WER on 4 clean validation clips per family may not exceed these (on all 300 validation clips,
# the clean ones score 45%, 13% and 8%: docs/speech-data.md).
DENSE_WER_LIMITS = {'espeak-ng': 0.6, 'flite': 0.25, 'piper': 0.15}


def test_dense_whisper_understands_each_family():
    """Should find dense Whisper tiny.en's WER on 4 validation clips per family, synthesised at rate 1 without
    augmentation, within the family's limit (a voice it cannot follow would make poor data)."""
    from acm_tools.speech_wer import ct2_transcriber
    from acm_tools.whisper_ref import to_mono_16k
    transcribe = ct2_transcriber(os.path.join(REPO, 'build/whisper/ct2'))
    synth = sv.Synthesizer()
    for fam in sv.FAMILIES:
        clips = [c for c in sc.plan('val', 12) if c.family == fam]
        audio = [to_mono_16k(a[:, None], sr) for a, sr in
                 (synth(c.voice, c.text, 1.0, c.augmentation['seed']) for c in clips)]
        e = corpus_wer([c.text for c in clips], transcribe(audio))
        print(f'{fam}: WER {e.wer:.3f} over {e.ref_words} words')
        assert e.wer <= DENSE_WER_LIMITS[fam], fam
