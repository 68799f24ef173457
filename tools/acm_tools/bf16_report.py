"""
The bf16 path's accuracy against f32, measured through the Swift engine, and docs/bf16-results.md:

    PYTHONPATH=tools .venv/bin/python -m acm_tools.bf16_report [--write]   # = make bf16-report

- Fashion-MNIST, the 10,000 test images at batch 32: the teacher, and the ACM model in auto mode and under caps
  0.5 and 0.25, each through `acm-serve evaluate --precision bf16 --compare-f32`, which runs the f32 model on the
  same batches beside it: both accuracies, and the share of gate decisions (token × ACM learner counts) and of
  predictions that differ.
- Whisper tiny.en, dense and ACM (auto, caps 0.5 and 0.25): the speech corpus's validation clips
  (build/speech/val.jsonl, `make speech-data`) through `acm-serve transcribe --json` in f32 and in bf16, the WER of
  each (acm_tools.wer, as whisper_results computes it) and the clips whose tokens differ; and the fixture clips
  (Tests/ACMWhisperTests/Fixtures, one batch), whose tokens are listed where bf16's differ from f32's.

Issue 12's goals: accuracy within 0.15 pt of f32 on Fashion-MNIST, WER within 0.3 pt, the fixture clips' tokens
identical. The machine must have AVX-512 BF16; elsewhere acm-serve runs f32 for bf16, and this report stops.
Writes build/bf16-report.json; --write also rewrites docs/bf16-results.md.
"""
import argparse
import json
import os
import subprocess
import time

import numpy as np

from . import report as fashion_report
from . import whisper_tiny_en
from .machine import cpu_name, git_commit
from .speech_wer import loops, table as wer_table
from .wer import edits
from .whisper_results import read_rows

# -----------------------------------------------------------------------------
# config
binary = '.build/release/acm-serve'
teacher, acm = 'models/fashion-vit-teacher', 'models/fashion-vit-acm'
fashion_batch = 32
fashion_policies = [('teacher', teacher, []), ('ACM, auto', acm, []), ('ACM, cap 0.5', acm, ['--budget', '0.5']),
                    ('ACM, cap 0.25', acm, ['--budget', '0.25'])]
whisper_dense, whisper_acm = whisper_tiny_en.out, whisper_tiny_en.acm_out
speech_manifest = 'build/speech/val.jsonl'
whisper_batch = 16
whisper_policies = [('dense', whisper_dense, []), ('ACM, auto', whisper_acm, []),
                    ('ACM, cap 0.5', whisper_acm, ['--budget', '0.5']),
                    ('ACM, cap 0.25', whisper_acm, ['--budget', '0.25'])]
fixtures = 'Tests/ACMWhisperTests/Fixtures'
goals = dict(fashion_points=0.15, wer_points=0.3)
out_json = 'build/bf16-report.json'
page = 'docs/bf16-results.md'
# -----------------------------------------------------------------------------


