"""The adaptive budget (docs/adaptive-budget.md): under a burst that backs the queue up past the latency target, a
model with adaptive_budget lowers the budget of requests that set none, says so in each answer, counts it and logs
it; requests with their own budget keep it; "adaptive" opts in; and a model without it refuses "adaptive"."""
import os
import threading

import numpy as np
import pytest

from harness import REPO, Server, infer, metrics, parse_metrics, request, sample_value

MODEL = os.path.join(REPO, 'models', 'fashion-vit-acm')
# A target the burst below passes however fast the engine is: a 20-ms target stopped being reached once the engine
# ran a single image in about 0.25 ms, since the burst's 64 Python threads start over a few milliseconds and the
# queue then drained as fast as it filled (a CI run answered every request before any was lowered).
TARGET_MS = 5


@pytest.fixture(scope='module')
def server():
    # One image per batch, so that a burst of 64 queues past the 5-ms target.
    s = Server(models={
        'adaptive': {'path': MODEL, 'adaptive_budget': True, 'latency_target_ms': TARGET_MS, 'min_budget': 0.25,
                     'max_batch_size': 1, 'max_queue_delay_microseconds': 0},
        'fixed': {'path': MODEL},
    })
    yield s
    s.close()


def images(n, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 1, 28, 28)).astype(np.float32)


def burst(port, model, count, **kw):
    """`count` concurrent single-image requests. -> [(status, JSON header)]"""
    out = [None] * count
    x = images(count)

    def one(i):
        status, _, header, _ = infer(port, model, x[i:i + 1], timeout=120, **kw)
        out[i] = (status, header)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_lowers_under_a_burst_and_says_so(server):
    """Should answer every request of a burst 200, lower some below the model's own (auto) budget, report each
    lowered budget with a compute fraction within it, and count and log the changes."""
    answers = burst(server.port, 'adaptive', 64)
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    params = [header['parameters'] for _, header in answers]
    assert all(p['adaptive_budget'] is True for p in params)
    lowered = [p for p in params if 'compute_budget' in p]
    assert lowered, 'no request was lowered'
    for p in lowered:
        assert 0.25 <= p['compute_budget'] < 1 and p['compute_fraction'] <= p['compute_budget'] + 1e-9, p
    families = parse_metrics(metrics(server.port))
    assert sample_value(families, 'acm_adaptive_lowered_requests_total', model='adaptive') == len(lowered)
    seconds = {s.labels['budget']: s.value for f in families for s in f.samples
               if s.name == 'acm_adaptive_budget_seconds_total' and s.labels['model'] == 'adaptive'}
    assert set(seconds) == {'auto', '0.75', '0.5', '0.35', '0.25'} and sum(seconds.values()) > 0
    log = server.log_tail(400)
    changes = [line for line in log.splitlines() if 'adaptive budget lowered' in line]
    assert any('from=auto' in line and 'to=0.75' in line and 'model=adaptive' in line for line in changes), log[-2000:]


def test_own_budget_is_kept(server):
    """Should run a request that sets its own budget at it, and mark it as not adaptive."""
    status, _, header, _ = infer(server.port, 'adaptive', images(1), budget=0.5)
    assert status == 200
    assert header['parameters']['compute_budget'] == 0.5 and 'adaptive_budget' not in header['parameters']


def test_opt_in_and_refusal(server):
    """Should take "adaptive" as a budget on the adaptive model (JSON and the curl route), and refuse it with 400
    on a model without an adaptive budget."""
    status, _, header, _ = infer(server.port, 'adaptive', images(1), parameters={'compute_budget': 'adaptive'})
    assert status == 200 and header['parameters']['adaptive_budget'] is True
    status, _, body, _ = infer(server.port, 'fixed', images(1), parameters={'compute_budget': 'adaptive'})
    assert status == 400 and b'has no adaptive budget' in body
    with open(os.path.join(REPO, 'examples', 'shirt.png'), 'rb') as f:
        png = f.read()
    status, _, body = request(server.port, 'POST', '/v2/models/adaptive/classify?compute_budget=adaptive', png)
    assert status == 200 and b'"adaptive_budget":true' in body.replace(b' ', b'')
    status, _, body = request(server.port, 'POST', '/v2/models/fixed/classify?compute_budget=adaptive', png)
    assert status == 400


def test_refuses_adaptive_on_a_dense_model(tmp_path):
    """Should refuse to start with adaptive_budget on a dense model, or without a latency target."""
    import subprocess
    import json
    from harness import BIN
    for entry, message in [
        ({'path': os.path.join(REPO, 'models', 'fashion-vit-teacher'), 'adaptive_budget': True,
          'latency_target_ms': 50}, 'needs a model with ACM layers'),
        ({'path': MODEL, 'adaptive_budget': True}, 'adaptive_budget needs latency_target_ms'),
    ]:
        config = tmp_path / 'config.json'
        config.write_text(json.dumps({'port': 1, 'models': {'m': entry}}))
        run = subprocess.run([BIN, 'serve', '--config', str(config)], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and message in run.stderr + run.stdout, run.stderr
