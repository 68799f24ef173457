"""`make serve`'s server: config/acm-serve.json, as shipped, serves every model it names (the Fashion-MNIST ViTs,
Whisper tiny.en and its ACMized version), and the README's requests work against it."""
import json
import os

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
