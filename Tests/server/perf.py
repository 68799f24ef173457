"""Triton's perf_analyzer against acm-serve: the runner the server tests use, and a benchmark that prints
throughput and p50/p99 latency by concurrency as a markdown table (for BENCHMARKS.md).

    .venv/bin/python Tests/server/perf.py                      # starts acm-serve on the fixtures itself
    .venv/bin/python Tests/server/perf.py --url 127.0.0.1:8000 --model vit-demo --concurrency 1 8 32
    .venv/bin/python Tests/server/perf.py --serve fashion-vit-acm=models/fashion-vit-acm --concurrency 32 \
        --engine-batch 32 --log-level info debug                # the server against the engine alone (BENCHMARKS.md)

With --serve the server is started here on that model directory (max_batch_size --max-batch, 32 by default); with --engine-batch the
engine's own throughput at that batch (`acm-bench model`, auto) is measured right before and after each
perf_analyzer run, and the CPU time perf_analyzer itself used is reported beside it (it shares the cores).
With --split-cores as well, the server and the engine alone run on the first core, and perf_analyzer on the others,
as a client on another machine would: the server's own cost against the engine's on the same core.

perf_analyzer comes from scripts/setup (.tools/perf_analyzer, with libcudart in .tools/cuda)."""
import argparse
import csv
import itertools
import json
import os
import resource
import subprocess
import time
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, Server, default_models, pinned  # noqa: E402

PERF_ANALYZER = os.path.join(REPO, '.tools', 'perf_analyzer', 'perf_analyzer')
CUDA_LIBS = os.path.join(REPO, '.tools', 'cuda')


def input_shape(url, model):
    """The model's input shape without the batch dimension, from its metadata."""
    with urllib.request.urlopen(f'http://{url}/v2/models/{model}', timeout=10) as r:
        [inp] = json.load(r)['inputs']
    return inp['shape'][1:]


def command(url, model, shape, concurrency, tensor_format='binary', input_data='random', interval_ms=1500,
            csv_path=None, asynchronous=False, cpus=None):
    """perf_analyzer's command line: one concurrency, windows of interval_ms, and a stability threshold so
    loose that three windows always count as stable (a run takes about 3 windows; it exits 0 unless a
    request fails)."""
    cmd = [PERF_ANALYZER, '-m', model, '-u', url, '-i', 'http', '-b', '1',
           '--shape', 'input:' + ','.join(str(d) for d in shape),
           '--input-data', input_data,
           f'--input-tensor-format={tensor_format}', f'--output-tensor-format={tensor_format}',
           '--concurrency-range', str(concurrency),
           '--measurement-mode', 'time_windows', '--measurement-interval', str(interval_ms),
           '--stability-percentage', '1000', '--max-trials', '5', '--percentile', '99']
    if csv_path:
        cmd += ['-f', csv_path]
    if asynchronous:
        # a few threads keep the requests in flight, instead of one blocking thread per request
        cmd += ['--async']
    return pinned(cpus) + cmd


LAST_CPU_SECONDS = None  # perf_analyzer's user + system CPU seconds in the last run()


def run(cmd, timeout=120):
    """-> (exit code, stdout and stderr together); perf_analyzer's CPU time goes to LAST_CPU_SECONDS."""
    global LAST_CPU_SECONDS
    env = dict(os.environ)
    env['LD_LIBRARY_PATH'] = CUDA_LIBS + (':' + env['LD_LIBRARY_PATH'] if env.get('LD_LIBRARY_PATH') else '')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU_SECONDS = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out.returncode, out.stdout + out.stderr


def read_csv(path):
    """perf_analyzer's -f report -> one dict per concurrency: throughput (infer/s), p50, p99 and avg (µs)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{'concurrency': int(r['Concurrency']), 'throughput': float(r['Inferences/Second']),
             'p50_us': float(r['p50 latency']), 'p99_us': float(r['p99 latency']),
             'avg_us': float(r['Avg latency']) if 'Avg latency' in r else None} for r in rows]


def input_file(path, shape, distribution, count=16, seed=0):
    """perf_analyzer's JSON input-data file with `count` images of values drawn from `distribution`: 'normal',
    N(0, 1), or 'uniform', U(-1, 1), which is what `acm-bench model` runs. Its own 'random' data are random bit
    patterns, NaNs among them, which acm-serve refuses (400)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    def image():
        return rng.uniform(-1, 1, shape) if distribution == 'uniform' else rng.standard_normal(shape)
    data = [{'input': {'content': image().astype(np.float32).ravel().tolist(), 'shape': shape}} for _ in range(count)]
    with open(path, 'w') as f:
        json.dump({'data': data}, f)
    return path


def measure(url, model, concurrency, input_data='normal', **kw):
    """Run perf_analyzer at one concurrency. input_data: 'normal' (N(0, 1) images), 'uniform' (U(-1, 1),
    as `acm-bench model`), 'zero', or a file. -> (exit code, output, row or None)"""
    shape = input_shape(url, model)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'report.csv')
        if input_data in ('normal', 'uniform'):
            input_data = input_file(os.path.join(d, 'input.json'), shape, input_data)
        cmd = command(url, model, shape, concurrency, csv_path=path, input_data=input_data, **kw)
        code, output = run(cmd)
        rows = read_csv(path) if code == 0 and os.path.exists(path) else []
    return code, output, (rows[0] if rows else None), cmd


