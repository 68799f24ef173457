"""
Our engine against OpenVINO and ONNX Runtime on the same network, in images per second at a fixed batch size:
`make bench-peers` (the Fashion-MNIST teacher and ACM) and `make bench-peers MODEL=vit-b` (random-weight ViT-B/16,
acm_tools.vitb_model, built into build/models when missing).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.bench_peers [--model fashion|vit-b] [--batch 1 32]
        [--seconds 2] [--passes 3] [--precision f32 bf16] [--write]

What runs, each measurement in a fresh process (a `--worker` run of this module, or acm-bench), so that no engine
inherits another's threads, caches or allocations:
- The peers run the dense model (the teacher) as ONNX, exported from our PyTorch reference by acm_tools.onnx_export
  and checked against PyTorch (max |diff| <= 1e-4) through ONNX Runtime before anything is timed.
- OpenVINO: compile_model on the CPU with INFERENCE_PRECISION_HINT f32 or bf16 (bf16 is its default on a CPU
  with avx512_bf16 or AMX), INFERENCE_NUM_THREADS 2, PERFORMANCE_HINT LATENCY, the model reshaped to the measured
  batch first: static shapes are what a server with a fixed batch would give it (faster at batch 1 than the
  dynamic batch in a quick check here). The precision its runtime model reports for its GEMM and convolution
  nodes is printed.
- ONNX Runtime: the CPU provider, intra_op_num_threads 2, inter_op_num_threads 1, sequential, all graph
  optimisations, the batch dimension fixed (add_free_dimension_override_by_name), likewise. Its bf16 row is n/a
  while its CPU provider has no bfloat16 MatMul kernel (on x86 it has none; its one bf16 GEMM path,
  mlas.enable_gemm_fastmath_arm64_bfloat16, is ARM64 only): each run checks by building a one-node bf16 MatMul
  session and prints ORT's own error as the reason.
- acm-serve: `acm-bench model --json` on 2 workers, one batch size, one policy and one --precision per process
  (f32 rows, then the same models in bf16: the "bf16" rows; a bf16 row that ran f32, on a CPU without AVX-512
  BF16, says so). Its images are
  uniform in [-1, 1] from its own generator, the peers' N(0, 1): the dense speed does not depend on the values;
  the ACM's auto choices do.
Each measurement warms up (2 runs and at least 0.2 s), then runs for --seconds; images/s = images / elapsed.
Pass p runs every row at every batch size once before pass p + 1 starts, so that the machine's noise spreads over
all rows. The table gives each row's best and median images/s over the passes and the best's ratio to OpenVINO
fp32's best at the same batch size; then the goals, computed from the bests. The goals between two of our own
rows (the ACM against our dense model, a cap against uniform k) are then measured again --passes times, each in one
acm-bench process that interleaves those rows batch by batch (`--interleave --baseline`), from the median batches.

First a probe of the machine, so that runs on different machines can be compared: the CPU, its bf16 flags, and a
1024^3 float32 sgemm through numpy on 1 and 2 threads (threadpoolctl).

--write replaces this model's section of BENCHMARKS.md, between `<!-- bench-peers:MODEL begin -->` and
`<!-- bench-peers:MODEL end -->` (appended under a "## Peers: ..." heading when absent); text outside the markers
stays. The raw results always go to build/bench-peers-MODEL.json.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from .machine import cpu_name, git_commit

# -----------------------------------------------------------------------------
# config
binary = '.build/release/acm-bench'
benchmarks_md = 'BENCHMARKS.md'
onnx_dir = 'build/bench-peers'
out_json = 'build/bench-peers-{model}.json'
threads = 2
passes = 3
warmup_runs, warmup_seconds = 2, 0.2
input_seed = 0
sgemm_n = 1024
# each model: its dense and ACM directories, what the dense one is called, batch sizes, seconds per measurement,
# the ACM policies timed, and the goals: (number, row, ratio to row, batch, at least)
models = {
    'fashion': dict(
        title='Fashion-MNIST ViT against OpenVINO and ONNX Runtime',
        dense='models/fashion-vit-teacher', acm='models/fashion-vit-acm', dense_name='teacher',
        batches=[1, 32], seconds=2.0,
        policies=['auto', 'cap 0.5', 'cap 0.25', 'uniform 1', 'uniform 2'],
        goals=[(1, 'ours dense', 'ov fp32', 1, 1.0), (1, 'ours dense', 'ov fp32', 32, 1.0),
               (2, 'ours cap 0.5', 'ov fp32', 1, 1.2), (2, 'ours cap 0.5', 'ov fp32', 32, 1.35),
               (3, 'ours cap 0.25', 'ov fp32', 32, 1.9),
               (4, 'ours cap 0.5', 'ours dense', 32, 1.4), (4, 'ours auto', 'ours dense', 32, 1.3),
               (5, 'ours cap 0.25', 'ours uniform 1', 32, 0.85), (5, 'ours cap 0.5', 'ours uniform 2', 32, 0.85),
               # issue 12's, in bf16 against OpenVINO's bf16
               ('bf16-1', 'ours dense bf16', 'ov bf16', 32, 1.0),
               ('bf16-2', 'ours cap 0.5 bf16', 'ov bf16', 32, 1.3), ('bf16-2', 'ours cap 0.5 bf16', 'ov bf16', 1, 1.1)],
        bf16_policies=['auto', 'cap 0.5', 'cap 0.25']),
    'vit-b': dict(
        title='ViT-B/16 (random weights) against OpenVINO and ONNX Runtime',
        dense='build/models/vit-b-dense', acm='build/models/vit-b-acm', dense_name='dense',
        batches=[1, 8], seconds=3.0,
        policies=['cap 0.5', 'cap 0.25'],
        goals=[(1, 'ours dense', 'ov fp32', 1, 0.95), (1, 'ours dense', 'ov fp32', 8, 0.95),
               (2, 'ours cap 0.5', 'ov fp32', 8, 1.7),
               ('bf16-3', 'ours dense bf16', 'ov bf16', 8, 1.0)],
        bf16_policies=['cap 0.5']),
}
# -----------------------------------------------------------------------------


def rows(m, precisions=('f32', 'bf16')):
    """The table's rows: [(key, label, what to run)]; ours in each of `precisions`."""
    d = m['dense_name']
    out = [('ov fp32', f'OpenVINO fp32, {d}', dict(engine='openvino', precision='f32')),
           ('ov bf16', f'OpenVINO bf16, {d}', dict(engine='openvino', precision='bf16')),
           ('ort fp32', f'ONNX Runtime fp32, {d}', dict(engine='onnxruntime', precision='f32')),
           ('ort bf16', f'ONNX Runtime bf16, {d}', dict(engine='onnxruntime', precision='bf16')),
           ]
    if 'f32' in precisions:
        out.append(('ours dense', f'acm-serve, {d}', dict(engine='acm-serve', model='dense', policy='auto',
                                                          precision='f32')))
        for p in m['policies']:
            label = p.replace('uniform ', 'uniform k=')
            out.append((f'ours {p}', f'acm-serve ACM, {label}',
                        dict(engine='acm-serve', model='acm', policy=p, precision='f32')))
    if 'bf16' in precisions:
        out.append(('ours dense bf16', f'acm-serve bf16, {d}',
                    dict(engine='acm-serve', model='dense', policy='auto', precision='bf16')))
        for p in m['bf16_policies']:
            out.append((f'ours {p} bf16', f'acm-serve bf16 ACM, {p}',
                        dict(engine='acm-serve', model='acm', policy=p, precision='bf16')))
    return out


