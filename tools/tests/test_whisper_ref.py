"""The PyTorch Whisper reference: its NumPy log-mel against torch.stft and an independent filter bank, its
encoder against CTranslate2's, its KV cache against a full forward, and its detokeniser."""
import os

import numpy as np
import pytest
import torch

from acm_tools import whisper_fixtures as wf
from acm_tools import whisper_ref as wr
from acm_tools import whisper_tiny_en

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, wf.out)
CLIPS = ['flite_slt_stella', 'espeak_us_stereo', 'espeak_us_m3_fast']  # 16 kHz flite, 22050 Hz stereo, espeak


@pytest.fixture(scope='module')
def model():
    torch.set_num_threads(1)
    return wr.Whisper(os.path.join(REPO, whisper_tiny_en.out))


def audio(name):
    return wr.load_audio(os.path.join(FIXTURES, 'clips', f'{name}.wav'))


def test_mel_scale():
    """Should be Slaney's scale: linear to 1 kHz (15 mel), then 27 mel per factor 6.4, and invertible."""
    assert np.allclose(wr.hz_to_mel([0, 500, 1000, 6400]), [0, 7.5, 15, 42])
    f = np.linspace(0, 8000, 101)
    assert np.allclose(wr.mel_to_hz(wr.hz_to_mel(f)), f)


def test_mel_filters_are_slaney_triangles():
    """Should equal triangles drawn another way (np.interp between band edges), each scaled to 2 / its width."""
    fb = wr.mel_filters(80)
    assert fb.shape == (80, 201)
    edges = wr.mel_to_hz(np.linspace(0, wr.hz_to_mel(8000.0), 82))
    freqs = np.arange(201) * 16000 / 400
    for i in range(80):
        tri = np.interp(freqs, edges[i:i + 3], [0, 1, 0], left=0, right=0) * 2 / (edges[i + 2] - edges[i])
        np.testing.assert_allclose(fb[i], tri, rtol=0, atol=1e-12)


@pytest.mark.parametrize('name', CLIPS)
def test_log_mel_numpy_matches_torch_stft(name):
    """Should agree within 1e-4 with the torch.stft float32 computation openai-whisper uses, on speech."""
    a = audio(name)
    ours, theirs = wr.log_mel(a), wr.log_mel_torch(a)
    assert ours.shape == (80, 3000) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-4
    assert ours.max() - ours.min() == pytest.approx(2.0, abs=1e-6)  # the 8-decade clamp, / 4


def test_log_mel_pads_to_30_seconds_first():
    """Should pad short audio with zeros and trim long audio to 480000 samples before the STFT."""
    a = audio('flite_slt_stella')
    padded = np.concatenate([a, np.zeros(wr.n_samples - len(a))])
    assert np.array_equal(wr.log_mel(a), wr.log_mel(padded))
    long = np.concatenate([padded, np.ones(1000)])
    assert np.array_equal(wr.log_mel(long), wr.log_mel(padded))


