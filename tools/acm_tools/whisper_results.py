"""
Word error rate against compute for the ACMized Whisper tiny.en, measured through the Swift engine
(`acm-serve transcribe --json`) on the speech corpus's held-out validation clips, and docs/whisper-results.md.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_results [--write]   # = make whisper-results

Each policy transcribes every validation clip greedily, with the temperature fallback (docs/whisper.md#decoding): the dense model; the ACM model at full compute, in auto
mode (its gates alone), under caps (compute budgets) and at uniform k learners per frame (the static baseline
of the same compute). A clip's compute fraction is the engine's (over all of the model's ACM layers, encoder
frames and decoder steps); a policy's is the mean over clips. The WER (acm_tools.wer: Whisper's English
normaliser, corpus-level) is against the corpus's text, by voice family too, and against the dense model's
transcripts. Clips run in batches of --batch (the engine's result does not depend on its batch:
WhisperModelTests.mixedBudgetsMatchRunningAlone).

Writes build/whisper/results.json. --write also draws docs/whisper-results.svg (WER against compute
fraction) and rewrites docs/whisper-results.md: the WER table, the accuracy goals of issue 11, and the
encoder and decoder times against budget from `make bench-whisper`'s build/whisper/bench.json when present.
"""
import argparse
import json
import os
import subprocess
import time
import wave

import numpy as np

from . import whisper_tiny_en
from .acm import uniform_k
from .machine import git_commit
from .speech_corpus import read_manifest
from .speech_wer import loops, table
from .wer import corpus_wer
from .whisper_ref import load_audio

# -----------------------------------------------------------------------------
# config
dense_dir = whisper_tiny_en.out
acm_dir = whisper_tiny_en.acm_out
manifest = 'build/speech/val.jsonl'
binary = '.build/release/acm-serve'
out = 'build/whisper/results.json'
bench_json = 'build/whisper/bench.json'
page, plot = 'docs/whisper-results.md', 'docs/whisper-results.svg'
batch = 16  # clips per engine call
# (name, model, acm-serve policy options, or the compute fraction of a uniform k: k = fraction·N for every frame,
# the static baseline of that budget); uniform 1.0 is full compute and is not run twice
policies = [('dense', 'dense', []), ('full', 'acm', ['--full']), ('auto', 'acm', []),
            ('cap 0.75', 'acm', ['--budget', '0.75']), ('cap 0.5', 'acm', ['--budget', '0.5']),
            ('cap 0.375', 'acm', ['--budget', '0.375']), ('cap 0.25', 'acm', ['--budget', '0.25']),
            ('uniform 0.25', 'acm', 0.25), ('uniform 0.5', 'acm', 0.5), ('uniform 0.75', 'acm', 0.75)]
# issue 11's accuracy goals: (policy, the most WER may exceed the dense model's, in points)
goals = [('cap 0.5', 1.0), ('cap 0.25', 3.0), ('auto', 0.5)]
# the dense encoder's time in its attention projections (q, k, v, out), measured by a probe that skipped them
# (docs/whisper-acm.md): 0.107-0.109 s with them, 0.092-0.096 s without
projection_share = 0.12
# WER by clip length: the clips' shares of their 30-s window differ, and a cap serves audio before padding
length_groups = [('under 4 s', 0, 4), ('4 to 8 s', 4, 8), ('8 s and over', 8, 1e9)]
length_policies = ['dense', 'auto', 'cap 0.5', 'cap 0.375', 'cap 0.25', 'uniform 0.5']
# full windows: the validation clips joined, in manifest order, into recordings that fill most of a window
joined_dir = 'build/whisper/joined'
joined_seconds = 28.0  # at most, so that each recording is one window
joined_gap = 0.3  # seconds of silence between two clips
joined_policies = ['dense', 'auto', 'cap 0.75', 'cap 0.5', 'cap 0.375', 'cap 0.25', 'uniform 0.25', 'uniform 0.5',
                   'uniform 0.75']
# -----------------------------------------------------------------------------


