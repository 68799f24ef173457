"""The adaptive budget against overload (docs/adaptive-budget.md, BENCHMARKS.md "Adaptive budget under overload").

    .venv/bin/python Tests/server/bench_overload.py [--seconds 20] [--target-ms 100] [--write]

Drives `fashion-vit-acm` with an open-loop load (Poisson arrivals, four Fashion-MNIST test images per request, binary tensors; each
request's latency counted from its scheduled send time, so a slow server cannot slow the load down) at 1x, 1.5x
and 2x the request rate that the full budget sustains, three ways: the adaptive budget off, on, and the dense
teacher. The server runs on core 0 with one compute thread and the load generator on core 1, so that they do not
share a core. The full budget's rate is measured first, closed-loop at 32 connections (the median of three runs
interleaved with the floor's). Expected accuracy per request comes from docs/results.md's test accuracy at the
budget it ran at. With --write it rewrites that section of BENCHMARKS.md and draws a load step (0.5x, 1.5x, 0.5x)
with the adaptive budget on into docs/img/adaptive-step.png."""
import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, HOST, REPO, free_port, pinned, request  # noqa: E402

ACM = os.path.join(REPO, 'models', 'fashion-vit-acm')
TEACHER = os.path.join(REPO, 'models', 'fashion-vit-teacher')
SERVER_CORE, CLIENT_CORE = 0, 1
# Images per request: 4, so that the load generator (Python, one core) keeps up at 2x with room to spare; its own
# lag is measured and reported.
IMAGES_PER_REQUEST = 4
QUEUE_REQUESTS = 256
MIN_BUDGET = 0.25
MARK_BEGIN, MARK_END = '<!-- bench-overload:begin -->', '<!-- bench-overload:end -->'


def results_accuracy():
    """docs/results.md's ACM test accuracy by cap (None: auto), and the dense teacher's."""
    with open(os.path.join(REPO, 'docs', 'results.md')) as f:
        text = f.read()
    caps, auto, teacher = {}, None, None
    for row in re.finditer(r'^\| (ACM, cap ([0-9.]+)|ACM, auto \(gates choose\)|dense teacher) \| ([0-9.]+)% \|', text, re.M):
        if row.group(2):
            caps[float(row.group(2))] = float(row.group(3))
        elif row.group(1).startswith('ACM, auto'):
            auto = float(row.group(3))
        else:
            teacher = float(row.group(3))
    assert caps and auto and teacher, 'docs/results.md: the accuracy table was not found'
    return caps, auto, teacher


def accuracy_at(budget, caps, auto):
    """Expected accuracy at a cap, interpolated between the table's caps; None: auto."""
    if budget is None or budget >= 1:
        return auto
    xs = sorted(caps)
    return float(np.interp(budget, xs, [caps[x] for x in xs]))


class Server:
    """acm-serve on core 0 with one compute thread, serving `model` as 'm'."""

    def __init__(self, path, adaptive=None, log_dir='build/bench-overload'):
        os.makedirs(os.path.join(REPO, log_dir), exist_ok=True)
        self.port = free_port()
        # The bundled config's batcher: batches of up to 32 images, a 2-ms delay, a queue of up to 256 requests (with
        # the adaptive budget on, the queue also holds no more than the floor can run within the target).
        entry = {'path': path, 'max_batch_size': 32, 'max_queue_delay_microseconds': 2000,
                 'max_queue_size': QUEUE_REQUESTS}
        if adaptive:
            entry.update(adaptive_budget=True, latency_target_ms=adaptive, min_budget=MIN_BUDGET)
        config = os.path.join(REPO, log_dir, 'config.json')
        with open(config, 'w') as f:
            json.dump({'host': HOST, 'port': self.port, 'http_threads': 2, 'compute_threads': 1, 'log_level': 'notice',
                       'models': {'m': entry}}, f)
        self.log = open(os.path.join(REPO, log_dir, 'server.log'), 'ab')
        self.proc = subprocess.Popen([*pinned(SERVER_CORE), BIN, 'serve', '--config', config],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if request(self.port, 'GET', '/v2/health/ready', timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError('acm-serve did not start')

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def infer_request(port, image, budget=None):
    """An infer request of `image` ([n, 1, 28, 28]) with binary tensors."""
    request = {'inputs': [{'name': 'input', 'shape': list(image.shape), 'datatype': 'FP32',
                           'parameters': {'binary_data_size': image.nbytes}}],
               'outputs': [{'name': 'logits', 'parameters': {'binary_data': True}}]}
    if budget is not None:
        request['parameters'] = {'compute_budget': budget}
    header = json.dumps(request).encode()
    body = header + image.tobytes()
    return (f'POST /v2/models/m/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/octet-stream\r\n'
            f'Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n').encode() + body


async def exchange(reader, writer, payload):
    """One request on a keep-alive connection -> (status, JSON parameters or None)"""
    writer.write(payload)
    head = await reader.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(':') for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get('content-length', 0)))
    if status != 200:
        return status, None
    json_length = int(headers.get('inference-header-content-length', len(body)))
    return status, json.loads(body[:json_length]).get('parameters', {})