# -----------------------------------------------------------------------------
# the machine

def bf16_flags():
    """{flag: present} for the CPU flags that bf16 kernels use."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(line.split(':', 1)[1].split() for line in f if line.startswith('flags'))
    except (OSError, StopIteration):
        flags = []
    return {name: name in flags for name in ('avx512_bf16', 'amx_bf16')}


def sgemm_probe(n=sgemm_n, repeats=8):
    """GFLOP/s of an n^3 float32 matmul through numpy's BLAS on 1 and 2 threads (best of repeats), and that BLAS.
    Run before torch is imported, so that threadpoolctl sees numpy's BLAS alone. The OpenVINO and ONNX Runtime
    GEMMs are their own (oneDNN, MLAS), so this only says how fast the machine is today."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    gflops = {}
    for t in (1, 2):
        with threadpool_limits(limits=t, user_api='blas'):
            a @ b
            best = float('inf')
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t0)
        gflops[t] = 2 * n ** 3 / best / 1e9
    blas = next((i for i in threadpool_info() if i['user_api'] == 'blas'), {})
    return dict(gflops=gflops, blas=f'{blas.get("internal_api", "?")} {blas.get("version", "?")}, '
                                    f'{blas.get("architecture", "?")} kernels')


def probe_lines(probe):
    flags = ', '.join(f'{k} {"yes" if v else "no"}' for k, v in probe['bf16_flags'].items())
    g = probe['sgemm']['gflops']
    v = probe['versions']
    return [f'CPU: {probe["cpu"]}, {probe["cores"]} cores; bf16 flags: {flags}',
            f'sgemm {sgemm_n}^3 float32 (numpy matmul, {probe["sgemm"]["blas"]}, threads set with threadpoolctl): '
            f'{g[1]:.0f} GFLOP/s on 1 thread, {g[2]:.0f} GFLOP/s on 2',
            f'OpenVINO {v["openvino"]}, ONNX Runtime {v["onnxruntime"]}, torch {v["torch"]} (export), '
            f'numpy {v["numpy"]}']


