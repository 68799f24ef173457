"""The Whisper speech fixtures: the reference transcribes every clip as CTranslate2 does, and the committed
fixtures are what a fresh run of the generator writes."""
import json
import os

import numpy as np
import pytest

from acm_tools import whisper_fixtures as wf
from regeneration import tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = os.path.join(REPO, wf.out)


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    """(directory, clips.json listing) of a fresh run of the generator."""
    out = tmp_path_factory.mktemp('whisper') / 'fixtures'
    wf.main(['--out', str(out), '--model', os.path.join(REPO, wf.model_dir), '--ct2', os.path.join(REPO, wf.ct2_dir)])
    with open(out / 'clips.json') as f:
        return out, json.load(f)


def test_reference_transcribes_as_ctranslate2(generated):
    """Should find the reference's greedy token ids and text equal to CTranslate2's on every clip, 12 or more,
    2 to 5 s long, one or more of them 22050 Hz stereo."""
    _, listing = generated
    assert len(listing) >= 12
    for c in listing:
        assert c['reference'] == c['ct2'], c['name']
        assert len(c['ct2']['ids']) >= 4 and 2 <= c['seconds'] <= 5, c['name']
    assert any(c['sample_rate'] == 22050 and c['channels'] == 2 for c in listing)
    assert all(c['sample_rate'] == 16000 and c['channels'] == 1 for c in listing if c['sample_rate'] != 22050)
    print(f'{len(listing)} clips, reference == CTranslate2 on all')


def test_committed_fixtures_match_the_generator(generated):
    """Should find the committed fixtures byte-identical to a fresh run, except CTranslate2's encoder output, which
    depends on the CPU's kernels and is compared to 1e-4 of its largest value (regenerate with
    `make whisper-fixtures` if the tool changed on purpose)."""
    out, _ = generated
    fresh, committed = tree(out), tree(COMMITTED)
    assert sorted(committed) == sorted(fresh)
    for path in fresh:
        if path.startswith('encoder_'):
            a, b = np.load(os.path.join(COMMITTED, path)), np.load(os.path.join(out, path))
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), path
        else:
            assert committed[path] == fresh[path], f'{path} drifted from acm_tools.whisper_fixtures'


def test_fixture_arrays_and_size():
    """Should hold float32 [80, 3000] log-mels, a float32 [300, 384] encoder slice, and stay under 4 MB."""
    names = sorted(os.listdir(COMMITTED))
    assert [n for n in names if n.startswith('logmel_')] == sorted(f'logmel_{c}.npy' for c in wf.logmel_clips)
    for c in wf.logmel_clips:
        x = np.load(os.path.join(COMMITTED, f'logmel_{c}.npy'))
        assert x.dtype == np.float32 and x.shape == (80, 3000)
    e = np.load(os.path.join(COMMITTED, f'encoder_{wf.encoder_clip}.npy'))
    assert e.dtype == np.float32 and e.shape == (wf.encoder_rows, 384)
    assert sum(len(b) for b in tree(COMMITTED).values()) < 4_000_000
