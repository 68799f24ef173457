"""The server tests' harness: start `acm-serve serve` on a free 127.0.0.1 port, talk Open Inference Protocol
HTTP to it with plain sockets (JSON or binary tensors), and read the golden fixtures."""
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse

import numpy as np
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, 'Tests', 'ACMModelsTests', 'Fixtures')
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))
# How many times longer a client waits for an answer: scripts/test-sanitizers sets it for its instrumented servers.
SLOWDOWN = float(os.environ.get('ACM_TEST_SLOWDOWN', '1'))
HOST = '127.0.0.1'
READY_SECONDS = 30  # start-up takes < 2 s; this is for a loaded machine
STOP_SECONDS = 10  # SIGTERM to exit


def slow(seconds):
    """A client timeout of `seconds`, stretched by ACM_TEST_SLOWDOWN."""
    return seconds * SLOWDOWN


# The golden modes the HTTP parameter compute_budget reaches: no budget is auto; a cap of 1.0 never trims.
BUDGET_MODES = {None: 'auto', 0.5: 'cap_0.5', 0.25: 'cap_0.25', 1.0: 'auto'}


def golden(fixture):
    """The fixture's golden tensors: input [4, C, H, W], logits.<mode> [4, classes], fraction.<mode> [4]."""
    return load_file(os.path.join(FIXTURES, fixture, 'golden.safetensors'))


def model_config(fixture):
    with open(os.path.join(FIXTURES, fixture, 'config.json')) as f:
        return json.load(f)


def tolerance(logits):
    """The engine computes in float32: 1e-4 of the largest logit (golden.py's float64 reference)."""
    return 1e-4 * max(1.0, float(np.abs(logits).max()))


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def default_models(**batcher):
    """vit-mixed and vit-bias from the golden fixtures, with these batcher settings."""
    return {
        'vit-mixed': {'path': os.path.join(FIXTURES, 'vit_mixed'), **batcher},
        'vit-bias': {'path': os.path.join(FIXTURES, 'vit_bias'), **batcher},
    }


def pinned(cpus):
    """The prefix that runs a command on `cpus` (taskset's list, e.g. '0' or '1,2'); none for None."""
    return ['taskset', '-c', str(cpus)] if cpus is not None else []


class Server:
    """One `acm-serve serve` process on 127.0.0.1 with a config file written for it (or `config_file`, on a
    free port given by flags); its log goes to a file that is printed when something fails."""

    def __init__(self, models=None, limits=None, args=(), http_threads=4, config_file=None, settings=None,
                 ssl_context=None, ready_headers=None, cpus=None):
        """settings: more top-level config entries (auth, tls, shutdown_grace_seconds); ssl_context: the client
        side of HTTPS, for the readiness check; ready_headers: its headers; cpus: the CPUs to run it on (taskset's
        list, e.g. '0'; the server then starts one compute worker per CPU of that list)."""
        assert os.path.exists(BIN), f'build acm-serve first (swift build -c release); looked for {BIN}'
        self.dir = tempfile.mkdtemp(prefix='acm-serve-test-')
        self.port = free_port()
        self.ssl_context = ssl_context
        self.ready_headers = ready_headers
        if config_file:
            self.config_path = config_file
            args = ['--host', HOST, '--port', str(self.port), *args]
        else:
            config = {'host': HOST, 'port': self.port, 'http_threads': http_threads, 'log_level': 'info',
                      'models': models or default_models()}
            if limits:
                config['limits'] = limits
            config.update(settings or {})
            self.config_path = os.path.join(self.dir, 'config.json')
            with open(self.config_path, 'w') as f:
                json.dump(config, f, indent=2)
        self.log_path = os.path.join(self.dir, 'server.log')
        self.log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen([*pinned(cpus), BIN, 'serve', '--config', self.config_path, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f'{HOST}:{self.port}'
        self.wait_ready()

    def log_tail(self, n=60):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, 'rb') as f:
            lines = f.read().decode('utf-8', 'replace').splitlines()
        return '\n'.join(lines[-n:])

    def wait_ready(self):
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f'acm-serve serve exited with {self.proc.returncode} before it was ready:\n'
                                     f'{self.log_tail()}')
            try:
                if request(self.port, 'GET', '/v2/health/ready', timeout=2, headers=self.ready_headers,
                           ssl_context=self.ssl_context)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f'acm-serve serve not ready after {READY_SECONDS} s:\n{self.log_tail()}')

    def stop(self, sig=signal.SIGTERM, timeout=STOP_SECONDS):
        """Signal the server and wait for it. -> its exit code"""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'acm-serve did not exit within {timeout} s of {sig!r}:\n{self.log_tail()}')

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self):
        """Stop the server, and fail if it did not exit 0 on SIGTERM."""
        try:
            code = self.stop()
        finally:
            self.log.close()
        assert code == 0, f'acm-serve exited with {code} on SIGTERM:\n{self.log_tail()}'