# -----------------------------------------------------------------------------
# the peers, in a worker process: python -m acm_tools.bench_peers --worker '{...}'

def openvino_runner(path, x, precision):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    model.reshape(list(x.shape))  # static shapes at the measured batch
    compiled = core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': precision,
                                                 'INFERENCE_NUM_THREADS': threads, 'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()
    counts = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info['layerType'].astype(str) if 'layerType' in info else ''
        if kind in ('FullyConnected', 'MatMul', 'Convolution'):
            key = f'{kind} {info["runtimePrecision"].astype(str)}'
            counts[key] = counts.get(key, 0) + 1
    nodes = ', '.join(f'{k} ×{c}' for k, c in sorted(counts.items()))
    reported = (f'hint {compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}, '
                f'{compiled.get_property("INFERENCE_NUM_THREADS")} threads, '
                f'{compiled.get_property("NUM_STREAMS")} stream; runtime nodes: {nodes}')
    return lambda: request.infer({0: x}), reported


def onnxruntime_runner(path, x, precision):
    import onnxruntime as ort
    assert precision == 'f32', 'ONNX Runtime runs fp32 only here (ort_bf16_unsupported)'
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_free_dimension_override_by_name('batch', x.shape[0])  # static shapes at the measured batch
    session = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    feed = {'input': x}
    return lambda: session.run(None, feed), 'fp32'


def worker(spec):
    """One measurement in this process; prints one JSON line. Imports only the runtime it times."""
    x = np.random.default_rng(input_seed).standard_normal((spec['batch'], *spec['shape']), dtype=np.float32)
    runner = openvino_runner if spec['engine'] == 'openvino' else onnxruntime_runner
    run, reported = runner(spec['onnx'], x, spec['precision'])
    n, t0 = 0, time.perf_counter()
    while n < warmup_runs or time.perf_counter() - t0 < warmup_seconds:
        run()
        n += 1
    runs, elapsed, t0 = 0, 0.0, time.perf_counter()
    while elapsed < spec['seconds']:
        run()
        runs += 1
        elapsed = time.perf_counter() - t0
    print(json.dumps(dict(images_per_s=runs * spec['batch'] / elapsed, ms_per_batch=elapsed / runs * 1000,
                          runs=runs, reported=reported)))