def transcribe(binary, model, files, options):
    """-> [{'input', 'text', 'tokens', 'compute_fraction'}] in the order of files."""
    cmd = [binary, 'transcribe', '--model', model, '--json', *options]
    for f in files:
        cmd += ['--audio', f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd[:6])} … failed ({r.returncode}):\n{r.stderr}')
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{')]
    if [x['input'] for x in lines] != list(files):
        raise RuntimeError(f'acm-serve transcribe --json printed {len(lines)} results for {len(files)} inputs')
    return lines


def run_policy(binary, model, rows, options, batch_size):
    results = []
    for i in range(0, len(rows), batch_size):
        results += transcribe(binary, model, [r['path'] for r in rows[i:i + batch_size]], options)
    return results


def num_learners(model_dir):
    """N of a model directory's ACMs (the same for all of them), from its config.json."""
    with open(os.path.join(model_dir, 'config.json')) as f:
        ns = {c.get('num_learners') for c in json.load(f).get('acm', {}).values()}
    if len(ns) != 1:
        raise ValueError(f'{model_dir}: expected ACMs with one number of learners, found {sorted(ns)}')
    return ns.pop()


def options_of(spec, model_dir):
    """A policy's acm-serve options: given, or --uniform-k for a uniform compute fraction."""
    if isinstance(spec, list):
        return spec
    return ['--uniform-k', str(uniform_k(spec, num_learners(model_dir)))]


def read_rows(manifest):
    rows = read_manifest(manifest)
    for r in rows:
        r['path'] = r['file'] if os.path.isabs(r['file']) else os.path.join(os.path.dirname(manifest), r['file'])
    return rows


def join_clips(rows, out_dir):
    """The clips, in order, joined into 16-kHz mono 16-bit WAVs of at most joined_seconds, joined_gap of silence
    between two clips (a clip longer than joined_seconds is left out) -> [{'path', 'text', 'seconds', 'clips'}]."""
    os.makedirs(out_dir, exist_ok=True)
    groups, current, length = [], [], 0.0
    for r in rows:
        if r['seconds'] > joined_seconds:
            continue
        if current and length + joined_gap + r['seconds'] > joined_seconds:
            groups.append(current)
            current, length = [], 0.0
        length += (joined_gap if current else 0.0) + r['seconds']
        current.append(r)
    if current:
        groups.append(current)
    out = []
    gap = np.zeros(int(joined_gap * 16000))
    for i, group in enumerate(groups):
        parts = []
        for j, r in enumerate(group):
            parts += ([gap] if j else []) + [load_audio(r['path'])]
        pcm = np.clip(np.round(np.concatenate(parts) * 32768), -32768, 32767).astype('<i2')
        path = os.path.join(out_dir, f'{i:03d}.wav')
        with wave.open(path, 'wb') as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        out.append(dict(path=path, text=' '.join(r['text'] for r in group), seconds=round(len(pcm) / 16000, 3),
                        clips=[r['id'] for r in group]))
    return out


def measure_joined(args, rows):
    """joined_policies on the clips joined into near-full windows -> {'recordings', 'seconds', 'policies'}."""
    joined = join_clips(rows, args.joined_dir)
    models = dict(dense=args.dense, acm=args.model)
    out = {}
    for name, model, spec in policies:
        if name not in joined_policies:
            continue
        res = run_policy(args.bin, models[model], joined, options_of(spec, models[model]), args.batch)
        hyps = [x['text'] for x in res]
        fractions = [x['compute_fraction'] for x in res if x.get('compute_fraction') is not None]
        out[name] = dict(texts=hyps, wer=round(corpus_wer([r['text'] for r in joined], hyps).wer, 4),
                         fraction=sum(fractions) / len(fractions) if fractions else 1.0,
                         loops=sum(loops(r['text'], h) for r, h in zip(joined, hyps)))
        print(f'joined, {name}: WER {100 * out[name]["wer"]:.1f}%, compute fraction {out[name]["fraction"]:.3f}',
              flush=True)
    return dict(recordings=len(joined), seconds=[r['seconds'] for r in joined], clips=[r['clips'] for r in joined],
                policies=out)


def measure(args):
    rows = read_rows(args.manifest)
    models = dict(dense=args.dense, acm=args.model)
    out = {}
    for name, model, spec in policies:
        t0 = time.time()
        options = options_of(spec, models[model])
        res = run_policy(args.bin, models[model], rows, options, args.batch)
        hyps = [x['text'] for x in res]
        fractions = [x['compute_fraction'] for x in res if x.get('compute_fraction') is not None]
        out[name] = dict(options=options, model=models[model], texts=hyps, tokens=[x['tokens'] for x in res],
                         fraction=sum(fractions) / len(fractions) if fractions else 1.0,
                         max_fraction=max(fractions) if fractions else 1.0,
                         wer=table(rows, hyps), seconds=round(time.time() - t0, 1))
        print(f'{name}: WER {100 * out[name]["wer"]["all"]["wer"]:.1f}%, compute fraction '
              f'{out[name]["fraction"]:.3f}, {out[name]["seconds"]} s', flush=True)
    dense = out['dense']['texts']
    for name, r in out.items():
        r['wer_vs_dense'] = round(corpus_wer(dense, r['texts']).wer, 4)
        r['loops'] = sum(loops(row['text'], h) for row, h in zip(rows, r['texts']))
    return dict(date=time.strftime('%Y-%m-%d'), commit=git_commit(), manifest=args.manifest, clips=len(rows),
                num_learners=num_learners(args.model),
                voices=sorted({row['voice'] for row in rows}), policies=out,
                by_length=by_length(rows, out), joined=measure_joined(args, rows))


def by_length(rows, out):
    """{group: {'clips', 'seconds', policy: WER, 'loops': {policy: looping clips}}} for length_groups, from each
    policy's transcripts."""
    table = {}
    for name, lo, hi in length_groups:
        idx = [i for i, r in enumerate(rows) if lo <= r['seconds'] < hi]
        if not idx:
            continue
        g = table[name] = dict(clips=len(idx), seconds=round(float(np.mean([rows[i]['seconds'] for i in idx])), 1))
        g['loops'] = {}
        for p in length_policies:
            if p in out:
                g[p] = round(corpus_wer([rows[i]['text'] for i in idx], [out[p]['texts'][i] for i in idx]).wer, 4)
                g['loops'][p] = sum(loops(rows[i]['text'], out[p]['texts'][i]) for i in idx)
    return table


# -----------------------------------------------------------------------------
# the page

def draw(res, path):
    import matplotlib
    matplotlib.use('Agg')
    matplotlib.rcParams['svg.fonttype'] = 'none'  # text as text: a small, diffable file
    import matplotlib.pyplot as plt
    p = res['policies']
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    caps = sorted((p[n]['fraction'], 100 * p[n]['wer']['all']['wer']) for n in p if n.startswith('cap') or n == 'full')
    ks = sorted((p[n]['fraction'], 100 * p[n]['wer']['all']['wer']) for n in p if n.startswith('uniform') or n == 'full')
    ax.plot(*zip(*caps), 'o-', label='ACM under a compute budget (cap)')
    ax.plot(*zip(*ks), 's--', label='uniform: the same k learners for every frame (static baseline)')
    ax.plot([p['auto']['fraction']], [100 * p['auto']['wer']['all']['wer']], '*', markersize=12,
            label='ACM, auto (its gates alone)')
    ax.axhline(100 * p['dense']['wer']['all']['wer'], color='gray', linestyle=':', label='dense tiny.en')
    ax.set_xlabel('compute fraction of the ACM layers (encoder MLPs)')
    ax.set_ylabel(f'WER, % ({res["clips"]} validation clips)')
    ax.set_xlim(0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={'Date': None})
    plt.close(fig)


def wer_table(res):
    p = res['policies']
    families = [g for g in p['dense']['wer'] if g in ('espeak-ng', 'flite', 'piper')]
    head = '| policy | compute fraction (mean / max) | WER | ' + ' | '.join(families) + \
           ' | WER against dense transcripts | looping clips |'
    lines = [head, '| --- | --- | ---: | ' + ' | '.join('---:' for _ in families) + ' | ---: | ---: |']
    for name, r in p.items():
        w = r['wer']
        label = f'{name} ({uniform_label(r)})' if name.startswith('uniform') else name
        lines.append(f'| {label} | {r["fraction"]:.3f} / {r["max_fraction"]:.3f} | {100 * w["all"]["wer"]:.1f}% | '
                     + ' | '.join(f'{100 * w[f]["wer"]:.1f}%' for f in families)
                     + f' | {100 * r["wer_vs_dense"]:.1f}% | {r["loops"]} |')
    return '\n'.join(lines)


def uniform_label(r):
    """'k = 4' for a uniform policy's results."""
    return f'k = {r["options"][1]}'


def goal_table(res):
    p = res['policies']
    dense = 100 * p['dense']['wer']['all']['wer']
    lines = ['| goal | WER | dense WER | difference | allowed | uniform k at the same fraction | |',
             '| --- | ---: | ---: | ---: | ---: | --- | --- |']
    for name, allowed in goals:
        w = 100 * p[name]['wer']['all']['wer']
        k = {'cap 0.5': 'uniform 0.5', 'cap 0.25': 'uniform 0.25'}.get(name)
        base = f'{k} ({uniform_label(p[k])}): {100 * p[k]["wer"]["all"]["wer"]:.1f}%' if k in p else '–'
        lines.append(f'| {name} (fraction {p[name]["fraction"]:.3f}) | {w:.1f}% | {dense:.1f}% | {w - dense:+.1f} pt '
                     f'| ≤ {allowed:+.1f} pt | {base} | {"met" if w - dense <= allowed else "missed"} |')
    return '\n'.join(lines)


def length_table(res):
    """WER by clip length (res['by_length']) -> markdown."""
    t = res['by_length']
    names = [p for p in length_policies if any(p in g for g in t.values())]
    lines = ['| clips | mean length | share of the window that is audio | ' + ' | '.join(names) + ' |',
             '| --- | ---: | ---: | ' + ' | '.join('---:' for _ in names) + ' |']
    for g, v in t.items():
        def cell(n):
            looping = v.get('loops', {}).get(n, 0)
            return f'{100 * v[n]:.1f}%' + (f' ({looping} looping)' if looping else '')
        lines.append(f'| {g} ({v["clips"]}) | {v["seconds"]:.1f} s | {v["seconds"] / 30:.0%} | '
                     + ' | '.join(cell(n) for n in names) + ' |')
    return '\n'.join(lines)


def joined_table(res):
    """WER on the joined recordings (res['joined']) -> markdown."""
    j = res['joined']
    lines = ['| policy | compute fraction | WER | looping recordings |', '| --- | ---: | ---: | ---: |']
    for name, r in j['policies'].items():
        lines.append(f'| {name} | {r["fraction"]:.3f} | {100 * r["wer"]:.1f}% | {r["loops"]} |')
    return '\n'.join(lines)


def speed_table(bench):
    """Encoder and decoder times of the 30-s clip against budget, from whisper_bench's JSON (None when it ran
    without the ACM model)."""
    by_engine = bench['results'].get('30 s', {})
    if not any(e.startswith('acm-serve ACM') for e in by_engine):
        return None
    ct2, dense = by_engine['CTranslate2 fp32'], by_engine['acm-serve']
    lines = ['| engine | compute fraction | encoder (s) | × CT2 fp32 | × our dense | decoder (ms per token) | × CT2 fp32 |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for name, r in by_engine.items():
        if name == 'PyTorch':
            continue
        per_token = r.get('decoder_per_token_median')
        fraction = f'{r["compute_fraction"]:.3f}' if r.get('compute_fraction') is not None else '–'
        lines.append(f'| {name} | {fraction} | {r["encoder_median"]:.3f} | '
                     f'{r["encoder_median"] / ct2["encoder_median"]:.2f} | '
                     f'{r["encoder_median"] / dense["encoder_median"]:.2f} | '
                     + (f'{1000 * per_token:.2f} | {per_token / ct2["decoder_per_token_median"]:.2f} |'
                        if per_token is not None else '– | – |'))
    return '\n'.join(lines)


def speed_goals(bench):
    """Issue 11's speed goals against whisper_bench's 30-s clip -> markdown (None without the ACM model's rows),
    and the share of the dense encoder's time that its MLPs take, estimated from the ACM model's encoder at full
    compute and under cap 0.25 (which removes three quarters of the MLPs' work)."""
    r = bench['results'].get('30 s', {})
    names = ('acm-serve', 'CTranslate2 fp32', 'acm-serve ACM, full', 'acm-serve ACM, cap 0.5', 'acm-serve ACM, cap 0.25')
    if not all(n in r for n in names):
        return None
    dense, ct2, full, half, quarter = (r[n] for n in names)
    rows = [('encoder, dense, ≤ 1.0× CTranslate2 fp32', dense['encoder_median'] / ct2['encoder_median'], 1.0),
            ('decoder time per token, one utterance, ≤ 0.8× CTranslate2 fp32',
             dense['decoder_per_token_median'] / ct2['decoder_per_token_median'], 0.8),
            ('ACM encoder at budget 0.5, ≤ 0.7× the dense encoder', half['encoder_median'] / dense['encoder_median'], 0.7),
            ('ACM encoder at budget 0.25, ≤ 0.5× the dense encoder',
             quarter['encoder_median'] / dense['encoder_median'], 0.5)]
    lines = ['| goal | ratio | |', '| --- | ---: | --- |']
    lines += [f'| {name} | {ratio:.2f} | {"met" if ratio <= limit else "missed"} |' for name, ratio, limit in rows]
    mlp = (full['encoder_median'] - quarter['encoder_median']) / 0.75 / full['encoder_median']
    both = mlp + projection_share
    lines += ['', f'The ACM MLPs take about {100 * mlp:.0f}% of the encoder\'s time at full compute (cap 0.25 saves '
              f'{1000 * (full["encoder_median"] - quarter["encoder_median"]):.0f} ms of '
              f'{1000 * full["encoder_median"]:.0f}, three quarters of the learners\' work). With only the MLPs as '
              f'ACMs, MLPs that cost nothing would still leave the encoder at {1 - mlp:.2f}× its full-compute time. '
              f'The attention projections take about {100 * projection_share:.0f}% more (a probe, '
              '[whisper-acm.md](whisper-acm.md#what-is-acmized-and-why)): with them as ACMs too, a budget of 0.5 that '
              f'halved both would leave about {1 - both / 2:.2f}×, and 0.25 about {1 - 3 * both / 4:.2f}×, before any '
              'routing overhead. The goals of 0.7× and 0.5× are below that floor: the attention over 1,500 frames, the '
              'convolutions and the layer norms do not shrink with the budget.']
    return '\n'.join(lines)


def capture_note(seconds):
    """How the training run's capture of the teacher's activations went, from its metrics' seconds."""
    if seconds['capture'] < 60:
        return 'the teacher\'s activations came from the capture cache of an earlier run'
    return f'of which capturing the teacher\'s activations {seconds["capture"] / 60:.0f} min'


def write_page(res, bench, path, svg):
    draw(res, svg)
    metrics_path = os.path.join(whisper_tiny_en.acm_layers, 'metrics.json')
    trained = json.load(open(metrics_path)) if os.path.exists(metrics_path) else {}
    speed = speed_table(bench) if bench else None
    parts = [
        '# Whisper tiny.en with ACM MLPs: word error rate and time against compute',
        '',
        f'Generated by `make whisper-results` (`python -m acm_tools.whisper_results --write`) at commit '
        f'{res["commit"]} on {res["date"]}, through the Swift engine (`acm-serve transcribe --json`, batches of '
        f'{batch} clips) on the {res["clips"]} held-out validation clips of the speech corpus '
        f'([speech-data.md](speech-data.md), listed in [speech-val.tsv](speech-val.tsv); '
        f'{len(res["voices"])} voices, none used in training). The model is `models/whisper-tiny.en-acm` '
        f'([whisper-acm.md](whisper-acm.md)): the encoder\'s four MLPs as ACMs of N = {res["num_learners"]} '
        'learners'
        + (f', trained by `acm_tools.whisper_acmize` (`make whisper-acm`) on {trained.get("train_clips")} clips in '
           f'{trained["seconds"]["total"] / 60:.0f} min on this machine ({capture_note(trained["seconds"])})'
           if trained.get('seconds') else '') + '.',
        '',
        'The compute fraction is the share of the ACM layers\' learners that ran, over encoder frames and decoder '
        'steps ([compute-budget.md](compute-budget.md#the-compute-fraction)); a cap is the request\'s '
        '`compute_budget`; uniform f runs the same k = f·N learners for every frame, the static baseline of a cap '
        'of f; uniform 1 is full compute. WER is corpus-level, through Whisper\'s English normaliser (`acm_tools.wer`); the dense '
        'model\'s own WER is high on the espeak-ng voices, as [speech-data.md](speech-data.md) explains. Greedy '
        'decoding loops on a few clips; the temperature fallback decodes those again ([whisper.md](whisper.md#decoding)), '
        'and a clip that loops even so is counted in the last column.',
        '',
        '![WER against compute fraction](whisper-results.svg)',
        '',
        wer_table(res),
        '',
        '## Accuracy goals',
        '',
        goal_table(res),
        '',
    ]
    if res.get('by_length'):
        parts += [
            '## The cap and the length of the audio',
            '',
            'Whisper hears 30-s windows, and a clip shorter than that is padded; under a cap the encoder serves the '
            'frames that hear the audio before the padding\'s '
            '([compute-budget.md](compute-budget.md#audio-before-padding)), so the shorter the clip, the more of '
            'the budget its speech gets. By the clips\' length (a clip on which greedy decoding loops, repeating a '
            'phrase to the token limit, can move a group\'s WER by ten points or more; such clips are counted):',
            '',
            length_table(res),
            '',
        ]
    if res.get('joined'):
        j = res['joined']
        parts += [
            f'Windows full of speech: the validation clips joined in order, {joined_gap} s apart, into '
            f'{j["recordings"]} recordings of {min(j["seconds"]):.0f} to {max(j["seconds"]):.0f} s '
            f'(`{joined_dir}`), each one window. Here there is little padding, and a cap chooses among frames of '
            'speech and of the short gaps between clips:',
            '',
            joined_table(res),
            '',
        ]
    parts += [
        '## Time against budget',
        '',
    ]
    if speed:
        parts += [f'`make bench-whisper` at commit {bench["commit"]} on {bench["date"]} ({bench["cpu"]}, '
                  f'{bench["cores"]} cores), the 30-s clip of speech, one utterance at a time, medians of '
                  f'{bench["repeats"]} repeats; CTranslate2 4.8.5 fp32 in the same run. The decoder\'s time per '
                  'token is its time over the tokens it wrote.', '', speed, '']
        goals_text = speed_goals(bench)
        if goals_text:
            parts += ['## Speed goals', '', goals_text, '']
    else:
        parts += ['Run `make bench-whisper` and then this tool again for the encoder and decoder times.', '']
    with open(path, 'w') as f:
        f.write('\n'.join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=acm_dir, help='the ACM model (default: %(default)s)')
    ap.add_argument('--dense', default=dense_dir, help='the dense model (default: %(default)s)')
    ap.add_argument('--manifest', default=manifest, help='validation clips (default: %(default)s)')
    ap.add_argument('--bin', default=os.environ.get('ACM_SERVE_BIN', binary), help='acm-serve (default: %(default)s)')
    ap.add_argument('--batch', type=int, default=batch, help='clips per engine call (default: %(default)s)')
    ap.add_argument('--out', default=out, help='JSON results (default: %(default)s)')
    ap.add_argument('--joined-dir', default=joined_dir,
                    help='where the clips joined into near-full windows go (default: %(default)s)')
    ap.add_argument('--rescore', action='store_true', help='take the transcripts from --out instead of running')
    ap.add_argument('--write', action='store_true', help=f'draw {plot} and rewrite {page}')
    args = ap.parse_args(argv)
    if not args.rescore:
        for path, what in ((args.manifest, 'make speech-data'), (args.model, 'make whisper-model'),
                           (args.bin, 'swift build -c release')):
            if not os.path.exists(path):
                ap.error(f'{path} is missing: run {what}')
    if args.rescore:
        with open(args.out) as f:
            res = json.load(f)
        res['by_length'] = by_length(read_rows(res['manifest']), res['policies'])
    else:
        res = measure(args)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=1)
        print(f'wrote {args.out}')
    print(wer_table(res))
    print()
    print(goal_table(res))
    if args.write:
        bench = json.load(open(bench_json)) if os.path.exists(bench_json) else None
        write_page(res, bench, page, plot)
        print(f'wrote {page} and {plot}')


if __name__ == '__main__':
    main()
