"""The bundled ACM Whisper (build/models/whisper-tiny.en-acm) under compute budgets, through the Swift engine
(`acm-serve transcribe --json`) against the PyTorch reference (acm_tools.whisper_ref), on the fixture clips: the
same tokens and the same compute fraction. The clips are a few seconds of speech in a 30-s window, so a cap serves
their audio's frames before the padding's (docs/compute-budget.md, "Audio before padding"); the reference's old
rule (one ranking of the whole window) gives other tokens on most of them, which this test checks too, so that it
can tell the two rules apart."""
import glob
import json
import os
import subprocess

import pytest
import torch

from acm_tools import whisper_ref as wr

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))
ACM = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en-acm')
CLIPS = sorted(glob.glob(os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', '*.wav')))
BUDGETS = [0.5, 0.375]


@pytest.fixture(scope='module')
def reference():
    for path, what in ((BIN, 'swift build -c release'), (ACM, 'make whisper-model')):
        assert os.path.exists(path), f'{path} is missing: run {what}'
    torch.set_num_threads(2)
    return wr.Whisper(ACM)


def engine(beta):
    """-> [{'text', 'tokens', 'compute_fraction'}] for CLIPS under cap beta, in one batch."""
    args = [BIN, 'transcribe', '--model', ACM, '--json', '--budget', str(beta)]
    for clip in CLIPS:
        args += ['--audio', clip]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def fraction(model, policy):
    """The compute fraction of a transcription from the reference's recorded choices: every ACM has the same
    shape here, so it is the learners run over the learners possible."""
    shapes = {(a.cfg.num_learners, a.cfg.learner_dim) for a in model.acms.values()}
    assert len(shapes) == 1
    n = shapes.pop()[0]
    ks = [k for calls in policy.choices.values() for k in calls]
    return sum(int(k.sum()) for k in ks) / (n * sum(k.numel() for k in ks))


@pytest.mark.parametrize('beta', BUDGETS)
def test_engine_matches_reference_under_a_cap(reference, beta, monkeypatch):
    """Should give each clip the reference's tokens and compute fraction (within 1e-9) under cap beta, and the
    fraction never above it; under the lowest cap, the whole-window ranking must give other tokens on at least a
    third of the clips (one cap shows the test tells the rules apart; each costs a reference transcription a clip)."""
    assert len(CLIPS) >= 9
    results = engine(beta)
    assert [r['input'] for r in results] == CLIPS
    contrast = beta == min(BUDGETS)  # also run the rule before, to show the test tells the two apart
    differs = 0
    for clip, got in zip(CLIPS, results):
        audio = wr.load_audio(clip)
        policy = wr.Policy('cap', beta=beta)
        ids, _ = reference.transcribe(audio, policy=policy)
        name = os.path.basename(clip)
        assert got['tokens'] == ids, name
        assert abs(got['compute_fraction'] - fraction(reference, policy)) < 1e-9, name
        assert got['compute_fraction'] <= beta + 1e-9, name
        if contrast:  # the rule before: one ranking of the window, audio and padding alike
            with monkeypatch.context() as m:
                m.setattr(wr, 'content_frames', lambda mel: None)
                whole, _ = reference.transcribe(audio, policy=wr.Policy('cap', beta=beta))
            differs += whole != ids
    if contrast:
        assert differs >= len(CLIPS) / 3, f'the two rules differ on only {differs} of {len(CLIPS)} clips'
