"""`make serve`'s server: config/acm-serve.json, as shipped, serves every model it names (the Fashion-MNIST ViTs,
Whisper tiny.en and its ACMized version), and the README's requests work against it."""
import json
import os
import re
import subprocess
import sys

import pytest

from harness import REPO, Server, request

CONFIG = os.path.join(REPO, 'config', 'acm-serve.json')
CLIP = os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', 'espeak_us_fox.wav')


@pytest.fixture(scope='module')
def server():
    s = Server(config_file=CONFIG)
    yield s
    s.close()


def test_every_model_ready(server):
    """Should load every model of the bundled config and report each ready."""
    with open(CONFIG) as f:
        names = list(json.load(f)['models'])
    assert {'fashion-vit-acm', 'fashion-vit-teacher', 'whisper-tiny.en', 'whisper-tiny.en-acm'} <= set(names)
    for name in names:
        status, _, body = request(server.port, 'GET', f'/v2/models/{name}/ready')
        assert status == 200, (name, body[:200])


@pytest.mark.parametrize('model, applied', [('whisper-tiny.en', False), ('whisper-tiny.en-acm', True)])
def test_transcribe_with_budget(server, model, applied):
    """Should transcribe the README's curl request on both Whisper models; only the ACM one applies the budget."""
    with open(CLIP, 'rb') as f:
        wav = f.read()
    status, _, body = request(server.port, 'POST', f'/v2/models/{model}/transcribe?compute_budget=0.5', wav,
                              {'Content-Type': 'audio/wav'}, timeout=120)
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert 'fox' in answer['text'].lower(), answer
    assert answer['compute_budget_applied'] is applied and answer['compute_budget'] == 0.5
    assert answer['compute_fraction'] <= 0.5 + 1e-9 if applied else answer['compute_fraction'] == 1.0


def readme_blocks(language):
    """The README's quick-start code blocks in `language`, from 'Then, from another shell' to 'Beyond localhost'."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    section = text[text.index('Then, from another shell'):text.index('Beyond localhost')]
    return re.findall(rf'```{language}\n(.*?)```', section, re.S)


def test_readme_commands(server):
    """Should answer the README's curl commands, run as written from the repository (only the port is this
    server's): the example shirt classified as a shirt within the budget, the example WAV transcribed by both
    Whisper models, the model metadata, the metrics."""
    [block] = readme_blocks('sh')
    commands = [line for line in block.splitlines() if line.startswith('curl ')]
    assert len(commands) == 5, commands
    answers = []
    for command in commands:
        run = subprocess.run(['bash', '-c', command.replace('localhost:8000', server.url)], cwd=REPO,
                             capture_output=True, timeout=120)
        assert run.returncode == 0, (command, run.stderr)
        answers.append(run.stdout)
    shirt = json.loads(answers[0])
    assert shirt['labels'][0]['label'] == 'Shirt' and shirt['compute_fraction'] <= 0.5 + 1e-9, shirt
    for body in answers[1:3]:
        assert 'kitchen' in json.loads(body)['text'].lower(), body
    assert json.loads(answers[3])['name'] == 'fashion-vit-acm'
    assert b'acm_request_success_total{model="fashion-vit-acm"}' in answers[4]


def test_readme_python(server):
    """Should run the README's tritonclient snippet as written (only the port is this server's)."""
    [block] = readme_blocks('python')
    run = subprocess.run([sys.executable, '-c', block.replace('localhost:8000', server.url)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    fraction = float(run.stdout.split()[-1])
    assert 0 < fraction <= 0.25 + 1e-9, run.stdout


def test_examples_regenerate(tmp_path):
    """Should regenerate examples/'s PNGs byte for byte with the tool that made them (the WAV is espeak-ng's,
    whose output can change with its version; the transcription tests above check it)."""
    run = subprocess.run([sys.executable, '-m', 'acm_tools.examples', '--out', str(tmp_path), '--no-speech'],
                         cwd=REPO, env={**os.environ, 'PYTHONPATH': os.path.join(REPO, 'tools')},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    shipped = sorted(n for n in os.listdir(os.path.join(REPO, 'examples')) if n.endswith('.png'))
    assert made == shipped
    for name in made:
        with open(tmp_path / name, 'rb') as a, open(os.path.join(REPO, 'examples', name), 'rb') as b:
            assert a.read() == b.read(), name
