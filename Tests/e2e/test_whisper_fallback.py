"""Whisper's temperature fallback (docs/whisper.md#decoding) through the Swift engine (`acm-serve transcribe --json`)
against the PyTorch reference (acm_tools.whisper_ref) on the fixture clips: the same sampled tokens at a temperature,
and the same window kept when every greedy decoding fails a check and the fallback runs to its end."""
import glob
import json
import os
import subprocess

import pytest
import torch

from acm_tools import whisper_ref as wr

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))
DENSE = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en')
CLIPS = sorted(glob.glob(os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', '*.wav')))


@pytest.fixture(scope='module')
def reference():
    for path, what in ((BIN, 'swift build -c release'), (DENSE, 'make whisper-model')):
        assert os.path.exists(path), f'{path} is missing: run {what}'
    torch.set_num_threads(2)
    return wr.Whisper(DENSE)


def engine(model, clips, *options):
    """-> [{'input', 'text', 'tokens', 'temperature', 'avg_logprob', 'compression_ratio'}] for clips, in one batch."""
    args = [BIN, 'transcribe', '--model', model, '--json', *options]
    for clip in clips:
        args += ['--audio', clip]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert [r['input'] for r in results] == clips
    return results


def test_sampling_matches_reference(reference):
    """Should draw each clip's tokens at temperature 0.6 as the reference does with the same noise, with the same
    average log-probability (within 2e-3) and compression ratio; and not the greedy tokens on every clip."""
    assert len(CLIPS) >= 9
    results = engine(DENSE, CLIPS, '--temperature', '0.6', '--no-fallback')
    changed = False
    for clip, got in zip(CLIPS, results):
        mel = wr.log_mel(wr.load_audio(clip), reference.cfg.num_mel_bins)
        want = reference.decode_window(mel, temperatures=[0.6])
        name = os.path.basename(clip)
        assert got['tokens'] == want['tokens'], name
        assert got['temperature'] == pytest.approx(0.6) and want['temperature'] == 0.6, name
        assert got['attempts'] == want['attempts'] == 1, name
        assert got['avg_logprob'] == pytest.approx(want['avg_logprob'], abs=2e-3), name
        assert got['compression_ratio'] == pytest.approx(want['compression_ratio'], rel=1e-12), name
        changed = changed or got['tokens'] != reference.greedy(mel)  # one clip shows it: greedy costs a decode
    assert changed, 'sampling at 0.6 gave the greedy tokens on every clip'


def test_fallback_to_the_end_matches_reference(reference, tmp_path, monkeypatch):
    """With a log-probability threshold no decoding meets (0), every window runs the whole fallback and keeps its
    likeliest attempt that does not repeat: the engine and the reference should keep the same tokens, decoded at the
    same temperature (or at one whose draw gave the same tokens)."""
    model = tmp_path / 'whisper-fallback'
    model.mkdir()
    for name in ('model.safetensors', 'tokenizer.json'):
        os.symlink(os.path.join(DENSE, name), model / name)
    with open(os.path.join(DENSE, 'config.json')) as f:
        config = json.load(f)
    config['generation']['logprob_threshold'] = 0.0
    (model / 'config.json').write_text(json.dumps(config))
    monkeypatch.setattr(reference.gen, 'logprob_threshold', 0.0)
    clips = CLIPS[:6]
    results = engine(str(model), clips)
    for clip, got in zip(clips, results):
        mel = wr.log_mel(wr.load_audio(clip), reference.cfg.num_mel_bins)
        want = reference.decode_window(mel)
        name = os.path.basename(clip)
        assert got['tokens'] == want['tokens'], name
        assert got['avg_logprob'] == pytest.approx(want['avg_logprob'], abs=2e-3), name
        assert got['attempts'] == want['attempts'] == 6, name
        if got['temperature'] != pytest.approx(want['temperature']):  # a tie: two draws gave the same tokens
            assert reference.decode_window(mel, temperatures=[got['temperature']])['tokens'] == got['tokens'], name
    assert any(r['temperature'] > 0 for r in results), 'greedy was the likeliest on every clip'