def test_content_frames():
    """Should count the encoder frames that read a column of audio: frame t reads columns 2t - 2 .. 2t + 2, and
    padding is the trailing columns at the least value in every bin."""
    rng = np.random.default_rng(0)
    for columns, frames in [(0, 0), (1, 2), (2, 2), (3, 3), (4, 3), (701, 352), (2998, 1500), (2999, 1500),
                            (3000, 1500)]:
        mel = np.full((80, 3000), -0.5, dtype=np.float32)
        mel[:, :columns] = rng.uniform(-0.5, 1.5, (80, columns))
        mel[3, :columns] = 1.0  # a bin above the least value in every column of audio
        assert wr.content_frames(mel) == frames, columns
    # columns at the least value in every bin are audio when audio follows them: here columns 0 .. 10
    mel = np.full((80, 3000), -0.5, dtype=np.float32)
    mel[:, 10] = 1.0
    assert wr.content_frames(mel) == 7
    # speech: its padding starts where the STFT's window has no sample of it
    a = audio('flite_slt_stella')
    columns = -(-(len(a) + wr.n_fft // 2) // wr.hop_length)  # ceil: the first window wholly in the zeros
    assert abs(wr.content_frames(wr.log_mel(a)) - ((columns + 1) // 2 + 1)) <= 1


@pytest.mark.parametrize('name', CLIPS[:2])
def test_encoder_matches_ctranslate2(model, name):
    """Should match CTranslate2's encoder output within 1e-3 of its largest magnitude."""
    mel = wr.log_mel(audio(name))
    ours = model.encode(mel).numpy()
    theirs = wf.CT2(os.path.join(REPO, whisper_tiny_en.ct2_dir)).encode(mel)
    assert ours.shape == theirs.shape == (1500, 384)
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f'{name}: encoder max|d| / max|ct2| = {rel:.2e}')
    assert rel <= 1e-3


def test_kv_cache_matches_full_forward(model):
    """Should give the same logits decoding token by token with the cache as for the whole sequence at once."""
    cross = model.cross_kv(model.encode(wr.log_mel(audio('flite_slt_stella'))))
    tokens = torch.tensor(model.gen.prompt + [4222, 869, 45856, 290])
    full = model.decode(tokens, cross, [])
    cache = []
    steps = [model.decode(tokens[:2], cross, cache)] + [model.decode(tokens[i:i + 1], cross, cache)
                                                         for i in range(2, len(tokens))]
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-4, atol=1e-4)
    assert cache[0][0].shape == (len(tokens), 384)


def test_detokenizer(model):
    """Should turn byte-level BPE tokens into UTF-8 text and skip special tokens."""
    tok = model.tokenizer
    vocab = {t: i for i, t in tok.tokens.items()}
    assert tok.decode([383, 2068, 7586, 21831, 50256]) == ' The quick brown fox'
    assert tok.decode([50257, vocab['Ġcaf'], vocab['Ã©'], 50362]) == ' café'


def splitmix64(seed):
    """SplitMix64's first output from seed, in Python integers (Steele, Lea and Flood 2014)."""
    z = (seed + 0x9E3779B97F4A7C15) % 2 ** 64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2 ** 64
    return z ^ (z >> 31)


def test_gumbel_noise_is_keyed_splitmix64():
    """Should be -log(-log u) of SplitMix64 keyed by milli-temperature, step and token, u from the top 53 bits + 1/2,
    as the engine's TokenSearch.gumbel (whose test checks the same first output, 0xE220A8397B1DCDAF)."""
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    for t, step, token in [(0.2, 0, 0), (0.6, 17, 50256), (1.0, 447, 3), (0.4, (1 << 20) - 1, (1 << 20) - 1)]:
        key = round(t * 1000) << 40 | step << 20 | token
        u = ((splitmix64(key) >> 11) + 0.5) * 2.0 ** -53
        assert wr.gumbel(t, step, [token])[0] == -np.log(-np.log(u))
    g = wr.gumbel(0.4, 3, np.arange(200000))
    assert abs(g.mean() - 0.5772156649) < 0.01 and abs(g.var() - np.pi ** 2 / 6) < 0.05  # standard Gumbel


def test_sample_is_gumbel_max_over_every_token():
    """Should draw what argmax(logits / T + noise) over the whole vocabulary draws, though it draws noise only for
    the tokens within gumbel_range·T of the top; and draw softmax(logits / T)'s frequencies."""
    rng = np.random.default_rng(0)
    for t in (0.2, 1.0, 3.0):
        for step in range(300):
            logits = rng.uniform(-45, 0, 1000) * t
            logits[rng.integers(1000)] = 0
            want = int(np.argmax(logits / t + wr.gumbel(t, step, np.arange(1000))))
            assert wr.sample(logits, t, step) == want
    logits = np.array([1.0, 0.2, -0.5, 0.8, -3.0])
    draws = np.bincount([wr.sample(logits, 0.5, step) for step in range(20000)], minlength=5) / 20000
    p = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    assert np.all(np.abs(draws - p) <= 4.5 * np.sqrt(p * (1 - p) / 20000) + 1e-4), (draws, p)


def test_compression_ratio():
    """Should be openai-whisper's: bytes of the stripped text over zlib's size; high for a loop, 0 for no text."""
    assert wr.compression_ratio('') == 0
    assert wr.compression_ratio(' the quick brown fox jumps over the lazy dog\n') == 43 / 50
    assert wr.compression_ratio('A-2-B-' + '1-' * 100) == 206 / 17 > 2.4
