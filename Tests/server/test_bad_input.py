"""Bad requests: each gets its status and a JSON error, and the server goes on serving."""
import json

import numpy as np
import pytest

from harness import (Server, default_models, encode_infer, error_message, infer, infer_path, raw_exchange, request,
                     tolerance)

MAX_BODY = 64 << 10
MAX_BATCH = 8


@pytest.fixture(scope='module')
def server():
    """acm-serve with a 64 KiB body limit and batches of at most 8 images."""
    s = Server(models=default_models(max_batch_size=MAX_BATCH), limits={'max_body_bytes': MAX_BODY})
    yield s
    s.close()


def still_serving(server, mixed):
    status, _, _ = request(server.port, 'GET', '/v2/health/ready')
    assert status == 200
    status, _, header, arrays = infer(server.port, 'vit-mixed', mixed['input'][:1], budget=0.5)
    assert status == 200, header
    want = mixed['logits.cap_0.5'][:1]
    np.testing.assert_allclose(arrays['logits'], want, rtol=0, atol=tolerance(want))


def json_infer(x, **fields):
    """A JSON infer request body for FP32 x, with fields of the first input replaced."""
    inp = {'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32', 'data': x.reshape(-1).tolist()}
    inp.update(fields)
    return {'inputs': [inp]}


X1 = np.zeros((1, 1, 16, 16), np.float32)

CASES = {
    # name: (path, body, status)
    'malformed-json': (infer_path('vit-mixed'), b'{"inputs": [{"name": "input", ', 400),
    'not-an-object': (infer_path('vit-mixed'), b'[1, 2, 3]', 400),
    'empty-body': (infer_path('vit-mixed'), b'', 400),
    'missing-inputs': (infer_path('vit-mixed'), {'outputs': [{'name': 'logits'}]}, 400),
    'empty-inputs': (infer_path('vit-mixed'), {'inputs': []}, 400),
    'wrong-input-name': (infer_path('vit-mixed'), json_infer(X1, name='pixels'), 400),
    'wrong-shape': (infer_path('vit-mixed'), json_infer(np.zeros((1, 1, 8, 8), np.float32)), 400),
    'wrong-channels': (infer_path('vit-mixed'), json_infer(np.zeros((1, 3, 16, 16), np.float32)), 400),
    'rank-3': (infer_path('vit-mixed'), json_infer(X1, shape=[1, 16, 16]), 400),
    'data-size-mismatch': (infer_path('vit-mixed'), json_infer(X1, data=[0.0] * 10), 400),
    'over-max-batch': (infer_path('vit-mixed'), json_infer(np.zeros((MAX_BATCH + 1, 1, 16, 16), np.float32)), 400),
    'int32': (infer_path('vit-mixed'), json_infer(X1, datatype='INT32', data=[0] * 256), 400),
    'unknown-datatype': (infer_path('vit-mixed'), json_infer(X1, datatype='FP99'), 400),
    'non-numeric-data': (infer_path('vit-mixed'), json_infer(X1, data=['a'] * 256), 400),
    'unknown-model': (infer_path('no-such-model'), json_infer(X1), 404),
    'unknown-version': (infer_path('vit-mixed', version='2'), json_infer(X1), 404),
    'unknown-output': (infer_path('vit-mixed'), {**json_infer(X1), 'outputs': [{'name': 'nope'}]}, 400),
    'budget-minus-1': (infer_path('vit-mixed'), {**json_infer(X1), 'parameters': {'compute_budget': -1}}, 400),
    'budget-0': (infer_path('vit-mixed'), {**json_infer(X1), 'parameters': {'compute_budget': 0}}, 400),
    'budget-1.5': (infer_path('vit-mixed'), {**json_infer(X1), 'parameters': {'compute_budget': 1.5}}, 400),
    'budget-abc': (infer_path('vit-mixed'), {**json_infer(X1), 'parameters': {'compute_budget': 'abc'}}, 400),
    'budget-null': (infer_path('vit-mixed'), {**json_infer(X1), 'parameters': {'compute_budget': None}}, 400),
    'unknown-path': ('/v2/nothing/here', b'{}', 404),
}


@pytest.mark.parametrize('name', CASES)
def test_bad_request(server, mixed, name):
    """Should answer a malformed, misshapen or mistyped request with its 4xx status and a JSON error, and keep serving."""
    path, body, status = CASES[name]
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    got, headers, data = request(server.port, 'POST', path, body, {'Content-Type': 'application/json'})
    assert got == status, data[:500]
    error_message(got, headers, data)
    still_serving(server, mixed)