def ort_bf16_unsupported():
    """None when ONNX Runtime's CPU provider runs a bfloat16 MatMul, else why not (ORT's own error)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    a, b, y = (helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [4, 4]) for n in 'aby')
    graph = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['y'], name='bf16_matmul')], 'probe',
                              [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    except Exception as e:  # ORT raises its own Fail/NotImplemented types
        return f'ONNX Runtime {ort.__version__} CPU provider: {str(e).split(" : ")[-1].strip()}'
    return None


# -----------------------------------------------------------------------------
# measurements

def same_policy(a, b):
    """'cap 0.5' == 'cap 0.50': acm-bench prints the budget as Swift formats a Double."""
    (ka, *va), (kb, *vb) = a.split(), b.split()
    return ka == kb and [float(v) for v in va] == [float(v) for v in vb]


def ours_args(policy):
    kind, *value = policy.split()
    if kind == 'auto':
        return ['--budget', '0']
    if kind == 'cap':
        return ['--budget', value[0]]
    if kind == 'uniform':
        return ['--uniform-k', value[0]]
    raise ValueError(f'policy {policy!r}')


def measure_ours(bin, model_dir, policy, batch, seconds, precision='f32'):
    """acm-bench in its own process -> {images_per_s, ms_per_batch, compute_fraction, precision} (the precision it
    ran, f32 where bf16 was asked for on a CPU without it). acm-bench may time other policies in the same run too
    (its defaults); the line of this policy is taken."""
    cmd = [bin, 'model', '--model', model_dir, '--batch', str(batch), '--seconds', str(seconds),
           '--threads', str(threads), '--precision', precision, '--json', *ours_args(policy)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr}')
    for line in r.stdout.splitlines():
        if line.startswith('{'):
            obj = json.loads(line)
            if obj['batch'] == batch and same_policy(obj['policy'], policy):
                return dict(images_per_s=obj['images_per_s'], ms_per_batch=obj['ms_per_batch'],
                            compute_fraction=obj['compute_fraction'], precision=obj['precision'])
    raise RuntimeError(f'{shlex.join(cmd)} printed no JSON line for batch {batch}, policy {policy!r}:\n{r.stdout}')


def measure_interleaved(bin, dirs, policies, batch, seconds):
    """Our dense model and the ACM model under `policies`, in one acm-bench process that runs one batch of each in
    turn (`--interleave --baseline`) for `seconds` each -> {row key: {images_per_s (median batch), best_images_per_s,
    compute_fraction}}: ratios between our own rows that the machine's changes of speed, which move separate
    processes' bests by ±10% here, move less."""
    cmd = [bin, 'model', '--model', dirs['acm'], '--baseline', dirs['dense'], '--batch', str(batch),
           '--seconds', str(seconds), '--threads', str(threads), '--interleave', '--json']
    for policy in policies:
        cmd += ours_args(policy)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr}')
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith('{'):
            obj = json.loads(line)
            key = 'ours dense' if obj['policy'] == 'baseline' else next(
                (f'ours {p}' for p in policies if same_policy(obj['policy'], p)), None)
            if key is not None:
                out[key] = dict(images_per_s=obj['images_per_s'], best_images_per_s=obj['best_images_per_s'],
                                compute_fraction=obj['compute_fraction'])
    missing = [k for k in ['ours dense'] + [f'ours {p}' for p in policies] if k not in out]
    if missing:
        raise RuntimeError(f'{shlex.join(cmd)} printed no line for {missing}:\n{r.stdout}')
    return out


def interleaved_goals(m, measured):
    """{batch: measure_interleaved's result} -> [{text, figure, met}] for the goals between two of our f32 rows, from
    the median batches of one interleaved run."""
    out = []
    for number, key, base, b, at_least in m['goals']:
        if b not in measured or key not in measured[b] or base not in measured[b]:
            continue
        figure = measured[b][key]['images_per_s'] / measured[b][base]['images_per_s']
        text = (f'({number}) {key.removeprefix("ours ")} ≥ {at_least:.2f}× {base.removeprefix("ours ")} at batch {b}, '
                f'interleaved: {figure:.2f}× — {"met" if figure >= at_least else "missed"}')
        out.append(dict(text=text, figure=figure, met=figure >= at_least))
    return out


