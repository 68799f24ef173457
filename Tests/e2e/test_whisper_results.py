"""`acm-serve transcribe --json` and acm_tools.whisper_results (WER against compute through the Swift engine) on
the Whisper fixture clips: the dense model's transcripts must be CTranslate2's (the fixtures), in the manifest's
order across batches; the ACM model's fractions must follow the policy; the page must be written from them."""
import json
import os
import subprocess

import pytest

from acm_tools import whisper_results
from acm_tools.wer import corpus_wer
from acm_tools.whisper_ref import load_audio

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures')
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))
DENSE = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en')
ACM = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en-acm')
FAMILIES = ['espeak-ng', 'flite', 'piper']


@pytest.fixture(scope='module')
def fixture_manifest(tmp_path_factory):
    """The first six fixture clips as a speech-corpus manifest (voice families assigned in turn) -> (path, clips)."""
    for path, what in ((BIN, 'swift build -c release'), (DENSE, 'make whisper-model'), (ACM, 'make whisper-model')):
        assert os.path.exists(path), f'{path} is missing: run {what}'
    with open(os.path.join(FIXTURES, 'clips.json')) as f:
        clips = json.load(f)[:6]
    d = tmp_path_factory.mktemp('manifest')
    path = d / 'val.jsonl'
    with open(path, 'w') as f:
        for i, c in enumerate(clips):
            file = os.path.join(FIXTURES, c['file'])
            f.write(json.dumps(dict(id=c['name'], file=file, text=c['text_spoken'],
                                    seconds=len(load_audio(file)) / 16000, voice=f'v{i}', family=FAMILIES[i % 3],
                                    augmentation=dict(noise=None, reverb=None))) + '\n')
    return str(path), clips


def test_json_lines_are_the_text_output():
    """Should print, under --json, the transcript, ids and compute fraction that the text output prints."""
    wav = os.path.join(FIXTURES, 'clips', 'flite_slt_stella.wav')
    args = [BIN, 'transcribe', '--model', ACM, '--audio', wav, '--budget', '0.5']
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    line = json.loads(subprocess.run(args + ['--json'], capture_output=True, text=True, check=True).stdout)
    assert line['input'] == wav
    assert text[0] == f'{wav}: {line["text"]}'
    assert text[1] == f'  tokens: {line["tokens"]}'
    assert text[2] == f'  compute fraction: {line["compute_fraction"]:.4f}'
    assert 0 < line['compute_fraction'] <= 0.5


def test_measure_and_page(fixture_manifest, tmp_path, monkeypatch):
    """Should transcribe every clip under every policy in the manifest's order (batches of 4: the clips cross a
    batch edge), give the dense model CTranslate2's fixture transcripts, keep each clip's fraction under its
    cap and at f for uniform f (k = f·N), score the WER, and write the page and the plot."""
    path, clips = fixture_manifest
    policies = [p for p in whisper_results.policies if p[0] in ('dense', 'full', 'auto', 'cap 0.5', 'cap 0.25',
                                                                 'uniform 0.25', 'uniform 0.5')]
    monkeypatch.setattr(whisper_results, 'policies', policies)
    monkeypatch.setattr(whisper_results, 'joined_seconds', 12.0)  # the six clips (2-5 s) make a few recordings
    # three policies on the joined recordings: each is an engine run over every recording
    monkeypatch.setattr(whisper_results, 'joined_policies', ['dense', 'cap 0.5', 'uniform 0.25'])
    args = type('Args', (), dict(manifest=path, dense=DENSE, model=ACM, bin=BIN, batch=4,
                                 joined_dir=str(tmp_path / 'joined')))
    res = whisper_results.measure(args)
    p = res['policies']
    assert list(p) == [name for name, _, _ in policies]
    assert [t.strip() for t in p['dense']['texts']] == [c['ct2']['text'].strip() for c in clips]
    assert p['dense']['tokens'] == [c['ct2']['ids'] for c in clips]
    want = corpus_wer([c['text_spoken'] for c in clips], p['dense']['texts']).wer
    assert p['dense']['wer']['all']['wer'] == pytest.approx(want, abs=1e-4)
    assert p['dense']['wer_vs_dense'] == 0
    assert p['full']['fraction'] == pytest.approx(1.0)
    assert p['uniform 0.25']['fraction'] == pytest.approx(0.25) and p['uniform 0.5']['fraction'] == pytest.approx(0.5)
    n = whisper_results.num_learners(ACM)
    assert p['uniform 0.25']['options'] == ['--uniform-k', str(n // 4)]
    assert p['cap 0.5']['max_fraction'] <= 0.5 + 1e-9 and p['cap 0.25']['max_fraction'] <= 0.25 + 1e-9
    assert 0 < p['auto']['fraction'] <= 1

    # by length: every clip in one group, each group's WER its clips'
    groups = res['by_length']
    assert sum(g['clips'] for g in groups.values()) == len(clips)
    for name, lo, hi in whisper_results.length_groups:
        idx = [i for i in range(len(clips)) if lo <= len(load_audio(os.path.join(FIXTURES, clips[i]['file']))) / 16000 < hi]
        if idx:
            want = corpus_wer([clips[i]['text_spoken'] for i in idx], [p['cap 0.5']['texts'][i] for i in idx]).wer
            assert groups[name]['cap 0.5'] == pytest.approx(want, abs=1e-4)
    # joined: the clips in order, within the window, transcribed under the joined policies
    joined = res['joined']
    recordings = sorted((tmp_path / 'joined').glob('*.wav'))
    assert joined['recordings'] == len(recordings) >= 2
    assert all(s <= 12.0 + 1e-3 for s in joined['seconds'])
    assert [c for r in joined['clips'] for c in r] == [c['name'] for c in clips]
    assert list(joined['policies']) == [n for n, _, _ in policies if n in whisper_results.joined_policies]
    assert joined['policies']['cap 0.5']['fraction'] <= 0.5 + 1e-9
    assert all(len(r['texts']) == len(recordings) for r in joined['policies'].values())

    page, svg = tmp_path / 'results.md', tmp_path / 'results.svg'
    whisper_results.write_page(res, None, str(page), str(svg))
    text = page.read_text()
    assert whisper_results.wer_table(res) in text and whisper_results.goal_table(res) in text
    assert whisper_results.length_table(res) in text and whisper_results.joined_table(res) in text
    assert 'Run `make bench-whisper`' in text
    assert svg.read_text().lstrip().startswith('<?xml')


def test_speed_table():
    """Should give each engine's encoder time against CTranslate2's and our dense one's, and its decoder time
    per token against CTranslate2's, from whisper_bench's JSON; nothing without the ACM model's rows."""
    def row(encoder, per_token, fraction=None):
        return dict(encoder_median=encoder, decoder_per_token_median=per_token, compute_fraction=fraction)
    results = {'acm-serve': row(0.2, 0.003), 'CTranslate2 fp32': row(0.25, 0.004), 'PyTorch': row(0.4, None)}
    bench = dict(results={'30 s': results})
    assert whisper_results.speed_table(bench) is None
    results['acm-serve ACM, cap 0.5'] = row(0.15, 0.003, 0.5)
    lines = whisper_results.speed_table(bench).splitlines()
    assert len(lines) == 5 and not any('PyTorch' in line for line in lines)
    assert lines[2] == '| acm-serve | – | 0.200 | 0.80 | 1.00 | 3.00 | 0.75 |'
    assert lines[4] == '| acm-serve ACM, cap 0.5 | 0.500 | 0.150 | 0.60 | 0.75 | 3.00 | 0.75 |'