def engine_rate(model_dir, batch, seconds=3, cpus=None):
    """The engine alone (`acm-bench model`, auto, on U(-1, 1) images) at one batch size, on `cpus` (taskset's list;
    default: this process's) -> (images/s, CPU µs per image, compute fraction)."""
    bench = os.path.join(os.path.dirname(os.environ.get('ACM_SERVE_BIN', '')) or os.path.join(REPO, '.build', 'release'),
                         'acm-bench')
    out = subprocess.run([*pinned(cpus), bench, 'model', '--model', model_dir, '--batch', str(batch), '--budget', '0',
                          '--seconds', str(seconds), '--json'], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report['images_per_s'], report['cpu_us_per_image'], report['compute_fraction']


def thread_cpu(pid):
    """CPU seconds (user + system) of a process's threads, summed by thread name: {'MHD-worker': s, ...}."""
    tick = os.sysconf('SC_CLK_TCK')
    totals = {}
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{tid}/stat') as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended
            continue
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2:].split()
        totals[name] = totals.get(name, 0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def serve_and_compare(args):
    """--serve: per log level and HTTP thread count, the engine alone, perf_analyzer against the server, the engine again; and where
    the machine's CPU went: perf_analyzer's, the server's HTTP threads' and its model threads' per request,
    against the engine's CPU per image alone."""
    name, model_dir = args.serve.split('=', 1)
    mine = sorted(os.sched_getaffinity(0))
    if args.split_cores:
        if len(mine) < 2:
            sys.exit('--split-cores needs 2 cores or more')
        # the server and the engine alone on the first core, perf_analyzer on the rest: the client off the server's core
        server_cpus, client_cpus = str(mine[0]), ','.join(map(str, mine[1:]))
        cores = 1
        where = f'server and engine alone on core {server_cpus}, perf_analyzer on {client_cpus}'
    else:
        server_cpus = client_cpus = None
        cores = len(mine)
        where = f'{cores} cores shared'
    print(f'{name}: perf_analyzer, batch 1 per request, binary tensors, auto; server max_batch_size {args.max_batch}, '
          f'max_queue_delay 2000 µs; engine alone at batch {args.engine_batch}; both on U(-1, 1) images; {where}\n')
    print('| log level | HTTP threads | concurrency | server infer/s | p50 (ms) | p99 (ms) | engine images/s (before, after) | '
          'compute fraction: server, engine | server ÷ engine | perf_analyzer CPU (cores) | CPU µs per request: '
          'perf_analyzer, HTTP threads, model threads (engine alone) | ceiling ÷ engine |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for level, threads, c in itertools.product(args.log_level, args.http_threads, args.concurrency):
        before, engine_cpu_before, engine_fraction = engine_rate(model_dir, args.engine_batch, cpus=server_cpus)
        server = Server(models={name: {'path': os.path.abspath(model_dir), 'max_batch_size': args.max_batch}},
                        args=('--log-level', level), http_threads=threads, cpus=server_cpus)
        try:
            server_cpu_before = thread_cpu(server.proc.pid)
            start = time.monotonic()
            # the engine's own inputs: in auto mode what a pass costs depends on the images (N(0, 1) noise runs at
            # a higher compute fraction than U(-1, 1))
            code, output, row, cmd = measure(server.url, name, c, input_data='uniform', interval_ms=args.interval_ms,
                                             asynchronous=args.asynchronous, cpus=client_cpus)
            wall = time.monotonic() - start
            server_cpu = {k: v - server_cpu_before.get(k, 0) for k, v in thread_cpu(server.proc.pid).items()}
            if code != 0 or row is None:
                print(' '.join(cmd), file=sys.stderr)
                print(output, file=sys.stderr)
                sys.exit(f'perf_analyzer exited with {code} at concurrency {c}')
            served = server_requests(server.url, name)
            fraction = server_fraction(server.url, name)
        finally:
            server.close()
        after, engine_cpu_after, _ = engine_rate(model_dir, args.engine_batch, cpus=server_cpus)
        engine = (before + after) / 2
        engine_cpu = (engine_cpu_before + engine_cpu_after) / 2
        # per request over the whole perf_analyzer run, its warm-up included (hence `served`, not
        # perf_analyzer's windowed throughput)
        client = LAST_CPU_SECONDS / served * 1e6
        # libmicrohttpd names its threads MHD-worker (a pool) or MHD-single (one thread)
        http = sum(v for k, v in server_cpu.items() if k.startswith('MHD-')) / served * 1e6
        model = sum(v for k, v in server_cpu.items() if not k.startswith('MHD-')) / served * 1e6
        # the most a server could serve if its model threads ran at the engine's own CPU per image and the
        # rest cost what it did here: the cores over all that one request costs on them (perf_analyzer's CPU
        # too, unless it has cores of its own)
        ceiling = cores / ((0 if args.split_cores else client) + http + engine_cpu) * 1e6
        print(f'| {level} | {threads} | {c} | {row["throughput"]:.0f} | {row["p50_us"] / 1000:.2f} | '
              f'{row["p99_us"] / 1000:.2f} | {before:.0f}, {after:.0f} | {fraction:.3f}, {engine_fraction:.3f} | '
              f'{row["throughput"] / engine:.2f} | '
              f'{LAST_CPU_SECONDS / wall:.2f} | {client:.0f}, {http:.0f}, {model:.0f} ({engine_cpu:.0f}) | '
              f'{ceiling / engine:.2f} |', flush=True)


def metric_sum(url, model, metric):
    """`metric`'s value for `model` in the server's /metrics."""
    with urllib.request.urlopen(f'http://{url}/metrics', timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(metric + '{') and f'model="{model}"' in line:
                return float(line.rsplit(' ', 1)[1])
    raise AssertionError(f'/metrics has no {metric} for {model}')


def server_requests(url, model):
    """Images the server has run for `model`, from its /metrics (acm_batch_size_images_sum)."""
    return metric_sum(url, model, 'acm_batch_size_images_sum')


def server_fraction(url, model):
    """The mean compute fraction of the requests the server answered for `model`, from its /metrics."""
    return (metric_sum(url, model, 'acm_compute_fraction_ratio_sum')
            / metric_sum(url, model, 'acm_compute_fraction_ratio_count'))


def table(rows):
    lines = ['| concurrency | throughput (infer/s) | p50 latency (ms) | p99 latency (ms) |',
             '| ---: | ---: | ---: | ---: |']
    for r in rows:
        lines.append(f'| {r["concurrency"]} | {r["throughput"]:.0f} | {r["p50_us"] / 1000:.2f} | '
                     f'{r["p99_us"] / 1000:.2f} |')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--url', help='HOST:PORT of a running server (default: start acm-serve on the fixtures)')
    ap.add_argument('--model', default='vit-mixed')
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 8, 32])
    ap.add_argument('--format', choices=['binary', 'json'], default='binary', help='tensor format of requests and answers')
    ap.add_argument('--budget', type=float, help='the model\'s default_budget (default: none, auto); only for the '
                    'server started here: perf_analyzer 2.40 sends no request parameters over HTTP')
    ap.add_argument('--queue-delay-us', type=int, help='the batcher\'s max_queue_delay_microseconds (default: the '
                    'config\'s, 2000); only for the server started here')
    ap.add_argument('--interval-ms', type=int, default=3000, help='measurement window')
    ap.add_argument('--serve', metavar='NAME=DIR', help='start the server here on this model directory and compare it '
                    'with the engine alone (see above)')
    ap.add_argument('--engine-batch', type=int, default=32, help='with --serve: the engine\'s batch size')
    ap.add_argument('--max-batch', type=int, default=32, help='with --serve: the server\'s max_batch_size')
    ap.add_argument('--log-level', nargs='+', default=['info'], help='with --serve: the server\'s log levels to time')
    ap.add_argument('--http-threads', type=int, nargs='+', default=[4], help='with --serve: the server\'s http_threads '
                    'to time (4: config/acm-serve.json\'s)')
    ap.add_argument('--split-cores', action='store_true', help='with --serve: the server and the engine alone on the '
                    'first core, perf_analyzer on the others')
    ap.add_argument('--async', dest='asynchronous', action='store_true',
                    help='perf_analyzer\'s asynchronous mode (a few threads keep the requests in flight; the default is '
                    'one thread per concurrent request)')
    args = ap.parse_args(argv)
    if args.serve:
        return serve_and_compare(args)

    server = None
    if args.url is None:
        batcher = {'default_budget': args.budget}
        if args.queue_delay_us is not None:
            batcher['max_queue_delay_microseconds'] = args.queue_delay_us
        server = Server(models=default_models(**batcher))
        args.url = server.url
    elif args.budget is not None or args.queue_delay_us is not None:
        ap.error('--budget and --queue-delay-us need the server started here (set them in your server\'s config)')
    try:
        rows = []
        for c in args.concurrency:
            code, output, row, cmd = measure(args.url, args.model, c, tensor_format=args.format,
                                             interval_ms=args.interval_ms, asynchronous=args.asynchronous)
            if code != 0 or row is None:
                print(' '.join(cmd), file=sys.stderr)
                print(output, file=sys.stderr)
                sys.exit(f'perf_analyzer exited with {code} at concurrency {c}')
            rows.append(row)
        budget = 'auto' if args.budget is None else f'default_budget {args.budget}'
        delay = '' if args.queue_delay_us is None else f', max_queue_delay {args.queue_delay_us} µs'
        print(f'{args.model}, batch 1, {args.format} tensors, {budget}{delay}:\n')
        print(table(rows))
    finally:
        if server:
            server.close()


if __name__ == '__main__':
    main()
