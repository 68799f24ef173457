"""API keys, HTTPS and the front end's own limits, end to end: curl, tritonclient and raw sockets against
`acm-serve serve` with `auth.api_keys_file`, with `tls`, and with requests over `max_uri_bytes` and
`max_header_bytes`."""
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness import (BIN, HOST, Server, error_message, infer, infer_path, metrics, parse_metrics, raw_exchange, request,
                     sample_value, tolerance)

KEY = 'test-key-0123456789abcdef'
OTHER_KEY = 'another-key-fedcba9876543210'
AUTH = {'Authorization': f'Bearer {KEY}'}


def write_keys(path, *keys, comment=True):
    with open(path, 'w') as f:
        if comment:
            f.write('# API keys for the test server\n\n')
        for k in keys:
            f.write(k + '\n')


@pytest.fixture(scope='module')
def keyed(tmp_path_factory):
    """A server whose routes need KEY (the keys file also holds OTHER_KEY), logging at debug level."""
    keys = str(tmp_path_factory.mktemp('keys') / 'keys.txt')
    write_keys(keys, KEY, OTHER_KEY)
    s = Server(settings={'auth': {'api_keys_file': keys}, 'log_level': 'debug'}, ready_headers=AUTH)
    s.keys_file = keys
    yield s
    s.close()


# -----------------------------------------------------------------------------
# API keys


@pytest.mark.parametrize('path', ['/v2', '/v2/models/vit-mixed', '/v2/models/vit-mixed/ready',
                                  '/v2/models/vit-mixed/config', '/metrics', '/v2/models/no-such-model',
                                  '/no/such/route'])
def test_routes_need_a_key(keyed, path):
    """Should answer 401 with WWW-Authenticate: Bearer and a JSON error without a key or with a wrong one, and
    serve the route with a right one."""
    for headers, challenge in [({}, 'Bearer realm="acm-serve"'),
                               ({'Authorization': 'Bearer wrong-key-0123456789abcdef'}, 'invalid_token'),
                               ({'Authorization': f'Basic {KEY}'}, 'Bearer realm'),
                               ({'Authorization': f'Bearer {KEY}x'}, 'invalid_token'),
                               ({'Authorization': f'Bearer {KEY[:-1]}'}, 'invalid_token')]:
        status, rh, body = request(keyed.port, 'GET', path, headers=headers)
        assert status == 401, (path, headers, status, body[:200])
        assert challenge in rh.get('www-authenticate', ''), rh
        assert 'key' in error_message(status, rh, body).lower()
    for key in (KEY, OTHER_KEY):
        status, _, body = request(keyed.port, 'GET', path, headers={'Authorization': f'bearer {key}'})
        assert status != 401, (path, status, body[:200])


def test_health_needs_no_key(keyed):
    """Should answer the health routes without a key, as Kubernetes' probes send none."""
    for path in ['/v2/health/live', '/v2/health/ready']:
        assert request(keyed.port, 'GET', path)[0] == 200


def test_infer_needs_a_key(keyed, mixed):
    """Should refuse an infer request without a key before reading its body, and run it with one."""
    status, rh, body, _ = infer(keyed.port, 'vit-mixed', mixed['input'][:1])
    assert status == 401, body[:200]
    error_message(status, rh, body)
    status, _, header, arrays = infer(keyed.port, 'vit-mixed', mixed['input'][:1], extra_headers=AUTH)
    assert status == 200, header
    want = mixed['logits.auto'][:1]
    assert np.abs(arrays['logits'] - want).max() <= tolerance(want)
    # A client that waits for 100 Continue never sends its 30 MB: the 401 comes from the headers alone.
    head = (f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: x\r\nContent-Length: {30 << 20}\r\n'
            'Expect: 100-continue\r\n\r\n').encode()
    started = time.monotonic()
    status, rh, body = raw_exchange(keyed.port, head, b'', timeout=10)
    assert status == 401 and time.monotonic() - started < 5, (status, body[:200])
    # One that sends a body at once gets the 401 after it, not a reset connection.
    status, rh, body = request(keyed.port, 'POST', infer_path('vit-mixed'), bytes(8 << 20))
    assert status == 401, body[:200]
    error_message(status, rh, body)


