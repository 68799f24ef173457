"""KServe's own Python SDK (kserve 0.21, InferenceRESTClient, protocol v2) against acm-serve: health (which parses
the JSON bodies {"live": true} and {"ready": true}), model readiness, and inference with JSON and binary tensors,
with and without compute_budget, on the bundled Fashion-MNIST ACM model, and a WAV to the ACM Whisper model. Each
answer must equal tritonclient's to the same request on the same server.

The SDK runs in .venv-kserve (scripts/setup): it pins protobuf and python-dateutil below what the tools' venv
needs, so Tests/server/kserve/kserve_client.py runs there as a subprocess."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient

from harness import REPO, Server

sys.path.insert(0, os.path.join(REPO, 'tools'))
from acm_tools.fashion import load as load_fashion  # noqa: E402

KSERVE_PYTHON = os.path.join(REPO, '.venv-kserve', 'bin', 'python')
SCRIPT = os.path.join(REPO, 'Tests', 'server', 'kserve', 'kserve_client.py')
IMAGE_MODEL, SPEECH_MODEL = 'fashion-vit-acm', 'whisper-tiny.en-acm'
WAV = os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', 'espeak_us_fox.wav')


@pytest.fixture(scope='module')
def server():
    speech = os.path.join(REPO, 'build', 'models', SPEECH_MODEL)
    assert os.path.isdir(speech), f'build the Whisper models first (make whisper-model); looked for {speech}'
    s = Server(models={IMAGE_MODEL: {'path': os.path.join(REPO, 'models', IMAGE_MODEL)},
                       SPEECH_MODEL: {'path': speech}})
    yield s
    s.close()


@pytest.fixture(scope='module')
def kserve(server, tmp_path_factory):
    """What KServe's client got, and the images it sent."""
    assert os.path.exists(KSERVE_PYTHON), 'run scripts/setup first: it makes .venv-kserve'
    x, _ = load_fashion('test', limit=3)
    x = x.numpy().astype(np.float32)
    path = str(tmp_path_factory.mktemp('kserve') / 'images.npy')
    np.save(path, x)
    job = {'base': f'http://{server.url}', 'image_model': IMAGE_MODEL, 'speech_model': SPEECH_MODEL,
           'images': path, 'wav': WAV}
    run = subprocess.run([KSERVE_PYTHON, SCRIPT], input=json.dumps(job), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f'kserve client failed:\n{run.stderr[-4000:]}\n{server.log_tail()}'
    return json.loads(run.stdout), x


@pytest.fixture(scope='module')
def triton(server):
    c = httpclient.InferenceServerClient(server.url, network_timeout=120)
    yield c
    c.close()


def test_health(kserve):
    """Should report the server live and ready, and the model ready, through the calls that parse the bodies."""
    result, _ = kserve
    assert result['live'] is True and result['ready'] is True
    assert result['model_ready'] is True and result['missing_model_ready'] is False


def test_images_match_tritonclient(kserve, triton):
    """Should give KServe's client, JSON or binary, with or without a budget, the logits and the compute fraction
    that tritonclient gets for the same images and budget; the budget is applied (fraction within it)."""
    result, x = kserve
    assert [(r['binary'], r['budget']) for r in result['images']] == [(False, None), (False, 0.25), (True, None),
                                                                       (True, 0.25)]
    for r in result['images']:
        inp = httpclient.InferInput('input', list(x.shape), 'FP32')
        inp.set_data_from_numpy(x, binary_data=True)
        want = triton.infer(IMAGE_MODEL, [inp], outputs=[httpclient.InferRequestedOutput('logits')],
                            parameters=None if r['budget'] is None else {'compute_budget': r['budget']})
        got = np.array(r['outputs']['logits'], dtype=np.float32)
        assert got.shape == (3, 10)
        # JSON prints floats with 9 significant digits: exact for float32.
        np.testing.assert_array_equal(got, want.as_numpy('logits'))
        params = r['parameters']
        assert params['compute_fraction'] == pytest.approx(want.get_response()['parameters']['compute_fraction'])
        if r['budget'] is not None:
            assert params['compute_budget'] == r['budget'] and params['compute_fraction'] <= r['budget'] + 1e-9


def test_speech_with_a_budget(kserve, triton):
    """Should transcribe a WAV sent as a BYTES tensor by KServe's client at compute_budget 0.5 as tritonclient's
    request does."""
    result, _ = kserve
    with open(WAV, 'rb') as f:
        wav = f.read()
    inp = httpclient.InferInput('audio', [1], 'BYTES')
    inp.set_data_from_numpy(np.array([wav], dtype=np.object_), binary_data=True)
    want = triton.infer(SPEECH_MODEL, [inp], outputs=[httpclient.InferRequestedOutput('text', binary_data=False)],
                        parameters={'compute_budget': 0.5})
    text = want.as_numpy('text').reshape(-1)[0]
    assert result['speech']['outputs']['text'] == [text.decode() if isinstance(text, bytes) else text]
    assert 'fox' in result['speech']['outputs']['text'][0]
    params = result['speech']['parameters']
    assert params['compute_budget'] == 0.5 and 0 < params['compute_fraction'] <= 0.5 + 1e-9