def test_binary_header_length_past_body(server, mixed):
    """Should refuse a binary request whose Inference-Header-Content-Length is longer than the body."""
    body, headers = encode_infer(mixed['input'][:1], binary=True)
    headers['Inference-Header-Content-Length'] = str(len(body) + 10)
    got, rh, data = request(server.port, 'POST', infer_path('vit-mixed'), body, headers)
    assert got == 400, data
    error_message(got, rh, data)
    still_serving(server, mixed)


def test_binary_size_mismatch(server, mixed):
    """Should refuse a binary input whose binary_data_size does not match its shape."""
    body, headers = encode_infer(mixed['input'][:1], binary=True)
    body = body + b'\0' * 4  # 4 bytes more than the shape holds
    head_len = int(headers['Inference-Header-Content-Length'])
    header = json.loads(body[:head_len])
    header['inputs'][0]['parameters']['binary_data_size'] += 4
    head = json.dumps(header).encode()
    headers['Inference-Header-Content-Length'] = str(len(head))
    got, rh, data = request(server.port, 'POST', infer_path('vit-mixed'), head + body[head_len:], headers)
    assert got == 400, data
    error_message(got, rh, data)
    still_serving(server, mixed)


@pytest.mark.parametrize('binary', [False, True], ids=['json', 'binary'])
@pytest.mark.parametrize('batch', [10**12, 2**62], ids=['1e12', '2^62'])
def test_huge_batch_dimension(mixed, batch, binary):
    """Should refuse a shape whose batch dimension is far over max_batch_size with 400, allocating nothing for it."""
    s = Server()  # its own server: a crash here must not take the other tests' server down
    try:
        x = mixed['input'][:1]
        if binary:
            body, headers = encode_infer(x, binary=True)
            n = int(headers['Inference-Header-Content-Length'])
            header = json.loads(body[:n])
            header['inputs'][0]['shape'][0] = batch
            head = json.dumps(header).encode()
            headers['Inference-Header-Content-Length'] = str(len(head))
            body = head + body[n:]
        else:
            body = json.dumps(json_infer(x, shape=[batch, 1, 16, 16])).encode()
            headers = {'Content-Type': 'application/json'}
        try:
            got, rh, data = request(s.port, 'POST', infer_path('vit-mixed'), body, headers)
        except ConnectionError as e:
            try:
                s.proc.wait(5)
            except Exception:  # noqa: BLE001 - still running: no crash to show
                pass
            crash = [line for line in s.log_tail(400).splitlines() if 'Fatal' in line or 'crashed' in line]
            raise AssertionError(f'no answer ({type(e).__name__}); exit code {s.proc.poll()}; {crash[:3]}') from None
        assert got == 400, data
        error_message(got, rh, data)
        still_serving(s, mixed)
    finally:
        s.kill()
        s.log.close()


@pytest.mark.parametrize('image', [b'not an image at all', b'\x89PNG\r\n\x1a\n' + b'\0' * 40, b''],
                         ids=['text', 'truncated-png', 'empty'])
def test_undecodable_image(server, mixed, image):
    """Should refuse BYTES input that is no PNG or JPEG with 400."""
    body, headers = encode_infer(images=[image])
    got, rh, data = request(server.port, 'POST', infer_path('vit-mixed'), body, headers)
    assert got == 400, data
    error_message(got, rh, data)
    still_serving(server, mixed)


@pytest.mark.parametrize('size', [MAX_BODY + 1, 4 * MAX_BODY])
def test_body_over_limit(server, mixed, size):
    """Should answer a body over limits.max_body_bytes with 413 (it may close the connection), and keep serving."""
    head = (f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
            f'Content-Length: {size}\r\n\r\n').encode()
    body = b'{"inputs": []}'.ljust(size)
    assert len(body) == size
    status, headers, data = raw_exchange(server.port, head, body)
    assert status == 413, data[:300]
    still_serving(server, mixed)


def test_body_at_limit_is_read(server, mixed):
    """Should read a body of exactly max_body_bytes (and refuse it only for what it says)."""
    body, headers = encode_infer(mixed['input'][:1], binary=False)
    body += b' ' * (MAX_BODY - len(body))  # JSON allows trailing white space
    assert len(body) == MAX_BODY
    got, _, data = request(server.port, 'POST', infer_path('vit-mixed'), body, headers)
    assert got == 200, data[:300]


@pytest.mark.parametrize('method, path', [
    ('GET', infer_path('vit-mixed')),
    ('PUT', infer_path('vit-mixed')),
    ('DELETE', '/v2/models/vit-mixed'),
    ('POST', '/v2/health/ready'),
    ('GET', '/v2/models/vit-mixed/classify'),
])
def test_wrong_method(server, mixed, method, path):
    """Should answer a wrong method with 405 (or 404), never a 5xx, and keep serving."""
    got, headers, data = request(server.port, method, path, b'' if method != 'GET' else None)
    assert got in (404, 405), data
    still_serving(server, mixed)