def test_tritonclient_sends_the_key(keyed, mixed):
    """Should serve tritonclient with the key in its headers= argument, and refuse it without."""
    client = httpclient.InferenceServerClient(keyed.url, connection_timeout=30, network_timeout=30)
    try:
        assert client.is_server_live()  # health: no key
        with pytest.raises(InferenceServerException) as refused:
            client.get_server_metadata()
        assert '401' in str(refused.value) or 'key' in str(refused.value).lower(), str(refused.value)
        assert client.get_server_metadata(headers=AUTH)['name'] == 'acm-serve'
        x = mixed['input'][:2].astype(np.float32)
        inp = httpclient.InferInput('input', list(x.shape), 'FP32')
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput('logits', binary_data=True)
        with pytest.raises(InferenceServerException):
            client.infer('vit-mixed', [inp], outputs=[out])
        result = client.infer('vit-mixed', [inp], outputs=[out], headers=AUTH, parameters={'compute_budget': 0.5})
        want = mixed['logits.cap_0.5'][:2]
        assert np.abs(result.as_numpy('logits') - want).max() <= tolerance(want)
    finally:
        client.close()


def test_unauthorized_requests_are_counted(keyed):
    """Should count refused keys in acm_http_refused_total{reason="unauthorized"}."""
    before = sample_value(parse_metrics(request(keyed.port, 'GET', '/metrics', headers=AUTH)[2].decode()),
                          'acm_http_refused_total', reason='unauthorized')
    for _ in range(3):
        assert request(keyed.port, 'GET', '/v2')[0] == 401
    after = sample_value(parse_metrics(request(keyed.port, 'GET', '/metrics', headers=AUTH)[2].decode()),
                         'acm_http_refused_total', reason='unauthorized')
    assert after - before == 3


def test_keys_are_never_logged(keyed):
    """Should log no key, right or wrong, even at debug level."""
    wrong = 'wrong-key-that-must-not-be-logged'
    request(keyed.port, 'GET', '/v2', headers={'Authorization': f'Bearer {wrong}'})
    request(keyed.port, 'GET', '/v2', headers=AUTH)
    keyed.log.flush()
    log = open(keyed.log_path, encoding='utf-8', errors='replace').read()
    assert 'unauthorized' in log  # the debug line is there, without the key
    for secret in (KEY, OTHER_KEY, wrong):
        assert secret not in log


def test_sighup_rereads_the_keys(tmp_path, mixed):
    """Should take a new keys file on SIGHUP, and keep the keys in force when the new file is not valid."""
    keys = str(tmp_path / 'keys.txt')
    write_keys(keys, KEY)
    s = Server(settings={'auth': {'api_keys_file': keys}}, ready_headers=AUTH)
    try:
        other = {'Authorization': f'Bearer {OTHER_KEY}'}
        assert request(s.port, 'GET', '/v2', headers=AUTH)[0] == 200
        assert request(s.port, 'GET', '/v2', headers=other)[0] == 401
        write_keys(keys, OTHER_KEY)
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: request(s.port, 'GET', '/v2', headers=other)[0] == 200, 'the new key to work')
        assert request(s.port, 'GET', '/v2', headers=AUTH)[0] == 401
        # A file with no key, then one with a short key: refused, and OTHER_KEY stays valid.
        for n, content in enumerate(['# nothing here\n', 'short\n'], start=1):
            with open(keys, 'w') as f:
                f.write(content)
            s.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: s.log_tail(400).count('keys in force are kept') == n, 'the reload error in the log')
            assert request(s.port, 'GET', '/v2', headers=other)[0] == 200
        assert s.proc.poll() is None
    finally:
        s.close()


