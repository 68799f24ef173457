"""Overload: a full queue refuses with 503 and Retry-After; every request is answered, and the 200s are right."""
import socket
import time

import numpy as np
import pytest

from harness import (HOST, Server, decode_infer, default_models, encode_infer, infer_path, metrics, parse_metrics,
                     parse_response, sample_value, tolerance)

CLIENTS = 40
ROUNDS = 10  # at most, until some request is refused


@pytest.fixture(scope='module')
def server():
    """acm-serve whose vit-mixed queue holds 2 requests and runs them one at a time."""
    s = Server(models=default_models(max_batch_size=1, max_queue_size=2, max_queue_delay_microseconds=20000))
    yield s
    s.close()


def burst(port, requests):
    """Send every request on its own connection before reading any answer. -> [(status, headers, body) or error]"""
    socks = [socket.create_connection((HOST, port), timeout=30) for _ in requests]
    for s, (body, headers) in zip(socks, requests):
        head = f'POST {infer_path("vit-mixed")} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n'
        head += ''.join(f'{k}: {v}\r\n' for k, v in headers.items()) + '\r\n'
        s.sendall(head.encode() + body)
    answers = []
    for s in socks:
        got = b''
        try:
            while (parsed := parse_response(got)) is None:
                chunk = s.recv(65536)
                if not chunk:
                    parsed = parse_response(got, complete=True) if got else f'closed after {len(got)} bytes'
                    break
                got += chunk
        except OSError as e:
            parsed = f'{type(e).__name__}: {e}'
        finally:
            s.close()
        answers.append(parsed)
    return answers


def test_full_queue_refuses_with_503(server, mixed):
    """Should answer each of 40 simultaneous requests with 200 (and the right logits) or 503 with Retry-After."""
    failures = lambda: sample_value(parse_metrics(metrics(server.port)), 'acm_request_failure_total',
                                    model='vit-mixed', reason='queue_full')
    before = failures()
    refused = ok = 0
    for _ in range(ROUNDS):
        picks = [(i % 4, 0.5 if i % 2 else None) for i in range(CLIENTS)]
        answers = burst(server.port, [encode_infer(mixed['input'][i:i + 1], budget=b) for i, b in picks])
        for (i, b), answer in zip(picks, answers):
            assert isinstance(answer, tuple), f'request {i} got no HTTP answer: {answer}'
            status, headers, body = answer
            assert status in (200, 503), (status, body[:300])
            if status == 503:
                refused += 1
                assert 'retry-after' in headers, headers
                assert int(headers['retry-after']) >= 0
                continue
            ok += 1
            _, arrays = decode_infer(headers, body)
            want = mixed['logits.cap_0.5' if b else 'logits.auto'][i:i + 1]
            np.testing.assert_allclose(arrays['logits'], want, rtol=0, atol=tolerance(want))
        if refused:
            break
        time.sleep(0.1)
    print(f'{ok} answered 200, {refused} refused with 503')
    assert refused > 0, f'no request refused in {ROUNDS} bursts of {CLIENTS}'
    assert ok > 0
    assert failures() - before == refused