# -----------------------------------------------------------------------------
# plain HTTP


def request(port, method, path, body=None, headers=None, timeout=30, conn=None, ssl_context=None):
    """One HTTP request on a new connection (HTTPS with ssl_context), or on conn.
    -> (status, headers as a lower-case dict, body bytes)"""
    own = conn is None
    if own and ssl_context is not None:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ssl_context)
    elif own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            conn.close()


def error_message(status, headers, body):
    """The contract: every error is JSON {"error": "..."}. -> the message"""
    assert 'json' in headers.get('content-type', ''), f'{status}: content-type {headers.get("content-type")!r}'
    obj = json.loads(body)
    assert isinstance(obj.get('error'), str) and obj['error'], f'{status}: body {body[:300]!r}'
    return obj['error']


def encode_infer(x=None, budget=None, binary=True, outputs=None, binary_outputs=None, images=None,
                 parameters=None, request_id=None):
    """An infer request for FP32 input x [n, C, H, W], or for encoded images (BYTES [n]).
    binary: the input as a binary tensor (else JSON data); binary_outputs (default: as binary) the same
    for every output. -> (body bytes, headers)"""
    if binary_outputs is None:
        binary_outputs = binary
    params = dict(parameters or {})
    if budget is not None:
        params['compute_budget'] = budget
    header = {}
    if request_id is not None:
        header['id'] = request_id
    if params:
        header['parameters'] = params
    tail = b''
    if images is not None:
        raw = b''.join(struct.pack('<I', len(img)) + img for img in images)
        inp = {'name': 'input', 'shape': [len(images)], 'datatype': 'BYTES', 'parameters': {'binary_data_size': len(raw)}}
        tail = raw
    else:
        x = np.ascontiguousarray(x, dtype='<f4')
        inp = {'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32'}
        if binary:
            inp['parameters'] = {'binary_data_size': x.nbytes}
            tail = x.tobytes()
        else:
            inp['data'] = x.reshape(-1).tolist()
    header['inputs'] = [inp]
    if outputs is not None:
        header['outputs'] = [{'name': o, 'parameters': {'binary_data': binary_outputs}} for o in outputs]
    elif binary_outputs:
        params['binary_data_output'] = True
        header['parameters'] = params
    head = json.dumps(header).encode()
    headers = {'Content-Type': 'application/octet-stream' if tail else 'application/json'}
    if tail:
        headers['Inference-Header-Content-Length'] = str(len(head))
    return head + tail, headers


def decode_infer(headers, body):
    """An infer response -> (its JSON header, {output name: numpy array}); BYTES outputs as lists of bytes."""
    n = headers.get('inference-header-content-length')
    head_len = int(n) if n is not None else len(body)
    header = json.loads(body[:head_len])
    offset = head_len
    arrays = {}
    for out in header.get('outputs', []):
        shape = out['shape']
        size = (out.get('parameters') or {}).get('binary_data_size')
        if size is not None:
            raw = body[offset:offset + size]
            offset += size
            if out['datatype'] == 'FP32':
                arrays[out['name']] = np.frombuffer(raw, '<f4').reshape(shape)
            elif out['datatype'] == 'BYTES':
                items, i = [], 0
                while i < len(raw):
                    (m,) = struct.unpack_from('<I', raw, i)
                    items.append(raw[i + 4:i + 4 + m])
                    i += 4 + m
                arrays[out['name']] = np.array(items, dtype=object).reshape(shape)
            else:
                raise AssertionError(f'unexpected datatype {out["datatype"]}')
        else:
            data = out['data']
            if out['datatype'] == 'FP32':
                arrays[out['name']] = np.array(data, np.float32).reshape(shape)
            else:
                arrays[out['name']] = np.array([s.encode() if isinstance(s, str) else s for s in _flat(data)],
                                               dtype=object).reshape(shape)
    assert offset == len(body), f'{len(body) - offset} bytes after the last binary output'
    return header, arrays


def _flat(data):
    for d in data:
        if isinstance(d, list):
            yield from _flat(d)
        else:
            yield d


def infer_path(model, version=None):
    model = urllib.parse.quote(model)
    return f'/v2/models/{model}/versions/{version}/infer' if version else f'/v2/models/{model}/infer'


def infer(port, model, x=None, conn=None, timeout=30, extra_headers=None, **kw):
    """POST an infer request (with extra_headers too). -> (status, headers, JSON header or error body, arrays or None)"""
    body, headers = encode_infer(x, **kw)
    headers = {**headers, **(extra_headers or {})}
    status, rh, data = request(port, 'POST', infer_path(model), body, headers, timeout=timeout, conn=conn)
    if status != 200:
        return status, rh, data, None
    header, arrays = decode_infer(rh, data)
    return status, rh, header, arrays