def test_metrics_public(tmp_path):
    """Should serve /metrics without a key with auth.metrics_public, and still protect the rest."""
    keys = str(tmp_path / 'keys.txt')
    write_keys(keys, KEY)
    s = Server(settings={'auth': {'api_keys_file': keys, 'metrics_public': True}}, ready_headers=AUTH)
    try:
        status, _, body = request(s.port, 'GET', '/metrics')
        assert status == 200 and b'acm_request_success_total' in body
        assert request(s.port, 'GET', '/v2')[0] == 401
    finally:
        s.close()


@pytest.mark.parametrize('content, problem', [('', 'no API key'), ('too-short\n', 'at least 16'),
                                              ('has a space in it 0123456789\n', 'without spaces')])
def test_bad_keys_file_stops_start(tmp_path, content, problem):
    """Should refuse to start on a keys file with no key or a malformed one, naming the line, not the key."""
    keys = tmp_path / 'keys.txt'
    keys.write_text(content)
    out = subprocess.run([BIN, 'serve', '--port', '0',
                          '--model', 'm=Tests/ACMModelsTests/Fixtures/vit_mixed', '--api-keys-file', str(keys)],
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode != 0
    assert problem in out.stderr, out.stderr
    if content:
        assert content.strip() not in out.stderr


# -----------------------------------------------------------------------------
# TLS


@pytest.fixture(scope='module')
def certificates(tmp_path_factory):
    """A CA and a server certificate it signed for 127.0.0.1 and localhost. -> (ca.pem, cert.pem, key.pem)"""
    d = tmp_path_factory.mktemp('tls')
    run = lambda *args: subprocess.run(['openssl', *args], check=True, capture_output=True, cwd=d)  # noqa: E731
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
        '-subj', '/CN=acm-serve test CA')
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'server.csr', '-subj', '/CN=localhost')
    (d / 'san.ext').write_text('subjectAltName=DNS:localhost,IP:127.0.0.1\n')
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out',
        'cert.pem', '-days', '2', '-extfile', 'san.ext')
    return str(d / 'ca.pem'), str(d / 'cert.pem'), str(d / 'key.pem')


@pytest.fixture(scope='module')
def https(certificates):
    ca, cert, key = certificates
    context = ssl.create_default_context(cafile=ca)
    s = Server(settings={'tls': {'cert_file': cert, 'key_file': key}}, ssl_context=context)
    s.ca = ca
    s.context = context
    yield s
    s.close()


def test_https_with_curl(https):
    """Should answer over HTTPS to curl --cacert, and fail verification without the CA."""
    assert shutil.which('curl'), 'curl is needed'
    url = f'https://{HOST}:{https.port}/v2/health/ready'
    ok = subprocess.run(['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', https.ca, url],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout == '200', (ok.stdout, ok.stderr)
    meta = subprocess.run(['curl', '-sS', '--cacert', https.ca, f'https://localhost:{https.port}/v2'],
                          capture_output=True, text=True, timeout=30)
    assert '"acm-serve"' in meta.stdout, meta.stderr
    untrusted = subprocess.run(['curl', '-sS', '-o', '/dev/null', url], capture_output=True, text=True, timeout=30)
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)  # peer certificate not verified
    # TLS 1.1 and older are refused.
    old = subprocess.run(['curl', '-sS', '-o', '/dev/null', '--cacert', https.ca, '--tls-max', '1.1', url],
                         capture_output=True, text=True, timeout=30)
    assert old.returncode != 0


def test_https_with_tritonclient(https, mixed):
    """Should serve tritonclient with ssl=True against the test CA."""
    client = httpclient.InferenceServerClient(
        https.url, ssl=True, ssl_context_factory=lambda *a, **k: ssl.create_default_context(cafile=https.ca),
        connection_timeout=30, network_timeout=30)
    try:
        assert client.is_server_ready()
        x = mixed['input'][:4].astype(np.float32)
        inp = httpclient.InferInput('input', list(x.shape), 'FP32')
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer('vit-mixed', [inp], outputs=[httpclient.InferRequestedOutput('logits')],
                              parameters={'compute_budget': 0.25})
        want = mixed['logits.cap_0.25']
        assert np.abs(result.as_numpy('logits') - want).max() <= tolerance(want)
    finally:
        client.close()