def measure_peer(spec):
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tools, os.environ.get('PYTHONPATH')])))
    cmd = [sys.executable, '-m', 'acm_tools.bench_peers', '--worker', json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f'the {spec["engine"]} worker failed ({r.returncode}) on {spec}:\n{r.stderr}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(table_rows, dirs, onnx_path, shape, batches, seconds, n_passes, bin, skip):
    """n_passes interleaved passes -> {row key: {batch: [measurement per pass]}}. skip: {row key: reason}."""
    res = {key: {b: [] for b in batches} for key, _, _ in table_rows if key not in skip}
    for p in range(1, n_passes + 1):
        for key, label, what in table_rows:
            if key in skip:
                continue
            for b in batches:
                if what['engine'] == 'acm-serve':
                    m = measure_ours(bin, dirs[what['model']], what['policy'], b, seconds, what['precision'])
                    note = f'compute fraction {m["compute_fraction"]:.3f}'
                    if m['precision'] != what['precision']:
                        note += f', ran {m["precision"]}: no {what["precision"]} on this CPU'
                else:
                    m = measure_peer(dict(engine=what['engine'], precision=what['precision'], onnx=onnx_path,
                                          shape=list(shape), batch=b, seconds=seconds))
                    note = m['reported']
                res[key][b].append(m)
                print(f'  pass {p}, {label}, batch {b}: {m["images_per_s"]:.1f} images/s, '
                      f'{m["ms_per_batch"]:.3f} ms per batch ({note})', flush=True)
    return res


# How far apart the passes' realized compute fractions may be (acm-bench prints five decimals; the engine's
# choices on the same input are the same from one process to the next).
FRACTION_SPREAD = 1e-3


def summarize(res):
    """{row: {batch: {best, median, compute_fraction}}}: images/s best and median over the passes."""
    out = {}
    for key, by_batch in res.items():
        out[key] = {}
        for b, ms in by_batch.items():
            rates = [m['images_per_s'] for m in ms]
            s = dict(best=max(rates), median=statistics.median(rates))
            if 'compute_fraction' in ms[0]:
                fractions = [m['compute_fraction'] for m in ms]
                # The same seeded images through the same model: every pass must realize the same fraction. A pass
                # that does not ran a different network (a bug), and its speed would otherwise stand as the best.
                if max(fractions) - min(fractions) > FRACTION_SPREAD:
                    raise RuntimeError(f'{key}, batch {b}: the passes realized different compute fractions '
                                       f'({", ".join(f"{f:.3f}" for f in fractions)}) on the same input')
                s['compute_fraction'] = statistics.median(fractions)
            if 'precision' in ms[0]:
                s['precision'] = ms[0]['precision']
            out[key][b] = s
    return out


# -----------------------------------------------------------------------------
# the report

def rate(images_per_s):
    """Images per second for the table: three significant figures at least (ViT-B runs 5 to 20 images/s)."""
    return f'{images_per_s:.0f}' if images_per_s >= 100 else f'{images_per_s:#.3g}'


def table(table_rows, summary, batches, skip):
    head = '| engine, model | ' + ' | '.join(f'b={b} best | b={b} median | b={b} × OV fp32' for b in batches)
    lines = [head + ' | compute fraction |',
             '| --- | ' + ' | '.join('---: | ---: | ---:' for _ in batches) + ' | ---: |']
    base = summary.get('ov fp32', {})
    for key, label, what in table_rows:
        if key in skip:
            dashes = ' | '.join('– | – | –' for _ in batches)
            lines.append(f'| {label}: n/a ({skip[key]}) | {dashes} | – |')
            continue
        ran = summary[key][batches[0]].get('precision')
        if ran is not None and ran != what.get('precision'):
            label += f' (ran {ran}: no {what["precision"]} on this CPU)'
        cells = []
        for b in batches:
            s = summary[key][b]
            ratio = f'{s["best"] / base[b]["best"]:.2f}' if b in base else '–'
            cells.append(f'{rate(s["best"])} | {rate(s["median"])} | {ratio}')
        fraction = ' / '.join(f'{summary[key][b]["compute_fraction"]:.3f}' for b in batches) \
            if what.get('model') == 'acm' else '–'
        lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {fraction} |')
    return '\n'.join(lines)


def goals(m, table_rows, summary):
    """[{text, figure, met}] for each goal: the ratio of the two rows' bests at that batch size."""
    labels = {key: label.replace(', ', ' ') for key, label, _ in table_rows}
    out = []
    for number, key, base, b, at_least in m['goals']:
        if key not in labels or base not in labels:
            continue  # a row that --precision left out
        text = f'({number}) {labels[key]} ≥ {at_least:.2f}× {labels[base]} at batch {b}'
        if b not in summary.get(key, {}) or b not in summary.get(base, {}):
            out.append(dict(text=f'{text}: not measured', figure=None, met=None))
            continue
        figure = summary[key][b]['best'] / summary[base][b]['best']
        fraction = summary[key][b].get('compute_fraction')
        realized = f' (compute fraction {fraction:.3f})' if fraction is not None and fraction < 1 else ''
        out.append(dict(text=f'{text}: {figure:.2f}×{realized} — {"met" if figure >= at_least else "missed"}',
                        figure=figure, met=figure >= at_least))
    return out


def markers(model):
    return f'<!-- bench-peers:{model} begin -->', f'<!-- bench-peers:{model} end -->'


def write_section(path, model, title, body):
    """Put body between this model's markers in path, or append a '## Peers: title' section holding them. Only the
    text between the markers changes: other sections, and what someone wrote after the end marker, stay."""
    begin, end = markers(model)
    text = open(path).read() if os.path.exists(path) else ''
    block = f'{begin}\n{body.strip()}\n{end}'
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    elif i >= 0 or j >= 0:
        raise ValueError(f'{path}: the markers of {model} are not one {begin} ... {end} pair')
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + f'## Peers: {title}\n\n{block}\n'
    with open(path, 'w') as f:
        f.write(text)


def plural(n, noun):
    return f'{n} {noun}' + ('' if n == 1 else 'es' if noun.endswith('s') else 's')


def vitb_stale(d, acm):
    """Whether build/models' ViT-B is missing or was built to another description than
    acm_tools.vitb_model's current one (the weights are random, so only the shapes matter)."""
    from .modelio import config_to_json
    from . import vitb_model
    path = os.path.join(d, 'config.json')
    if not os.path.exists(path):
        return True
    with open(path) as f:
        have = json.load(f)
    want = json.loads(json.dumps(config_to_json(vitb_model.config(acm=acm))))
    return have.get('vit') != want['vit'] or have.get('acm', {}) != want['acm']


def section(command, report):
    s = report['settings']
    lines = ['```sh', command, '```', '',
             f'{report["date"]}, commit {report["commit"]}; batch sizes {", ".join(map(str, s["batches"]))}, '
             f'{s["seconds"]:g} s per measurement, {plural(s["passes"], "interleaved pass")}, {s["threads"]} threads '
             f'each:', '']
    lines += [f'- {line}' for line in report['probe_lines']]
    lines += [f'- {line}' for line in report['precision_lines']]
    lines += ['', 'Images/s, best and median over the passes; × OV fp32: best over OpenVINO fp32\'s best at the '
                  'same batch size.', '', report['table'], '', 'Goals (ratios of bests):', '']
    lines += [f'- {g["text"]}' for g in report['goals']]
    runs = report.get('interleaved') or []
    if runs:
        lines += ['', f'The goals between our own rows again, {plural(len(runs), "run")} of one acm-bench process each '
                      '(`acm-bench model --interleave --baseline`: one batch of each row in turn, '
                      f'{s["seconds"]:g} s of batches per row; ratios of median batches):', '']
        for i, g in enumerate(runs[0]['goals']):
            figures = ', '.join(f'{r["goals"][i]["figure"]:.2f}' for r in runs)
            met = sum(r['goals'][i]['met'] for r in runs)
            lines.append(f'- {g["text"].split(", interleaved")[0]}: {figures} (met in {met} of {len(runs)})')
    return '\n'.join(lines)


# -----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', choices=sorted(models), default='fashion', help='(default: %(default)s)')
    p.add_argument('--batch', type=int, nargs='+', help='batch sizes (default: 1 32 for fashion, 1 8 for vit-b)')
    p.add_argument('--seconds', type=float, help='seconds per measurement (default: 2 for fashion, 3 for vit-b)')
    p.add_argument('--passes', type=int, default=passes, help='interleaved passes (default: %(default)s)')
    p.add_argument('--precision', nargs='+', choices=['f32', 'bf16'], default=['f32', 'bf16'],
                   help='what our rows run in (default: both; the peers always run fp32 and bf16)')
    p.add_argument('--bin', default=os.environ.get('ACM_BENCH_BIN', binary), help='acm-bench (default: %(default)s)')
    p.add_argument('--write', action='store_true', help=f'replace this model\'s section of {benchmarks_md}')
    p.add_argument('--benchmarks', default=benchmarks_md, help='the file --write edits (default: %(default)s)')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.passes < 1:
        p.error('--passes must be ≥ 1')
    m = models[args.model]
    batches = args.batch or m['batches']
    seconds = args.seconds or m['seconds']
    argv = sys.argv[1:] if argv is None else argv
    command = f'PYTHONPATH=tools {os.path.relpath(sys.executable)} -m acm_tools.bench_peers {shlex.join(argv)}'.strip()
    if not os.access(args.bin, os.X_OK):
        p.error(f'{args.bin} is missing: swift build -c release --product acm-bench')

    # the machine, first: sgemm_probe wants numpy's BLAS alone in the process
    probe = dict(cpu=cpu_name(), cores=os.cpu_count(), bf16_flags=bf16_flags(), sgemm=sgemm_probe())

    # the models, and the dense one as ONNX, checked (imported here: the workers run this module and load only
    # the runtime they time)
    import onnxruntime
    import openvino
    import torch
    from . import vitb_model
    from .onnx_export import export_onnx, onnx_max_diff, tolerance
    probe['versions'] = dict(openvino=openvino.__version__.split('-')[0], onnxruntime=onnxruntime.__version__,
                             torch=torch.__version__, numpy=np.__version__)
    dirs = dict(dense=m['dense'], acm=m['acm'])
    if args.model == 'vit-b':
        for kind, d in dirs.items():
            if vitb_stale(d, acm=kind == 'acm'):
                print(f'building {d} (acm_tools.vitb_model)', flush=True)
                vitb_model.build(d, acm=kind == 'acm')
    lines = probe_lines(probe)
    print('\n'.join(lines), flush=True)
    os.makedirs(onnx_dir, exist_ok=True)
    onnx_path = os.path.join(onnx_dir, os.path.basename(os.path.normpath(m['dense'])) + '.onnx')
    model = export_onnx(m['dense'], onnx_path)
    diff = onnx_max_diff(model, onnx_path)
    shape = (model.cfg.num_channels, model.cfg.image_size, model.cfg.image_size)
    del model
    print(f'{onnx_path}: max |ONNX Runtime - PyTorch| = {diff:.2e} on N(0, 1) input', flush=True)
    if not diff <= tolerance:
        raise SystemExit(f'the ONNX export differs from PyTorch by {diff:.2e} > {tolerance}: not timing it')
    skip = {}
    reason = ort_bf16_unsupported()
    if reason is not None:
        skip['ort bf16'] = reason
        print(f'ONNX Runtime bf16: n/a ({reason})', flush=True)
    else:
        skip['ort bf16'] = 'its CPU provider runs a bf16 MatMul now; converting the model to bf16 is not written yet'

    table_rows = rows(m, args.precision)
    print(f'{plural(args.passes, "pass")} of {len(table_rows) - len(skip)} rows × batch sizes {batches}, '
          f'{seconds:g} s each', flush=True)
    res = bench(table_rows, dirs, onnx_path, shape, batches, seconds, args.passes, args.bin, skip)
    summary = summarize(res)
    precision_lines = [f'{label}: {res[key][batches[0]][-1]["reported"]}'
                       for key, label, what in table_rows if what['engine'] == 'openvino']
    tab = table(table_rows, summary, batches, skip)
    goal_list = goals(m, table_rows, summary)
    print()
    print('\n'.join(precision_lines))
    print()
    print(tab)
    print()
    print('goals (ratios of bests):')
    print('\n'.join(g['text'] for g in goal_list))

    # the goals between two of our own rows again, from one process that interleaves them (several runs of it:
    # the machine's phases still move one run)
    own = sorted({b for _, key, base, b, _ in m['goals'] if key.startswith('ours') and base.startswith('ours')
                  and not key.endswith('bf16') and b in batches}) if 'f32' in args.precision else []
    interleaved = []
    for run in range(1, args.passes + 1 if own else 1):
        measured = {b: measure_interleaved(args.bin, dirs, m['policies'], b, seconds) for b in own}
        interleaved.append(dict(measured=measured, goals=interleaved_goals(m, measured)))
        print(f'interleaved run {run}: ' + '; '.join(g['text'] for g in interleaved[-1]['goals']), flush=True)

    report = dict(command=command, date=time.strftime('%Y-%m-%d'), commit=git_commit(), model=args.model,
                  models=dirs, onnx=onnx_path, onnx_max_diff=diff, probe=probe, probe_lines=lines,
                  precision_lines=precision_lines,
                  settings=dict(batches=batches, seconds=seconds, passes=args.passes, threads=threads,
                                warmup=dict(runs=warmup_runs, seconds=warmup_seconds)),
                  rows=[dict(key=key, label=label, **what) for key, label, what in table_rows], not_run=skip,
                  measurements={k: {str(b): v for b, v in by_b.items()} for k, by_b in res.items()},
                  summary={k: {str(b): v for b, v in by_b.items()} for k, by_b in summary.items()},
                  table=tab, goals=goal_list, interleaved=interleaved)
    path = out_json.format(model=args.model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {path}')
    if args.write:
        write_section(args.benchmarks, args.model, m['title'], section(command, report))
        print(f'wrote the {args.model} section of {args.benchmarks}')


if __name__ == '__main__':
    main()
