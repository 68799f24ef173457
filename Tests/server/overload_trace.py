"""A timeline of one open-loop run against the adaptive budget: where refusals come from (docs/adaptive-budget.md,
"Where the refusals at 1.5x come from").

    PYTHONPATH=tools .venv/bin/python Tests/server/overload_trace.py --rate 520 [--seconds 20] [--bin 0.5] [--collect]

Starts `fashion-vit-acm` with the adaptive budget on, as `bench_overload.py` does (core 0, one compute thread),
warms it up, then sends `--rate` requests a second (Poisson, four images each) from core 1 while a second process
polls the server twenty times a second: its metrics (answers, refusals, the queue, the adaptive budget, batches),
its threads' CPU time, and core 0's `/proc/stat` counters. Prints one line per `--bin` seconds: requests due, sent
and received by the server; refusals; the queue; the budget; batches and their mean size; the CPU each thread
took; and core 0's busy, idle and stolen shares. `--collect` leaves Python's garbage collector on during the run,
as the load generator had it until 2026-12-03, to show its stalls."""
import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_overload as bo  # noqa: E402

METRICS = ['acm_request_success_total', 'acm_request_failure_total', 'acm_pending_requests',
           'acm_adaptive_budget_ratio', 'acm_batch_execution_total', 'acm_batch_size_images_sum']


def poll(port, pid, stop_at, queue):
    """Twenty times a second until `stop_at`: (time, metric sums, CPU ticks per thread name, core 0's counters)."""
    import http.client
    os.sched_setaffinity(0, {bo.CLIENT_CORE})
    conn = http.client.HTTPConnection(bo.HOST, port, timeout=5)
    rows = []
    while time.monotonic() < stop_at:
        start = time.monotonic()
        conn.request('GET', '/metrics')
        body = conn.getresponse().read().decode()
        sums = [sum(float(m.group(1)) for m in re.finditer(rf'^{name}(?:{{[^}}]*}})? (\S+)$', body, re.M))
                for name in METRICS]
        threads = {}
        for tid in os.listdir(f'/proc/{pid}/task'):
            with contextlib.suppress(OSError):
                with open(f'/proc/{pid}/task/{tid}/stat') as f:
                    stat = f.read()
                name = stat[stat.index('(') + 1:stat.rindex(')')]
                fields = stat[stat.rindex(')') + 2:].split()
                threads[name] = threads.get(name, 0) + int(fields[11]) + int(fields[12])
        rows.append((start, sums, threads, bo.core_counters(bo.SERVER_CORE)))
        time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
    queue.put(rows)


def report(origin, records, polls, width):
    """`records` from `bench_overload.open_loop`, its times in seconds from `origin`; `polls` from `poll`."""
    records = [r for r in records if r[4] == r[4]]  # those that went out
    due = np.array([r[0] for r in records])
    sent = np.array([r[4] for r in records])
    refused = np.array([r[2] == 503 for r in records])
    lag = sent - due
    print(f'{len(records)} requests, {int(refused.sum())} refused; the generator sent them late by '
          f'{np.percentile(lag, 50) * 1e3:.1f} ms (p50), {np.percentile(lag, 99) * 1e3:.1f} ms (p99), '
          f'{lag.max() * 1e3:.0f} ms at most')
    at = np.array([p[0] for p in polls]) - origin
    sums = np.array([p[1] for p in polls])
    arrived = sums[:, 0] + sums[:, 1] + sums[:, 2]  # answered, refused or waiting
    names = sorted(name for name in set().union(*(p[2] for p in polls))
                   if polls[-1][2].get(name, 0) > polls[0][2].get(name, 0))  # the threads that ran
    tick = os.sysconf('SC_CLK_TCK')
    print('     t  due sent arrived 503 queued budget batches images/batch | CPU % per thread | core '
          f'{bo.SERVER_CORE}: busy idle stolen %')
    for begin in np.arange(0, sent.max(), width):
        i, j = np.searchsorted(at, begin), np.searchsorted(at, begin + width)
        if j >= len(at) or j <= i:
            continue
        span = at[j] - at[i]
        window = (sent >= begin) & (sent < begin + width)
        batches = sums[j, 4] - sums[i, 4]
        per_batch = (sums[j, 5] - sums[i, 5]) / batches if batches else 0
        cpu = ' '.join(f'{name[:10]} {100 * (polls[j][2].get(name, 0) - polls[i][2].get(name, 0)) / tick / span:3.0f}'
                       for name in names)
        busy, idle, stolen = bo.core_shares(polls[i][3], polls[j][3])
        print(f'{begin:6.2f} {((due >= begin) & (due < begin + width)).sum():4d} {window.sum():4d} '
              f'{arrived[j] - arrived[i]:7.0f} {(window & refused).sum():3d} {sums[j, 2]:6.0f} {sums[j, 3]:6.2f} '
              f'{batches:7.0f} {per_batch:12.1f} | {cpu} | {busy:3.0f} {idle:3.0f} {stolen:3.0f}')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rate', type=float, required=True, help='requests per second (four images each)')
    ap.add_argument('--seconds', type=float, default=20)
    ap.add_argument('--bin', type=float, default=0.5, help='seconds per line')
    ap.add_argument('--target-ms', type=float, default=100)
    ap.add_argument('--collect', action='store_true', help="leave Python's garbage collector on while sending")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {bo.CLIENT_CORE})
    sys.path.insert(0, os.path.join(bo.REPO, 'tools'))
    from acm_tools.fashion import load as load_fashion
    images = load_fashion('test', limit=512)[0].numpy().astype(np.float32)
    server = bo.Server(bo.ACM, adaptive=args.target_ms)
    try:
        bo.warm_up(server.port, images)
        schedule = bo.poisson(args.rate, args.seconds, np.random.default_rng(15))
        queue = multiprocessing.Queue()
        poller = multiprocessing.Process(
            target=poll, args=(server.port, server.proc.pid, time.monotonic() + args.seconds + 1, queue))
        poller.start()
        origin = time.monotonic()
        records = asyncio.run(bo.open_loop(server.port, schedule, images, collect=args.collect, start=origin))
        polls = queue.get()
        poller.join()
    finally:
        server.close()
    report(origin, records, polls, args.bin)


if __name__ == '__main__':
    main()