def test_plain_http_to_https_port_fails(https):
    """Should not answer plain HTTP on the HTTPS port."""
    try:
        status = request(https.port, 'GET', '/v2/health/ready', timeout=5)[0]
    except (OSError, http.client.HTTPException):
        return
    assert status != 200


def test_bad_certificate_stops_start(tmp_path, certificates):
    """Should refuse to start with a key that is not PEM, saying why."""
    _, cert, _ = certificates
    bad = tmp_path / 'bad.pem'
    bad.write_text('not a key\n')
    out = subprocess.run([BIN, 'serve', '--port', '0',
                          '--model', 'm=Tests/ACMModelsTests/Fixtures/vit_mixed', '--tls-cert', cert,
                          '--tls-key', str(bad)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode != 0 and 'PEM' in out.stderr, out.stderr


# -----------------------------------------------------------------------------
# the front end's own limits: always JSON


def test_uri_too_long_is_json(server):
    """Should answer a path and query over max_uri_bytes (8 KiB) with a JSON 414."""
    status, rh, body = request(server.port, 'GET', '/v2/models/vit-mixed?x=' + 'a' * 9000)
    assert status == 414
    assert 'max_uri_bytes' in error_message(status, rh, body)


@pytest.mark.parametrize('size', [17 << 10, 24 << 10])
def test_headers_too_large_are_json(server, size):
    """Should answer header fields over max_header_bytes (16 KiB) with a JSON 431."""
    status, rh, body = request(server.port, 'GET', '/v2/health/live', headers={'X-Padding': 'p' * size})
    assert status == 431
    assert 'max_header_bytes' in error_message(status, rh, body)
    families = parse_metrics(metrics(server.port))
    assert sample_value(families, 'acm_http_refused_total', reason='headers_too_large') >= 1


def test_headers_beyond_the_connection_pool_are_json(server):
    """Should answer header fields four times libmicrohttpd's per-connection pool (64 KiB with the default
    limits), which the library refuses before any handler runs, with a JSON 431 and not its HTML page."""
    status, rh, body = raw_exchange(server.port, b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Padding: '
                                    + b'p' * (256 << 10) + b'\r\n\r\n')
    assert status == 431
    assert 'header' in error_message(status, rh, body)
    assert request(server.port, 'GET', '/v2/health/live')[0] == 200


def test_malformed_chunked_body_is_json(server):
    """Should answer a chunked body libmicrohttpd cannot parse with a JSON 400."""
    status, rh, body = raw_exchange(server.port, b'POST /v2/models/vit-mixed/infer HTTP/1.1\r\nHost: x\r\n'
                                    b'Transfer-Encoding: chunked\r\n\r\nzz\r\n')
    assert status == 400
    assert 'chunked' in error_message(status, rh, body)


def test_http11_without_host_is_json_400(server):
    """Should refuse an HTTP/1.1 request without Host with a JSON 400 (RFC 9112, section 3.2), and still serve
    HTTP/1.0 requests, which need none."""
    status, rh, body = raw_exchange(server.port, b'GET /v2/health/ready HTTP/1.1\r\n\r\n')
    assert status == 400
    assert 'Host' in error_message(status, rh, body)
    families = parse_metrics(metrics(server.port))
    assert sample_value(families, 'acm_http_refused_total', reason='missing_host') >= 1
    assert raw_exchange(server.port, b'GET /v2/health/ready HTTP/1.0\r\n\r\n')[0] == 200
    assert raw_exchange(server.port, b'GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')[0] == 200


def wait_for(condition, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for {what}')


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
