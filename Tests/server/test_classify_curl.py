"""POST /v2/models/{m}/classify with curl: an image file in, the top-5 labels out."""
import json
import subprocess

import numpy as np
import pytest

from harness import error_message, grey_pixels, infer, model_config, png_bytes, preprocess_grey, request


def curl(url, path):
    out = subprocess.run(['curl', '-s', '-S', '--max-time', '30', '-w', '\n%{http_code}', '--data-binary', f'@{path}', url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition('\n')
    return int(code), body


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize('budget', [None, 0.5])
@pytest.mark.parametrize('image', range(4))
def test_classify_png(server, mixed, tmp_path, image, budget):
    """Should answer a PNG with the 5 most probable labels, as the same image preprocessed and sent to /infer ranks them."""
    labels = model_config('vit_mixed')['labels']
    pixels = grey_pixels(mixed['input'][image])
    path = tmp_path / 'digit.png'
    path.write_bytes(png_bytes(pixels))
    url = f'http://{server.url}/v2/models/vit-mixed/classify'
    if budget is not None:
        url += f'?compute_budget={budget}'
    code, body = curl(url, path)
    assert code == 200, body
    answer = json.loads(body)
    top = answer['labels']
    assert len(top) == 5
    probs = [t['probability'] for t in top]
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1 + 1e-6
    for t in top:
        assert t['label'] == labels[t['index']]
    assert 0 < answer['compute_fraction'] <= 1

    status, _, header, arrays = infer(server.port, 'vit-mixed', preprocess_grey(pixels), budget=budget)
    assert status == 200, header
    logits = arrays['logits'][0]
    p = softmax(logits.astype(np.float64))
    assert top[0]['index'] == int(np.argmax(logits))
    assert [t['index'] for t in top] == list(np.argsort(-logits, kind='stable')[:5])
    for t in top:
        assert abs(t['probability'] - p[t['index']]) <= 1e-4
    assert abs(answer['compute_fraction'] - header['parameters']['compute_fraction']) <= 1e-6


def test_classify_rgb_model(server, tmp_path):
    """Should resize and crop a larger RGB image for vit-bias and answer its 5 classes, unlabelled by name."""
    rng = np.random.default_rng(0)
    path = tmp_path / 'rgb.png'
    path.write_bytes(png_bytes(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)))
    code, body = curl(f'http://{server.url}/v2/models/vit-bias/classify?compute_budget=0.25', path)
    assert code == 200, body
    answer = json.loads(body)
    assert sorted(t['index'] for t in answer['labels']) == [0, 1, 2, 3, 4]
    probs = [t['probability'] for t in answer['labels']]
    assert probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1) <= 1e-4  # 5 classes: the top 5 are all of them
    assert 0 < answer['compute_fraction'] <= 1  # over 0.25 where k_min floors bind


@pytest.mark.parametrize('body, query, status', [
    (b'this is not an image', '', 400),
    (b'', '', 400),
    (None, '?compute_budget=1.5', 400),
    (None, '?compute_budget=abc', 400),
])
def test_classify_errors(server, mixed, body, query, status):
    """Should refuse an undecodable image, an empty body or a bad budget with a JSON error."""
    if body is None:
        body = png_bytes(grey_pixels(mixed['input'][0]))
    got, headers, data = request(server.port, 'POST', f'/v2/models/vit-mixed/classify{query}', body)
    assert got == status, data
    error_message(got, headers, data)
    got, headers, data = request(server.port, 'POST', '/v2/models/no-such-model/classify', body)
    assert got == 404, data