def run_json_lines(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd[:8])} … failed ({r.returncode}):\n{r.stderr}')
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{')]


def fashion(binary):
    xs, ys = fashion_report.test_set(fashion_report.work)
    out = []
    for name, model, options in fashion_policies:
        cmd = [binary, 'evaluate', '--model', model, '--images', xs, '--labels', ys, '--batch', str(fashion_batch),
               '--precision', 'bf16', '--compare-f32', '--json', *options]
        r, lines = run_json_lines(cmd)
        res = lines[-1]
        if res['precision'] != 'bf16':
            raise SystemExit(f'acm-serve ran {res["precision"]} for bf16: {r.stderr.strip()}')
        row = dict(name=name, f32=res['f32_accuracy'], bf16=res['accuracy'], fraction=res['compute_fraction'],
                   changed_decisions=res['changed_decisions'], changed_predictions=res['changed_predictions'],
                   images=res['images'])
        row['difference_points'] = 100 * (row['bf16'] - row['f32'])
        print(f'{name}: f32 {100 * row["f32"]:.2f}%, bf16 {100 * row["bf16"]:.2f}% '
              f'({row["difference_points"]:+.2f} pt); {100 * row["changed_decisions"]:.3f}% of gate decisions and '
              f'{100 * row["changed_predictions"]:.2f}% of predictions differ', flush=True)
        out.append(row)
    return out


def transcribe(binary, model, files, options, precision):
    cmd = [binary, 'transcribe', '--model', model, '--json', '--precision', precision, *options]
    for f in files:
        cmd += ['--audio', f]
    r, lines = run_json_lines(cmd)
    if precision == 'bf16' and 'note:' in r.stderr:
        raise SystemExit(f'acm-serve ran f32 for bf16: {r.stderr.strip()}')
    if [x['input'] for x in lines] != list(files):
        raise RuntimeError(f'{len(lines)} results for {len(files)} inputs')
    return lines


def difference_interval(rows, f32_texts, bf16_texts, draws=2000, seed=0):
    """A 95% paired bootstrap interval of WER(bf16) - WER(f32), in points: the clips resampled with replacement,
    each draw's corpus WERs from the same clips in both precisions."""
    f32 = [edits(r['text'], h) for r, h in zip(rows, f32_texts)]
    bf16 = [edits(r['text'], h) for r, h in zip(rows, bf16_texts)]
    words = np.array([e.ref_words for e in f32], dtype=np.float64)
    gap = np.array([b.errors - a.errors for a, b in zip(f32, bf16)], dtype=np.float64)
    pick = np.random.default_rng(seed).integers(0, len(rows), (draws, len(rows)))
    diffs = 100 * gap[pick].sum(1) / words[pick].sum(1)
    return [round(float(x), 2) for x in np.percentile(diffs, [2.5, 97.5])]


def speech(binary, manifest):
    rows = read_rows(manifest)
    out = []
    for name, model, options in whisper_policies:
        res = {}
        for precision in ('f32', 'bf16'):
            t0 = time.time()
            lines = []
            for i in range(0, len(rows), whisper_batch):
                lines += transcribe(binary, model, [r['path'] for r in rows[i:i + whisper_batch]], options, precision)
            res[precision] = dict(texts=[x['text'] for x in lines], tokens=[x['tokens'] for x in lines],
                                  fallbacks=sum(x['attempts'] > 1 for x in lines),
                                  wer=wer_table(rows, [x['text'] for x in lines])['all']['wer'],
                                  seconds=round(time.time() - t0, 1))
        differ = sum(a != b for a, b in zip(res['f32']['tokens'], res['bf16']['tokens']))
        # a clip that still loops (a phrase repeated to the token limit, in every attempt of the fallback) moves the
        # WER by points on its own: the WER over the other clips too
        looping = {p: [loops(r['text'], h) for r, h in zip(rows, res[p]['texts'])] for p in res}
        keep = [i for i in range(len(rows)) if not (looping['f32'][i] or looping['bf16'][i])]
        steady = {p: wer_table([rows[i] for i in keep], [res[p]['texts'][i] for i in keep])['all']['wer'] for p in res}
        row = dict(name=name, clips=len(rows), f32=res['f32']['wer'], bf16=res['bf16']['wer'], clips_differ=differ,
                   difference_points=100 * (res['bf16']['wer'] - res['f32']['wer']),
                   interval_points=difference_interval(rows, res['f32']['texts'], res['bf16']['texts']),
                   fallbacks_f32=res['f32']['fallbacks'], fallbacks_bf16=res['bf16']['fallbacks'],
                   loops_f32=sum(looping['f32']), loops_bf16=sum(looping['bf16']), steady_clips=len(keep),
                   steady_f32=steady['f32'], steady_bf16=steady['bf16'])
        print(f'{name}: WER f32 {100 * row["f32"]:.2f}%, bf16 {100 * row["bf16"]:.2f}% '
              f'({row["difference_points"]:+.2f} pt, 95% interval {row["interval_points"]}); {differ} of {len(rows)} '
              f'clips transcribed differently; decoded again f32 {row["fallbacks_f32"]}, bf16 {row["fallbacks_bf16"]}',
              flush=True)
        out.append(row)
    return out


def fixture_clips(binary):
    with open(os.path.join(fixtures, 'clips.json')) as f:
        clips = json.load(f)
    files = [os.path.join(fixtures, c['file']) for c in clips]
    out = []
    for name, model, options in whisper_policies:
        f32 = transcribe(binary, model, files, options, 'f32')
        bf16 = transcribe(binary, model, files, options, 'bf16')
        diffs = [dict(clip=c['name'], f32=a['text'], bf16=b['text'])
                 for c, a, b in zip(clips, f32, bf16) if a['tokens'] != b['tokens']]
        print(f'fixture clips, {name}: {len(clips) - len(diffs)} of {len(clips)} identical', flush=True)
        out.append(dict(name=name, clips=len(clips), differ=diffs))
    return out


def verdict(difference, allowed):
    """'met' within the goal; outside it, whether bf16 is worse (missed) or better than f32."""
    if abs(difference) <= allowed:
        return 'met'
    return 'missed' if difference > 0 else 'outside, in bf16\'s favour'


def markdown(res):
    lines = ['# bf16 against f32: accuracy', '',
             f'Measured by `make bf16-report` (`python -m acm_tools.bf16_report --write`) on {res["date"]}, commit '
             f'{res["commit"]}, {res["cpu"]}: the bf16 GEMMs ran on {res["bf16"]}. What bf16 changes and what it '
             'keeps in float: [performance.md](performance.md#bf16). Issue 12\'s goals: accuracy within '
             f'{goals["fashion_points"]} pt of f32 on Fashion-MNIST, WER within {goals["wer_points"]} pt, the '
             'fixture clips\' tokens identical.', '',
             f'## Fashion-MNIST ({res["fashion"][0]["images"]:,} test images, batch {fashion_batch})', '',
             'Both precisions on the same batches (`acm-serve evaluate --precision bf16 --compare-f32`). A gate '
             'decision is one token\'s learner count at one ACM.', '',
             '| model, policy | compute fraction | f32 | bf16 | difference | goal | gate decisions that differ | '
             'predictions that differ |',
             '| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |']
    for r in res['fashion']:
        # accuracy: higher is better, so bf16 is worse where the difference is negative
        lines.append(f'| {r["name"]} | {r["fraction"]:.3f} | {100 * r["f32"]:.2f}% | {100 * r["bf16"]:.2f}% | '
                     f'{r["difference_points"]:+.2f} pt | {verdict(-r["difference_points"], goals["fashion_points"])} | '
                     f'{100 * r["changed_decisions"]:.3f}% | {100 * r["changed_predictions"]:.2f}% |')
    if res.get('speech'):
        s = res['speech']
        lines += ['', f'## Whisper tiny.en: the speech validation set ({s[0]["clips"]} clips)', '',
                  'Word error rate against the corpus\'s text (acm_tools.wer, as `make whisper-results`), each clip '
                  'decoded greedily with the temperature fallback ([whisper.md](whisper.md#decoding)). The interval '
                  'is a 95% paired bootstrap over the clips (2000 draws): how far the difference moves with the '
                  'choice of clips. A clip decoded again failed the repetition check greedily; a clip that loops '
                  'repeats a phrase to the token limit even so (more than twice the text\'s words, plus 5; '
                  '`speech_wer.loops`), and the last columns give the WER without the clips that loop in either '
                  'precision.', '',
                  '| model, policy | WER f32 | WER bf16 | difference | 95% interval | goal | clips transcribed '
                  'differently | clips decoded again f32 / bf16 | looping clips f32 / bf16 | WER f32 / bf16 without '
                  'them |',
                  '| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |']
        for r in s:
            lines.append(f'| {r["name"]} | {100 * r["f32"]:.2f}% | {100 * r["bf16"]:.2f}% | '
                         f'{r["difference_points"]:+.2f} pt | {r["interval_points"][0]:+.2f} to '
                         f'{r["interval_points"][1]:+.2f} pt | {verdict(r["difference_points"], goals["wer_points"])} '
                         f'| {r["clips_differ"]} | {r["fallbacks_f32"]} / {r["fallbacks_bf16"]} | '
                         f'{r["loops_f32"]} / {r["loops_bf16"]} | {100 * r["steady_f32"]:.2f}% / '
                         f'{100 * r["steady_bf16"]:.2f}% ({r["steady_clips"]} clips) |')
    lines += ['', '## Whisper tiny.en: the fixture clips', '',
              '| model, policy | clips | tokens identical |', '| --- | ---: | ---: |']
    for r in res['fixtures']:
        lines.append(f'| {r["name"]} | {r["clips"]} | {r["clips"] - len(r["differ"])} |')
    differ = [(r['name'], d) for r in res['fixtures'] for d in r['differ']]
    if differ:
        lines += ['', 'Where bf16\'s tokens differ:', '']
        lines += [f'- {name}, {d["clip"]}: f32 "{d["f32"].strip()}"; bf16 "{d["bf16"].strip()}"' for name, d in differ]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--bin', default=os.environ.get('ACM_SERVE_BIN', binary), help='acm-serve (default: %(default)s)')
    ap.add_argument('--manifest', default=speech_manifest, help='validation clips (default: %(default)s)')
    ap.add_argument('--write', action='store_true', help=f'rewrite {page}')
    args = ap.parse_args(argv)
    if args.write and not os.path.exists(args.manifest):
        # the page would lose its Whisper WER section, one of the goals it reports
        raise SystemExit(f'{args.manifest} is missing: make it first (PYTHONPATH=tools .venv/bin/python -m '
                         'acm_tools.speech_corpus --out build/speech --train 0, the validation set alone, about 30 s)')
    version = subprocess.run([args.bin, 'version'], capture_output=True, text=True, check=True).stdout
    bf16 = next(line.split(':', 1)[1].strip() for line in version.splitlines() if line.startswith('bf16 GEMM'))
    if bf16.startswith('none'):
        raise SystemExit(f'no bf16 on this machine: {bf16}')
    res = dict(date=time.strftime('%Y-%m-%d'), commit=git_commit(), cpu=cpu_name(), bf16=bf16,
               fashion=fashion(args.bin), fixtures=fixture_clips(args.bin))
    if os.path.exists(args.manifest):
        res['speech'] = speech(args.bin, args.manifest)
    else:
        print(f'{args.manifest} is missing (speech_corpus --train 0 makes it): the validation set is left out')
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, 'w') as f:
        json.dump(res, f, indent=1)
    print(f'wrote {out_json}')
    if args.write:
        with open(page, 'w') as f:
            f.write(markdown(res))
        print(f'wrote {page}')


if __name__ == '__main__':
    main()
