"""SIGTERM under load: every request the server took is answered correctly, then the process exits 0."""
import signal
import threading
import time

import numpy as np

from harness import STOP_SECONDS, Server, default_models, infer, tolerance

CLIENTS = 64
DELAY = 0.5  # s: the batcher's max_queue_delay; batches never fill, so every request waits this long in the queue
SAFE_MARGIN = 0.1  # s: a request sent this long before SIGTERM was surely accepted


def test_sigterm_under_load(mixed):
    """Should answer every accepted request with the right logits after SIGTERM, refuse the rest, and exit 0."""
    # Batches of up to 128 images never fill with 64 clients: at SIGTERM, most requests wait in the queue.
    server = Server(models=default_models(max_batch_size=128, max_queue_delay_microseconds=int(DELAY * 1e6)))
    try:
        results = []  # (sent_at, outcome, detail)
        lock = threading.Lock()
        stop = threading.Event()
        first = threading.Event()
        start = threading.Barrier(CLIENTS + 1)

        def client(seed):
            start.wait(30)
            n = 0
            while not stop.is_set():
                i, b = (seed + n) % 4, (None, 0.5, 0.25)[(seed + n) % 3]
                n += 1
                sent = time.monotonic()
                try:
                    # A new connection per request, so that "accepted" is clear-cut.
                    status, _, header, arrays = infer(server.port, 'vit-mixed', mixed['input'][i:i + 1],
                                                      budget=b, timeout=15)
                except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as e:
                    with lock:
                        results.append((sent, 'refused', type(e).__name__))
                    return
                except Exception as e:  # noqa: BLE001 - a hang (timeout) or a torn response
                    with lock:
                        results.append((sent, 'error', f'{type(e).__name__}: {e}'))
                    return
                if status == 200:
                    mode = {None: 'auto', 0.5: 'cap_0.5', 0.25: 'cap_0.25'}[b]
                    want = mixed[f'logits.{mode}'][i:i + 1]
                    good = np.abs(arrays['logits'] - want).max() <= tolerance(want)
                    outcome = 'ok' if good else 'wrong'
                else:
                    outcome = status
                with lock:
                    results.append((sent, outcome, header if status != 200 else ''))
                first.set()
                if status == 503:
                    return

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        for t in threads:
            t.start()
        start.wait(30)
        assert first.wait(30), 'no answer within 30 s'
        time.sleep(DELAY / 2)  # a batch is queued, waiting
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(STOP_SECONDS)
        except Exception:
            raise AssertionError(f'acm-serve did not exit within {STOP_SECONDS} s of SIGTERM:\n{server.log_tail()}')
        exited = time.monotonic()
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), 'a client hung'

        outcomes = {}
        for _, outcome, _ in results:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        print(f'SIGTERM to exit {exited - signalled:.2f} s; outcomes {outcomes}')
        assert code == 0, f'exit code {code}:\n{server.log_tail()}'
        bad = [r for r in results if r[1] not in ('ok', 'refused', 503)]
        assert not bad, bad[:10]
        early = [(signalled - sent, outcome, detail) for sent, outcome, detail in results
                 if sent < signalled - SAFE_MARGIN and outcome != 'ok']
        assert not early, f'requests sent well before SIGTERM (s before) not answered 200: {early[:10]}'
        assert outcomes.get('ok', 0) >= CLIENTS
    finally:
        server.kill()
        server.log.close()
