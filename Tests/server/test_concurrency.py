"""Many clients at once: dynamic batches form, and every answer equals the same request's answer alone."""
import http.client
import random

import numpy as np
import pytest

from harness import HOST, Server, batch_size_histogram, default_models, infer, metrics, parse_metrics, run_clients

CLIENTS = 32
REQUESTS = 20  # per client
BUDGETS = [None, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope='module')
def server():
    """acm-serve whose batcher waits up to 5 ms for a batch to fill."""
    s = Server(models=default_models(max_batch_size=32, max_queue_delay_microseconds=5000, max_queue_size=256))
    yield s
    s.close()


def inputs(g):
    """The 4 golden images and 4 small variations of them. -> [1, C, H, W] each"""
    rng = np.random.default_rng(7)
    xs = [g['input'][i:i + 1] for i in range(4)]
    xs += [(x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32) for x in xs]
    return xs


@pytest.mark.parametrize('model', ['vit-mixed', 'vit-bias'])
def test_concurrent_clients_match_single_requests(server, mixed, bias, model):
    """Should give 32 concurrent clients with mixed budgets the same logits as each request sent alone, in batches > 1."""
    xs = inputs(mixed if model == 'vit-mixed' else bias)
    alone = {}
    for i, x in enumerate(xs):
        for b in BUDGETS:
            status, _, header, arrays = infer(server.port, model, x, budget=b)
            assert status == 200, header
            alone[i, b] = (arrays['logits'], header['parameters']['compute_fraction'])
    before = batch_size_histogram(parse_metrics(metrics(server.port)), model)

    errors = []

    def client(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
        try:
            for n in range(REQUESTS):
                i, b = rng.randrange(len(xs)), rng.choice(BUDGETS)
                status, _, header, arrays = infer(server.port, model, xs[i], budget=b, conn=conn,
                                                  binary=n % 2 == 0)
                if status != 200:
                    errors.append(f'client {seed} request {n}: {status} {header[:300]!r}')
                    return
                logits, fraction = alone[i, b]
                diff = float(np.abs(arrays['logits'] - logits).max())
                if diff > 1e-5 * max(1.0, float(np.abs(logits).max())):
                    errors.append(f'client {seed} request {n} (input {i}, budget {b}): logits differ by {diff:.2e}')
                if abs(header['parameters']['compute_fraction'] - fraction) > 1e-6:
                    errors.append(f'client {seed} request {n} (input {i}, budget {b}): compute_fraction '
                                  f'{header["parameters"]["compute_fraction"]} alone {fraction}')
        finally:
            conn.close()

    run_clients(CLIENTS, client, timeout=120)
    assert not errors, '\n'.join(errors[:20])

    buckets, count, total = batch_size_histogram(parse_metrics(metrics(server.port)), model)
    batches, images = count - before[1], total - before[2]
    assert images == CLIENTS * REQUESTS
    singles = buckets[1.0] - before[0].get(1.0, 0)
    assert batches - singles > 0, f'every one of {batches} batches ran a single image'
    print(f'{model}: {images} images in {batches} batches, mean batch {images / batches:.2f}')