def request_groups(images):
    """The images, IMAGES_PER_REQUEST to a request."""
    return [images[i:i + IMAGES_PER_REQUEST] for i in range(0, len(images) - IMAGES_PER_REQUEST + 1, IMAGES_PER_REQUEST)]


class Connections:
    """Idle keep-alive connections, opened on demand, at most `limit` at once (a request waits for one, its latency
    still counted from its scheduled time)."""

    def __init__(self, port, limit=2048):
        self.port, self.idle, self.slots = port, [], asyncio.Semaphore(limit)

    async def get(self):
        await self.slots.acquire()
        try:
            return self.idle.pop() if self.idle else await asyncio.open_connection(HOST, self.port)
        except OSError:
            self.slots.release()
            raise

    def put(self, conn):
        self.idle.append(conn)
        self.slots.release()

    def drop(self, conn):
        conn[1].close()
        self.slots.release()


@contextlib.contextmanager
def collector_off():
    """Python's garbage collector off, and what exists now frozen out of its scans, for a timed run."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def open_loop(port, schedule, images, collect=False, start=None):
    """Sends a request at each time of `schedule` (seconds from `start`, a `time.monotonic()` reading, or from now)
    -> [(sent_at, latency, status, params, sent)]: `sent` is when the request went out, in seconds from `start` (nan
    where no connection could be had).

    Python's garbage collector is off meanwhile unless `collect` (`gc.freeze` first, so that what was made before is
    not scanned either): a full collection among the run's tens of thousands of tasks and records stopped this loop for
    100-155 ms at a time (2026-12-03, Intel VM), after which it sent the requests that had fallen due at once, a burst
    of 130 in 0.1 s that the server then had to refuse. With it off, the latest request went out 23 ms late."""
    conns = Connections(port)
    payloads = [infer_request(port, group) for group in request_groups(images)]
    out = []
    loop = asyncio.get_running_loop()  # its clock is time.monotonic()

    async def one(i, at):
        conn, sent = None, float('nan')
        try:
            conn = await conns.get()
            sent = loop.time() - start
            status, params = await exchange(*conn, payloads[i % len(payloads)])
            conns.put(conn)
        except (OSError, asyncio.IncompleteReadError) as e:
            status, params = f'error: {e!r}', None
            if conn is not None:
                conns.drop(conn)
        out.append((at, loop.time() - (start + at), status, params, sent))

    # One producer starts each request at its time (not all up front: creating tens of thousands of tasks at once
    # would itself delay the first sends).
    tasks = []
    with contextlib.nullcontext() if collect else collector_off():
        start = loop.time() if start is None else start
        for i, at in enumerate(schedule):
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
    lags = [sent - at for at, _, _, _, sent in out if sent == sent]
    GENERATOR_LAG.append(float(np.percentile(lags, 99)) * 1000 if lags else 0.0)
    return out


GENERATOR_LAG = []  # ms: the p99 of how late the generator sent each request (its connection in hand), per open-loop run


async def closed_loop(port, seconds, images, connections=32, budget=None, refused_ok=False):
    """Requests per second that `connections` clients, each waiting for its answer, get through. With `refused_ok`
    a 503 (the adaptive budget's queue is bounded by time, and on a slow machine 40 clients' images can be more than
    it admits) makes that client wait 10 ms and go on; otherwise any answer but 200 is an error."""
    done = 0
    deadline = time.monotonic() + seconds
    payloads = [infer_request(port, group, budget) for group in request_groups(images)]

    async def client():
        nonlocal done
        conn = await asyncio.open_connection(HOST, port)
        while time.monotonic() < deadline:
            status, _ = await exchange(*conn, payloads[done % len(payloads)])
            if status == 503 and refused_ok:
                await asyncio.sleep(0.01)
                continue
            assert status == 200, status
            done += 1
        conn[1].close()

    with collector_off():
        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        return done / (time.monotonic() - start)


def warm_up(port, images):
    """Batches of every size the load makes, at every rung of the ladder, before anything is measured: the first
    batch of each shape pays for LIBXSMM's kernels and the engine's buffers. Full batches from 40 connections, then
    smaller ones from 1 to 8. (The first open-loop pass after it still sees one answer near 100 ms; the server's own
    request durations stay under 50 ms then, so that is the load generator's first pass, not the engine.)"""
    for budget in (None, 0.75, 0.5, 0.35, 0.25):
        for connections in (40, 8, 4, 2, 1):
            asyncio.run(closed_loop(port, 1.5 if connections == 40 else 0.4, images, connections=connections, budget=budget,
                                    refused_ok=True))
    asyncio.run(closed_loop(port, 1.5, images, connections=40, refused_ok=True))


def core_counters(cpu):
    """/proc/stat's counters of one CPU, in clock ticks: user nice system idle iowait irq softirq steal."""
    with open('/proc/stat') as f:
        for line in f:
            if line.startswith(f'cpu{cpu} '):
                return [int(v) for v in line.split()[1:9]]
    return [0] * 8


def core_shares(before, after):
    """Shares of the time between two `core_counters` readings that the CPU was busy, idle and stolen by the
    hypervisor, in per cent."""
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    total = user + nice + system + idle + iowait + irq + softirq + steal
    if total <= 0:
        return 0.0, 0.0, 0.0
    return (100 * (user + nice + system + irq + softirq) / total, 100 * (idle + iowait) / total, 100 * steal / total)


def poisson(rate, seconds, rng, offset=0.0):
    t, out = offset, []
    while True:
        t += rng.exponential(1 / rate)
        if t >= offset + seconds:
            return out
        out.append(t)


def summarize(records, warmup, caps, auto, dense_accuracy=None):
    steady = [r for r in records if r[0] >= warmup]
    ok = [r for r in steady if r[2] == 200]
    lat = np.array([r[1] for r in ok]) * 1000
    refused = sum(1 for r in steady if r[2] == 503)
    other = [r[2] for r in steady if r[2] not in (200, 503)]
    budgets = [r[3].get('compute_budget', 1.0) for r in ok]
    if dense_accuracy is not None:
        accuracy = dense_accuracy
    else:
        accuracy = float(np.mean([accuracy_at(r[3].get('compute_budget'), caps, auto) for r in ok])) if ok else 0
    return dict(sent=len(steady), ok=len(ok), refused=refused, other=len(other), p50=float(np.percentile(lat, 50)) if ok else 0,
                p99=float(np.percentile(lat, 99)) if ok else 0, budget=float(np.mean(budgets)) if ok else 0,
                accuracy=accuracy, errors=other[:3])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seconds', type=float, default=20, help='per load level (the first 3 s are not counted)')
    ap.add_argument('--target-ms', type=float, default=100)
    ap.add_argument('--loads', type=float, nargs='+', default=[1.0, 1.5, 2.0])
    ap.add_argument('--write', action='store_true', help='rewrite BENCHMARKS.md\'s section and draw the step plot')
    args = ap.parse_args(argv)

    sys.path.insert(0, os.path.join(REPO, 'tools'))
    from acm_tools.bench_peers import sgemm_n, sgemm_probe
    from acm_tools.machine import cpu_name, git_commit
    commit = git_commit()  # before this run writes its plot into the tree
    g = sgemm_probe()['gflops']
    lines = [f'CPU: {cpu_name()}, {os.cpu_count()} cores; sgemm {sgemm_n}^3 float32 (numpy): {g[1]:.0f} GFLOP/s on 1 '
             f'thread, {g[2]:.0f} GFLOP/s on 2']
    for line in lines:
        print(line)
    os.sched_setaffinity(0, {CLIENT_CORE})
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    caps, auto, teacher_acc = results_accuracy()
    from acm_tools.fashion import load as load_fashion
    images = load_fashion('test', limit=512)[0].numpy().astype(np.float32)  # the test set's first 512 images

    server = Server(ACM)
    try:
        warm_up(server.port, images)
        # Three interleaved runs of each, and their medians: one run can fall in a fast or a slow stretch of the VM
        # (on the Intel machine, 2026-12-02, one run each read 442 and 572 requests/s, and the full budget then
        # answered only 351 a second of its "1x" open-loop load).
        before = core_counters(SERVER_CORE)
        runs = [(asyncio.run(closed_loop(server.port, max(5.0, args.seconds / 4), images)),
                 asyncio.run(closed_loop(server.port, max(5.0, args.seconds / 4), images, budget=MIN_BUDGET)))
                for _ in range(3)]
        capacity_stolen = core_shares(before, core_counters(SERVER_CORE))[2]
    finally:
        server.close()
    capacity, floor = (float(np.median(r)) for r in zip(*runs))
    print(f'full budget (auto) sustains {capacity:.0f} requests/s closed-loop at 32 connections; the floor '
          f'({MIN_BUDGET:g}) {floor:.0f} ({floor / capacity:.2f}x); medians of '
          + ', '.join(f'{a:.0f}/{b:.0f}' for a, b in runs) + f'; server core {capacity_stolen:.1f}% stolen meanwhile')

    configs = [('adaptive off', ACM, None, None), ('adaptive on', ACM, args.target_ms, None),
               ('dense teacher', TEACHER, None, teacher_acc)]
    rows = []
    for load in args.loads:
        rate = load * capacity
        for name, path, target, dense in configs:
            server = Server(path, adaptive=target)
            try:
                warm_up(server.port, images)
                schedule = poisson(rate, args.seconds, np.random.default_rng(int(load * 10)))
                before = core_counters(SERVER_CORE)
                records = asyncio.run(open_loop(server.port, schedule, images))
                busy, _, stolen = core_shares(before, core_counters(SERVER_CORE))
            finally:
                server.close()
            s = summarize(records, 3.0, caps, auto, dense)
            rows.append(dict(config=name, load=load, rate=rate, lag=GENERATOR_LAG[-1], busy=busy, stolen=stolen, **s))
            print(f'{name:14s} {load:.1f}x ({rate:.0f}/s, generator lag p99 {GENERATOR_LAG[-1]:.1f} ms, server core '
                  f'{busy:.0f}% busy, {stolen:.1f}% stolen): '
                  f'200 {s["ok"]}/{s["sent"]}, 503 {s["refused"]}, '
                  f'other {s["other"]} {s["errors"]}, p50 {s["p50"]:.1f} ms, p99 {s["p99"]:.1f} ms, '
                  f'budget {s["budget"]:.3f}, accuracy {s["accuracy"]:.2f}%', flush=True)

    table = ['| config | load | offered requests/s | answered 200 | 503 | p50 (ms) | p99 (ms) | mean budget applied | expected accuracy | generator lag p99 (ms) | server core busy, stolen |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        share = 100 * r['ok'] / max(r['sent'], 1)
        budget = '–' if r['config'] == 'dense teacher' else f'{r["budget"]:.2f}'
        table.append(f'| {r["config"]} | {r["load"]:.1f}× | {r["rate"]:.0f} | {share:.1f}% | {r["refused"]} | '
                     f'{r["p50"]:.1f} | {r["p99"]:.1f} | {budget} | {r["accuracy"]:.2f}% | {r["lag"]:.1f} | '
                     f'{r["busy"]:.0f}%, {r["stolen"]:.1f}% |')
    print('\n'.join(table))

    step = None
    if args.write:
        step = step_plot(capacity, args.target_ms, images, caps, auto)
        write_section(lines, capacity, floor, capacity_stolen, table, args, step, commit)


def step_plot(capacity, target_ms, images, caps, auto):
    """0.5x for 10 s, 1.5x for 20 s, 0.5x for 15 s with the adaptive budget on -> per-second series, and the PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(7)
    phases = [(0.5, 10), (1.5, 20), (0.5, 15)]
    schedule, offset = [], 0.0
    for load, seconds in phases:
        schedule += poisson(load * capacity, seconds, rng, offset)
        offset += seconds
    server = Server(ACM, adaptive=target_ms)
    try:
        warm_up(server.port, images)
        records = asyncio.run(open_loop(server.port, schedule, images))
    finally:
        server.close()
    seconds = np.arange(0, offset, 1.0)
    budget, p99, refused = [], [], []
    for t in seconds:
        window = [r for r in records if t <= r[0] < t + 1]
        ok = [r for r in window if r[2] == 200]
        budget.append(np.mean([r[3].get('compute_budget', 1.0) for r in ok]) if ok else np.nan)
        p99.append(np.percentile([r[1] * 1000 for r in ok], 99) if ok else np.nan)
        refused.append(sum(1 for r in window if r[2] == 503))
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    load = [next(l for (l, s), end in zip(phases, np.cumsum([s for _, s in phases])) if t < end) for t in seconds]
    a.step(seconds, budget, where='post', label='mean budget applied')
    a.step(seconds, load, where='post', color='grey', linestyle=':', label='offered load (× full-budget rate)')
    a.set_ylabel('budget / load')
    a.legend(loc='upper right', fontsize=8)
    b.plot(seconds, p99, label='p99 latency (ms)')
    b.axhline(target_ms, color='red', linestyle='--', label=f'target {target_ms:.0f} ms')
    b.set_yscale('log')
    b.set_xlabel('seconds')
    b.legend(loc='upper right', fontsize=8)
    fig.suptitle('fashion-vit-acm, adaptive budget on: a load step 0.5× → 1.5× → 0.5×')
    os.makedirs(os.path.join(REPO, 'docs', 'img'), exist_ok=True)
    fig.savefig(os.path.join(REPO, 'docs', 'img', 'adaptive-step.png'), dpi=90)
    phase_rows = []
    begin = 0
    for load_level, length in phases:
        idx = [i for i, t in enumerate(seconds) if begin + 2 <= t < begin + length]
        ok = [r for r in records if begin + 2 <= r[0] < begin + length and r[2] == 200]
        phase_rows.append((load_level, begin, begin + length, float(np.nanmean([budget[i] for i in idx])),
                           float(np.percentile([r[1] * 1000 for r in ok], 99)) if ok else 0,
                           sum(refused[i] for i in idx)))
        begin += length
    return phase_rows


def write_section(probe_lines_, capacity, floor, capacity_stolen, table, args, step, commit):
    path = os.path.join(REPO, 'BENCHMARKS.md')
    with open(path) as f:
        text = f.read()
    body = [MARK_BEGIN, '## Adaptive budget under overload', '',
            f'`make bench-overload` (`Tests/server/bench_overload.py --seconds {args.seconds:g} --target-ms '
            f'{args.target_ms:g} --write`), at {commit}. The server on one core with one compute thread, the '
            'open-loop load generator (Poisson arrivals, four Fashion-MNIST test images per request, binary tensors; latency from the '
            f'scheduled send) on the other; max_batch_size 32 (images), max_queue_delay 2 ms, max_queue_size {QUEUE_REQUESTS} (requests), '
            f'latency_target_ms {args.target_ms:g}, min_budget {MIN_BUDGET:g} (with the adaptive budget on, the queue also holds no '
            'more images than the floor runs within the target). The first 3 s of each level are not counted. '
            'Expected accuracy: docs/results.md\'s test accuracy at the budget each request ran at, interpolated '
            'between its caps.', '']
    body += [f'- {line}' for line in probe_lines_]
    body += [f'- the full budget (auto) sustains {capacity:.0f} requests/s, closed-loop at 32 connections (the median '
             'of three runs interleaved with the floor\'s); the floor '
             f'(budget {MIN_BUDGET:g}) {floor:.0f} requests/s, {floor / capacity:.2f}× as many; the hypervisor took '
             f'{capacity_stolen:.1f}% of the server\'s core meanwhile', '']
    body += table + ['']
    if step:
        body += ['A load step with the adaptive budget on (per phase, its first 2 s left out):', '',
                 '| phase | seconds | mean budget applied | p99 (ms) | 503 |', '| --- | --- | ---: | ---: | ---: |']
        body += [f'| {l:.1f}× | {b}–{e} | {m:.2f} | {p:.1f} | {r} |' for l, b, e, m, p, r in step]
        body += ['', '![budget and p99 latency over a load step](docs/img/adaptive-step.png)', '']
    body.append(MARK_END)
    section = '\n'.join(body)
    if MARK_BEGIN in text:
        text = text[:text.index(MARK_BEGIN)] + section + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip('\n') + '\n\n' + section + '\n'
    with open(path, 'w') as f:
        f.write(text)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
