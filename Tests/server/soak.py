"""A soak test: mixed image and audio traffic against one `acm-serve serve` for a long time, watching its memory,
descriptors and latency (docs/reliability.md, "Soak").

    .venv/bin/python Tests/server/soak.py --seconds 1800            # make soak (SOAK_SECONDS)
    .venv/bin/python Tests/server/soak.py --seconds 60 --warmup 20  # the short run Tests/server/test_soak.py makes

The server runs the bundled fashion-vit-acm and whisper-tiny.en-acm (build/models; `make whisper-model`). 64 clients
(--concurrency), each on its own keep-alive connection, loop over requests drawn at random; one client in eight
sends speech, the others images (a Whisper request costs as much compute as a few hundred images, so a mix drawn per
request would leave every client waiting on the speech queue):
- image clients: /infer with FP32 JSON or binary tensors of 1-4 Fashion-MNIST images, or a PNG to /classify;
- speech clients: a WAV clip to /transcribe, or as a BYTES tensor to /infer;
- both: 5% malformed requests (broken JSON, wrong shapes, datatypes and sizes, bad budgets, undecodable images and
  audio, unknown models and routes; each has the 4xx it must get), and 2% abandoned ones (half the body sent, or the
  whole request, then the connection closed without reading the answer);
every budget (none, 0.25, 0.5, 0.75, 1.0) at random.

Every 10 s (--interval) it samples the server's RSS and open descriptors and the window's latencies. It passes when,
after the warm-up (--warmup, 300 s by default or a sixth of a shorter run):
- RSS grows < 5%: the median of the last third of the samples after the warm-up against the median of the first
  third (single samples swing by a fifth while Whisper batches hold their buffers);
- descriptors return to their baseline (before any traffic) once the clients have closed their connections;
- every answer is the intended one: 200 for a good request, its 4xx for a malformed one; anything else (5xx, 503,
  a dropped connection) fails;
- p99 is stable: each kind's p99 over the last third of the run is within 1.5x of its p99 over the first third.
It prints a table of the samples and a verdict, writes them as JSON (--json), and exits 1 when a goal is missed."""
import argparse
import glob
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import struct
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import HOST, REPO, Server, png_bytes  # noqa: E402