def raw_exchange(port, head, body=b'', timeout=10):
    """Send a request's head (bytes), then its body, on a raw socket; read until the server closes or a
    whole response has arrived. The server may answer (413) before reading the body and close: the head
    is sent first and a response already there is taken without sending the body, so no unread data makes
    the server's close a reset. -> (status, headers dict, body bytes)"""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(head)
        s.settimeout(0.5)
        got = b''
        try:
            got = s.recv(65536)
        except socket.timeout:
            pass
        s.settimeout(timeout)
        if not got:
            try:
                s.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parsed = parse_response(got)
            if parsed is not None:
                return parsed
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        parsed = parse_response(got, complete=True)
        assert parsed is not None, f'no HTTP response; got {got[:200]!r}'
        return parsed
    finally:
        s.close()


def parse_response(data, complete=False):
    """A whole HTTP/1.1 response from bytes, or None while incomplete (complete: the connection closed)."""
    end = data.find(b'\r\n\r\n')
    if end < 0:
        return None
    lines = data[:end].decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(':')
        headers[k.strip().lower()] = v.strip()
    body = data[end + 4:]
    if 'content-length' in headers:
        n = int(headers['content-length'])
        if len(body) < n:
            return None if not complete else (status, headers, body)
        return status, headers, body[:n]
    if headers.get('transfer-encoding', '').lower() == 'chunked':
        out, i = b'', 0
        while True:
            j = body.find(b'\r\n', i)
            if j < 0:
                return None if not complete else (status, headers, out)
            size = int(body[i:j].split(b';')[0], 16)
            if size == 0:
                return status, headers, out
            if len(body) < j + 2 + size + 2:
                return None if not complete else (status, headers, out)
            out += body[j + 2:j + 2 + size]
            i = j + 2 + size + 2
    return (status, headers, body) if complete else None


# -----------------------------------------------------------------------------
# metrics


def metrics(port):
    """GET /metrics -> its text"""
    status, headers, body = request(port, 'GET', '/metrics')
    assert status == 200, body
    return body.decode()


def sample_value(families, name, **labels):
    """The value of the one sample `name` whose labels include `labels`; 0 when there is none."""
    found = [s.value for f in families for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f'{name}{labels}: {len(found)} samples'
    return found[0] if found else 0.0


def parse_metrics(text):
    from prometheus_client.parser import text_string_to_metric_families
    return list(text_string_to_metric_families(text))


def batch_size_histogram(families, model):
    """The batch-size histogram of a model: (counts by upper bound, count, sum)."""
    hist = [f for f in families if f.type == 'histogram' and f.name.startswith('acm_batch_size')]
    assert len(hist) == 1, f'one acm_batch_size* histogram expected, found {[f.name for f in hist]}'
    buckets, count, total = {}, None, None
    for s in hist[0].samples:
        if s.labels.get('model') != model:
            continue
        if s.name.endswith('_bucket'):
            buckets[float(s.labels['le'])] = s.value
        elif s.name.endswith('_count'):
            count = s.value
        elif s.name.endswith('_sum'):
            total = s.value
    return buckets, count, total


def png_bytes(pixels):
    """uint8 pixels [H, W] (grey) or [H, W, 3] (rgb) -> PNG file bytes"""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format='PNG')
    return buf.getvalue()


def grey_pixels(fixture_input):
    """A golden input image [1, H, W] (about N(0, 1)) as uint8 grey pixels [H, W]."""
    return np.clip(np.round((fixture_input[0] * 0.25 + 0.5) * 255), 0, 255).astype(np.uint8)


def preprocess_grey(pixels, mean=0.5, std=0.25):
    """What vit_mixed's preprocessing does to a 16×16 grey image: no resize, no crop, (x/255 − mean)/std.
    -> float32 [1, 1, H, W]"""
    return ((pixels.astype(np.float32) / 255.0 - mean) / std)[None, None].astype(np.float32)


def run_clients(count, work, timeout=180, label=str):
    """work(i) for i in range(count), each on its own thread, all released together (a barrier) -> [work(i)].
    Fails on a client still running after `timeout` s ('a client hung') or on any client's exception, naming
    it by label(i)."""
    results, errors = [None] * count, []
    start = threading.Barrier(count)

    def run(i):
        try:
            start.wait(30)
            results[i] = work(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f'client {label(i)}: {type(e).__name__}: {e}')

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), 'a client hung'
    assert not errors, '\n'.join(errors[:20])
    return results
