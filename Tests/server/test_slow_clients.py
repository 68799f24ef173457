"""Slow and idle clients: thousands of connections that never finish their headers, clients that trickle their
headers byte by byte, idle kept-alive connections, and 200 concurrent 30 MB uploads against the cap on buffered
bodies. Each against a real `acm-serve serve` over sockets."""
import os
import resource
import socket
import threading
import time

import numpy as np

from harness import HOST, Server, error_message, infer, infer_path, metrics, parse_metrics, request, sample_value

SLOW_CONNECTIONS = 2000


def raise_open_files(needed):
    """This test process opens thousands of sockets: raise its soft limit (the hard limit allowing)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, 'the hard open-file limit is too low for this test'


def open_unfinished(port, count):
    """count connections that each sent the start of a request and never its end."""
    sockets = []
    for i in range(count):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: x\r\nX-Slow: {i}\r\n'.encode())
        sockets.append(s)
    return sockets


def rss_bytes(pid, field='VmRSS'):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise AssertionError(f'no {field} in /proc/{pid}/status')


def test_unfinished_headers_do_not_lock_out_a_client(mixed):
    """Should answer a normal request within 1 s while 2,000 connections hold half-sent headers."""
    raise_open_files(SLOW_CONNECTIONS + 256)
    server = Server(limits={'header_timeout_seconds': 60})
    held = []
    try:
        held = open_unfinished(server.port, SLOW_CONNECTIONS)
        time.sleep(0.5)  # the server has accepted them all
        for _ in range(5):
            started = time.monotonic()
            status, _, header, arrays = infer(server.port, 'vit-mixed', mixed['input'][:1], timeout=10)
            elapsed = time.monotonic() - started
            assert status == 200, header
            assert elapsed < 1.0, f'a normal request took {elapsed:.2f} s behind {SLOW_CONNECTIONS} slow connections'
        assert 'connection_limit=' in server.log_tail(200)
        limit = int(server.log_tail(200).split('connection_limit=')[1].split()[0])
        assert limit > SLOW_CONNECTIONS, f'connection limit {limit}: the open-file limit was not raised'
    finally:
        for s in held:
            s.close()
        server.close()


def test_header_deadline_closes_trickling_clients():
    """Should close a connection whose headers are not in within header_timeout_seconds, even when it sends a
    byte every 0.2 s (the idle timeout alone would never fire), and count it."""
    server = Server(limits={'header_timeout_seconds': 2, 'idle_timeout_seconds': 60})
    try:
        s = socket.create_connection((HOST, server.port), timeout=10)
        started = time.monotonic()
        closed_at = None
        s.sendall(b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Trickle: ')
        while time.monotonic() - started < 10:
            try:
                s.sendall(b'a')
                s.settimeout(0.2)
                data = s.recv(1024)
                if data == b'':
                    closed_at = time.monotonic()
                    break
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed_at = time.monotonic()
                break
        s.close()
        assert closed_at is not None, 'the trickling connection was still open after 10 s'
        assert 1.5 <= closed_at - started <= 4.0, f'closed after {closed_at - started:.2f} s; the deadline is 2 s'
        families = parse_metrics(metrics(server.port))
        assert sample_value(families, 'acm_http_refused_total', reason='header_timeout') >= 1
        # A client that sends its request at once is served as usual.
        assert request(server.port, 'GET', '/v2/health/live')[0] == 200
    finally:
        server.close()


def test_idle_keep_alive_connection_is_closed():
    """Should close a kept-alive connection idle for idle_timeout_seconds, and serve it until then."""
    server = Server(limits={'idle_timeout_seconds': 2, 'header_timeout_seconds': 1})
    try:
        s = socket.create_connection((HOST, server.port), timeout=10)
        for _ in range(3):  # kept alive: the same connection, beyond the 1-s header deadline of a new one
            s.sendall(b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n')
            assert s.recv(1024).startswith(b'HTTP/1.1 200')
            time.sleep(0.6)
        started = time.monotonic()
        s.settimeout(10)
        assert s.recv(1024) == b''
        assert 1.0 <= time.monotonic() - started <= 5.0
        s.close()
    finally:
        server.close()


UPLOADS = 200
UPLOAD_BYTES = 30 << 20
CAP = 512 << 20


def upload(port, body, results, i, expect):
    """POST body. expect: as a careful client does, with Expect: 100-continue, the body only after 100 Continue (a
    final answer before it is the answer); else as most clients do, the body right after the headers."""
    s = socket.create_connection((HOST, port), timeout=60)
    try:
        s.sendall((f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n'
                   f'Inference-Header-Content-Length: {body.header_length}\r\nContent-Length: {len(body.data)}\r\n'
                   + ('Expect: 100-continue\r\n' if expect else '') + '\r\n').encode())
        if not expect:
            s.sendall(body.data)
        got = b''
        while b'\r\n\r\n' not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        if got.startswith(b'HTTP/1.1 100'):
            got = got.split(b'\r\n\r\n', 1)[1]
            s.sendall(body.data)
            while b'\r\n\r\n' not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        head, _, rest = got.partition(b'\r\n\r\n')
        status = int(head.split()[1]) if head else 0
        length = next((int(line.split(b':')[1]) for line in head.split(b'\r\n') if line.lower().startswith(b'content-length')), 0)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        results[i] = (status, head.decode('latin-1'), rest)
    except OSError as e:
        results[i] = (0, f'{type(e).__name__}: {e}', b'')
    finally:
        s.close()


class Body:
    """An infer request whose binary tensor says 30 MB of images: read in full, then refused (too many images)."""

    def __init__(self, size):
        import json
        images = size // (16 * 16 * 4)
        header = json.dumps({'inputs': [{'name': 'input', 'shape': [images, 1, 16, 16], 'datatype': 'FP32',
                                         'parameters': {'binary_data_size': images * 1024}}]}).encode()
        self.header_length = len(header)
        self.data = header + bytes(images * 1024)


def test_concurrent_large_uploads_stay_under_the_cap(mixed):
    """Should answer 200 concurrent 30 MB uploads (each 400 once read, or 503 + Retry-After when the 512 MiB cap
    on buffered bodies is reached: before the body is sent to a client that waits for 100 Continue, after it
    was read and dropped for one that does not), keep peak RSS under cap + models + 200 MB, give the memory back
    afterwards, and keep serving."""
    raise_open_files(UPLOADS + 256)
    server = Server(limits={'max_inflight_body_bytes': CAP})
    try:
        pid = server.proc.pid
        infer(server.port, 'vit-mixed', mixed['input'][:1])
        baseline = rss_bytes(pid)
        body = Body(UPLOAD_BYTES)
        results = [None] * UPLOADS
        threads = [threading.Thread(target=upload, args=(server.port, body, results, i, i % 2 == 0)) for i in range(UPLOADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), 'an upload hung'
        peak = rss_bytes(pid, 'VmHWM')
        statuses = {}
        for status, head, data in results:
            statuses[status] = statuses.get(status, 0) + 1
            assert status in (400, 503), (status, head[:200], data[:200])
            error_message(status, {'content-type': 'application/json'}, data)
            if status == 503:
                assert 'retry-after' in head.lower(), head
        print(f'statuses {statuses}; RSS baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB')
        assert statuses.get(400, 0) >= CAP // UPLOAD_BYTES // 2, statuses  # a fair share was read in full
        assert peak <= baseline + CAP + (200 << 20), f'peak RSS {peak / 2**20:.0f} MiB'
        # Memory goes back near the baseline once the burst is over.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rss_bytes(pid) > baseline + (64 << 20):
            time.sleep(0.2)
        after = rss_bytes(pid)
        assert after <= baseline + (64 << 20), f'RSS {after / 2**20:.0f} MiB after the burst, {baseline / 2**20:.0f} before'
        status, _, header, arrays = infer(server.port, 'vit-mixed', mixed['input'][:1])
        assert status == 200, header
        families = parse_metrics(metrics(server.port))
        assert sample_value(families, 'acm_http_refused_total', reason='body_budget') == statuses.get(503, 0)
    finally:
        server.close()


def test_clients_that_leave_mid_body_free_their_connections(mixed):
    """Should close at once (not after the 60-s idle timeout) the connections of clients that send half a body and
    go away, their last bytes and their FIN together, and count no request for them; SIGTERM then exits at once."""
    server = Server()
    try:
        pid = server.proc.pid
        baseline = len(os.listdir(f'/proc/{pid}/fd'))
        body = b'{"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [' + b'0,' * 200
        for _ in range(50):
            with socket.create_connection((HOST, server.port), timeout=10) as s:
                s.sendall(f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * len(body)}\r\n'
                          f'\r\n'.encode() + body)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(os.listdir(f'/proc/{pid}/fd')) > baseline:
            time.sleep(0.1)
        assert len(os.listdir(f'/proc/{pid}/fd')) <= baseline, 'connections of departed clients are still open'
        status, _, header, _ = infer(server.port, 'vit-mixed', mixed['input'][:1])
        assert status == 200, header
        started = time.monotonic()
        assert server.stop(timeout=10) == 0
        assert time.monotonic() - started < 3, 'SIGTERM waited for requests that were never complete'
    finally:
        server.kill()
        server.log.close()