IMAGE_MODEL = 'fashion-vit-acm'
SPEECH_MODEL = 'whisper-tiny.en-acm'
BUDGETS = [None, 0.25, 0.5, 0.75, 1.0]
CLIPS = sorted(glob.glob(os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', '*.wav')))


def fashion_images(count=64, seed=0):
    """uint8 [count, 28, 28]: Fashion-MNIST test images where build/fashion has them, else noise."""
    path = os.path.join(REPO, 'build', 'fashion', 'test_images.npy')
    if os.path.exists(path):
        images = np.load(path, mmap_mode='r')
        return np.array(images[:count]).reshape(count, 28, 28).astype(np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)


class Traffic:
    """The requests a client draws from: (kind, method, path, body, headers, the status it must get)."""

    def __init__(self, seed=0):
        self.images = fashion_images()
        self.pngs = [png_bytes(im) for im in self.images[:16]]
        self.tensors = ((self.images.astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]  # [n, 1, 28, 28]
        self.wavs = [open(p, 'rb').read() for p in CLIPS]
        assert self.wavs, 'no clips in Tests/ACMWhisperTests/Fixtures/clips'

    @staticmethod
    def query(budget):
        return '' if budget is None else f'?compute_budget={budget}'

    @staticmethod
    def params(budget):
        return {} if budget is None else {'parameters': {'compute_budget': budget}}

    def image(self, rng):
        budget = rng.choice(BUDGETS)
        n = rng.randint(1, 4)
        i = rng.randrange(0, len(self.tensors) - n)
        x = self.tensors[i:i + n]
        form = rng.random()
        path = f'/v2/models/{IMAGE_MODEL}/infer'
        if form < 0.4:
            body = json.dumps({'inputs': [{'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32',
                                           'data': x.ravel().tolist()}], **self.params(budget)}).encode()
            return 'image', 'POST', path, body, {'Content-Type': 'application/json'}, 200
        if form < 0.8:
            header = json.dumps({'inputs': [{'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32',
                                             'parameters': {'binary_data_size': x.nbytes}}],
                                 'outputs': [{'name': 'logits', 'parameters': {'binary_data': True}}],
                                 **self.params(budget)}).encode()
            return ('image', 'POST', path, header + x.tobytes(),
                    {'Inference-Header-Content-Length': str(len(header))}, 200)
        png = rng.choice(self.pngs)
        return 'image', 'POST', f'/v2/models/{IMAGE_MODEL}/classify{self.query(budget)}', png, {}, 200

    def audio(self, rng):
        budget = rng.choice(BUDGETS)
        wav = rng.choice(self.wavs)
        if rng.random() < 0.5:
            return ('audio', 'POST', f'/v2/models/{SPEECH_MODEL}/transcribe{self.query(budget)}', wav,
                    {'Content-Type': 'audio/wav'}, 200)
        header = json.dumps({'inputs': [{'name': 'audio', 'shape': [1], 'datatype': 'BYTES',
                                         'parameters': {'binary_data_size': len(wav) + 4}}],
                             'outputs': [{'name': 'text'}], **self.params(budget)}).encode()
        return ('audio', 'POST', f'/v2/models/{SPEECH_MODEL}/infer', header + struct.pack('<I', len(wav)) + wav,
                {'Inference-Header-Content-Length': str(len(header))}, 200)

    def malformed(self, rng):
        """A request the server must refuse, with the status it must refuse it with."""
        x = self.tensors[:1]
        infer = f'/v2/models/{IMAGE_MODEL}/infer'
        cases = [
            (infer, b'{"inputs": [', 400),
            (infer, json.dumps({'inputs': [{'name': 'input', 'shape': [1, 1, 27, 28], 'datatype': 'FP32',
                                            'data': [0.0] * 756}]}).encode(), 400),
            (infer, json.dumps({'inputs': [{'name': 'input', 'shape': [1, 1, 28, 28], 'datatype': 'FP32',
                                            'data': [0.0] * 10}]}).encode(), 400),
            (infer, json.dumps({'inputs': [{'name': 'input', 'shape': [1, 1, 28, 28], 'datatype': 'INT8',
                                            'data': x.ravel().tolist()}]}).encode(), 400),
            (infer, json.dumps({'inputs': [{'name': 'input', 'shape': [1, 1, 28, 28], 'datatype': 'FP32',
                                            'data': x.ravel().tolist()}],
                                'parameters': {'compute_budget': rng.choice([0, -1, 2, 'half'])}}).encode(), 400),
            (f'/v2/models/{IMAGE_MODEL}/classify', b'\x89PNG\r\n\x1a\nnot really', 400),
            (f'/v2/models/{SPEECH_MODEL}/transcribe', b'RIFF\x00\x00\x00\x00WAVEjunk', 400),
            (f'/v2/models/{SPEECH_MODEL}/transcribe?compute_budget=0', rng.choice(self.wavs), 400),
            ('/v2/models/no-such-model/infer', b'{}', 404),
            (f'/v2/models/{IMAGE_MODEL}/transcribe', b'x', 404),
        ]
        path, body, status = rng.choice(cases)
        return 'malformed', 'POST', path, body, {}, status


class Window:
    """What the clients saw in one sampling interval."""

    def __init__(self):
        self.latencies = {'image': [], 'audio': [], 'malformed': []}
        self.unexpected = []
        self.abandoned = 0


def client(port, traffic, seed, stop, lock, state, speech):
    rng = random.Random(seed)
    draw_good = traffic.audio if speech else traffic.image
    conn = None
    while not stop.is_set():
        draw = rng.random()
        if draw < 0.02:
            abandon(port, draw_good(rng), rng)
            with lock:
                state['window'].abandoned += 1
            continue
        kind, method, path, body, headers, want = draw_good(rng) if draw < 0.95 else traffic.malformed(rng)
        if conn is None:
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            status = r.status
            if r.getheader('Connection', '').lower() == 'close':
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            status, data = 0, f'{type(e).__name__}: {e}'.encode()
            conn.close()
            conn = None
        elapsed = time.monotonic() - started
        with lock:
            w = state['window']
            if status == want:
                w.latencies[kind].append(elapsed)
            else:
                w.unexpected.append((kind, path, want, status, data[:200].decode('utf-8', 'replace')))
    if conn is not None:
        conn.close()


def abandon(port, request, rng):
    """A client that goes away: half its body sent, or all of it and no answer read."""
    _, method, path, body, headers, _ = request
    head = f'{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\n'
    head += ''.join(f'{k}: {v}\r\n' for k, v in headers.items()) + '\r\n'
    try:
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(head.encode())
            s.sendall(body[:len(body) // 2] if rng.random() < 0.5 else body)
    except OSError:
        pass


def rss_bytes(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def fd_targets(pid):
    """What each open descriptor is (socket:[inode], anon_inode:[eventfd], a path)."""
    out = []
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            out.append(os.readlink(f'/proc/{pid}/fd/{fd}'))
        except OSError:
            pass
    return sorted(out)


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float('nan')


def soak(seconds, warmup, concurrency, interval, out=print):
    """Runs the soak; -> the report (dict), whose 'passed' says whether every goal was met."""
    models = {IMAGE_MODEL: {'path': os.path.join(REPO, 'models', IMAGE_MODEL), 'max_batch_size': 32},
              SPEECH_MODEL: {'path': os.path.join(REPO, 'build', 'models', SPEECH_MODEL), 'max_batch_size': 8,
                             'max_queue_delay_microseconds': 5000, 'max_queue_size': 128}}
    for m in models.values():
        assert os.path.isdir(m['path']), f'{m["path"]} is missing (make whisper-model)'
    server = Server(models=models, settings={'log_level': 'warning'})
    pid = server.proc.pid
    traffic = Traffic()
    baseline_fds = open_fds(pid)
    start_targets = fd_targets(pid)
    lock, stop = threading.Lock(), threading.Event()
    state = {'window': Window()}
    threads = [threading.Thread(target=client, args=(server.port, traffic, seed, stop, lock, state, seed % 8 == 0),
                                daemon=True) for seed in range(concurrency)]
    samples, unexpected = [], []
    started = time.monotonic()
    out(f'soak: {concurrency} clients for {seconds} s (warm-up {warmup} s); server pid {pid}, {baseline_fds} descriptors '
        f'at start')
    out('|   t (s) | RSS (MiB) | fds | images | audio | 4xx sent | abandoned | image p50 / p99 (ms) | audio p99 (ms) | unexpected |')
    out('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    try:
        for t in threads:
            t.start()
        next_sample = started + interval
        while time.monotonic() < started + seconds:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += interval
            with lock:
                w, state['window'] = state['window'], Window()
            s = {'t': round(time.monotonic() - started, 1), 'rss': rss_bytes(pid), 'fds': open_fds(pid),
                 'images': len(w.latencies['image']), 'audio': len(w.latencies['audio']),
                 'malformed': len(w.latencies['malformed']), 'abandoned': w.abandoned,
                 'image_p50': percentile(w.latencies['image'], 50) * 1e3,
                 'image_p99': percentile(w.latencies['image'], 99) * 1e3,
                 'audio_p99': percentile(w.latencies['audio'], 99) * 1e3,
                 'image_latencies': w.latencies['image'], 'audio_latencies': w.latencies['audio'],
                 'unexpected': len(w.unexpected)}
            unexpected += w.unexpected
            samples.append(s)
            out(f'| {s["t"]:7.0f} | {s["rss"] / 2**20:9.1f} | {s["fds"]:3d} | {s["images"]:6d} | {s["audio"]:5d} | '
                f'{s["malformed"]:8d} | {s["abandoned"]:9d} | {s["image_p50"]:8.1f} / {s["image_p99"]:7.1f} | '
                f'{s["audio_p99"]:14.0f} | {s["unexpected"]:10d} |')
            if server.proc.poll() is not None:
                raise AssertionError(f'the server exited with {server.proc.returncode}:\n{server.log_tail()}')
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    # The clients have closed their connections: once the server has answered what abandoned clients left in its
    # queues, its descriptors go back to what they were.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and open_fds(pid) > baseline_fds:
        time.sleep(0.2)
    final_fds = open_fds(pid)
    final_rss = rss_bytes(pid)
    if final_fds > baseline_fds:
        out(f'descriptors now: {fd_targets(pid)}; at start: {start_targets}')
        out('\n'.join(line for line in subprocess.run(['ss', '-tanpi'], capture_output=True, text=True).stdout.splitlines()
                       if f'pid={pid}' in line))
    server.stop(timeout=60)
    server.log.close()

    after = [s for s in samples if s['t'] > warmup]
    report = {'seconds': seconds, 'warmup': warmup, 'concurrency': concurrency, 'baseline_fds': baseline_fds,
              'final_fds': final_fds, 'final_rss': final_rss, 'unexpected': unexpected[:50],
              'unexpected_count': len(unexpected),
              'requests': {k: sum(s[k] for s in samples) for k in ('images', 'audio', 'malformed', 'abandoned')},
              'samples': [{k: v for k, v in s.items() if not k.endswith('latencies')} for s in samples]}
    goals = {}
    if len(after) >= 6:
        # RSS swings by a fifth from one sample to the next while Whisper batches hold their buffers, so growth is
        # the median of the last third of the samples after the warm-up against the median of the first third.
        third = max(1, len(after) // 3)
        start_rss = statistics.median(s['rss'] for s in after[:third])
        end_rss = statistics.median(s['rss'] for s in after[-third:])
        report['rss_growth'] = end_rss / start_rss - 1
        # A leak lifts both the least and the most a third's samples read; which phase of a Whisper batch the few
        # samples of a short run fall in moves only one of them at a time.
        report['rss_growth_least_most'] = tuple(
            pick(s['rss'] for s in after[-third:]) / pick(s['rss'] for s in after[:third]) - 1 for pick in (min, max))
        report['rss_after_warmup_min_max'] = (min(s['rss'] for s in after), max(s['rss'] for s in after))
        goals['rss_growth_below_5pct'] = report['rss_growth'] < 0.05
        for kind in ('image', 'audio'):
            first = [x for s in after[:third] for x in s[f'{kind}_latencies']]
            last = [x for s in after[-third:] for x in s[f'{kind}_latencies']]
            if first and last:
                p_first, p_last = percentile(first, 99) * 1e3, percentile(last, 99) * 1e3
                report[f'{kind}_p99_first_third_ms'], report[f'{kind}_p99_last_third_ms'] = p_first, p_last
                goals[f'{kind}_p99_stable'] = p_last <= 1.5 * p_first
    else:
        goals['enough_samples_after_warmup'] = False
    goals['fds_back_to_baseline'] = final_fds <= baseline_fds
    goals['only_intended_answers'] = not unexpected
    report['goals'] = goals
    report['passed'] = all(goals.values())
    out(f'requests: {report["requests"]}; unexpected answers: {len(unexpected)}')
    for u in unexpected[:10]:
        out(f'  unexpected: {u}')
    if 'rss_growth' in report:
        low, high = report['rss_after_warmup_min_max']
        out(f'RSS growth after warm-up: {report["rss_growth"] * 100:+.2f}% (median of the last third of the samples '
            f'against the first third; samples from {low / 2**20:.0f} to {high / 2**20:.0f} MiB); least and most of '
            'the thirds: ' + ', '.join(f'{g * 100:+.2f}%' for g in report['rss_growth_least_most']))
    for kind in ('image', 'audio'):
        if f'{kind}_p99_first_third_ms' in report:
            out(f'{kind} p99: {report[f"{kind}_p99_first_third_ms"]:.1f} ms in the first third after warm-up, '
                f'{report[f"{kind}_p99_last_third_ms"]:.1f} ms in the last')
    out(f'descriptors: {baseline_fds} before traffic, {final_fds} after the clients closed')
    out(f'goals: {goals}')
    out('PASSED' if report['passed'] else 'FAILED')
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seconds', type=float, default=float(os.environ.get('SOAK_SECONDS', 1800)))
    p.add_argument('--warmup', type=float, help='seconds before RSS and p99 are judged (default: 300, or a sixth of a shorter run)')
    p.add_argument('--concurrency', type=int, default=64)
    p.add_argument('--interval', type=float, default=10)
    p.add_argument('--json', default=os.path.join(REPO, 'build', 'soak.json'))
    args = p.parse_args()
    warmup = args.warmup if args.warmup is not None else min(300, args.seconds / 6)
    report = soak(args.seconds, warmup, args.concurrency, args.interval)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, 'w') as f:
        json.dump(report, f, indent=1)
    sys.exit(0 if report['passed'] else 1)


if __name__ == '__main__':
    main()
