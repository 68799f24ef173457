"""
Whisper tiny.en speed, in one run, for three engines on the same audio: acm-serve (`acm-serve transcribe
--timing`), CTranslate2 (fp32 compute) and the PyTorch reference (acm_tools.whisper_ref). Seconds per 30-s
clip for the encoder alone (log-mel given) and for the whole transcription (WAV to text), and the decoder's
seconds per token it wrote, on two inputs:

- `30 s`: the fixture clips (Tests/ACMWhisperTests/Fixtures) resampled to 16 kHz mono, concatenated and cut
  to exactly 30 s, so that the decoder writes as many tokens as real speech gives it;
- `12 clips`: the 12 fixture clips as one batch (acm-serve: one call; CTranslate2: one batched encode and
  generate; PyTorch: the reference takes one clip at a time, so the clips run one after another).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_bench [--repeats 5]   # = make bench-whisper

When the ACM model (build/models/whisper-tiny.en-acm) is present, acm-serve also runs it at full compute, in
auto mode and under compute budgets 0.5 and 0.25 (`acm_policies`); the table gives each encoder's time against
our dense model's too. Where acm-serve has a bf16 GEMM (`acm-serve version`), it also runs the dense model and the
ACM model at budget 0.5 with --precision bf16 (`bf16_rows`); issue 12's goal is the bf16 encoder at ≤ 0.6× our
f32 one (the "× our dense" column of "acm-serve bf16").

Each repeat runs every engine on both inputs, so that the machine's noise hits all of them alike; one repeat
first is a warm-up and is not counted; the numbers are medians over the repeats. Prints a markdown table with
each engine's ratio to CTranslate2 and writes every time to build/whisper/bench.json.

How each engine is timed:
- acm-serve: a process per input and repeat, `transcribe --timing --json --repeats 2` (the first in-process run
  allocates the buffers; the second is timed). Encoder, decoder: its `encoder … s; decoder … s` line. Whole: its front-end time
  (WAV read, decoded, resampled, log-mel: run once per process, so not warmed) plus encoder plus decoder.
  Model loading is left out. The engine runs one worker per core (Parallel.workers).
- CTranslate2 4.8.5: `models.Whisper(build/whisper/ct2, compute_type='float32', intra_threads=2)`. Encoder:
  `encode` of the batch. Decoder: `generate` given `encode`'s output (which it takes in place of a log-mel). Whole: WAV read, openai-whisper's torch front end (whisper_ref.log_mel_torch),
  `generate(beam_size=1)` as whisper_fixtures calls it, detokenised.
- PyTorch: whisper_ref.Whisper with torch.set_num_threads(2). Encoder: `encode` per clip. Whole: WAV read,
  the same torch front end, `greedy`, detokenised.
The encoder-only runs of CTranslate2 and PyTorch take the reference's NumPy log-mel, computed beforehand.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import time

import ctranslate2
import numpy as np
import torch

from . import whisper_tiny_en
from .bench_peers import sgemm_n, sgemm_probe
from .machine import cpu_name, git_commit
from .whisper_fixtures import to_int16, write_wav
from .whisper_ref import Whisper, load_audio, log_mel, log_mel_torch, n_samples, sample_rate

# -----------------------------------------------------------------------------
# config
model_dir = whisper_tiny_en.out
acm_model_dir = whisper_tiny_en.acm_out
acm_policies = [('full', ['--full']), ('auto', []), ('cap 0.5', ['--budget', '0.5']),
                ('cap 0.25', ['--budget', '0.25'])]  # the ACM model's rows, when it is present
# bf16 rows, where acm-serve has the instructions: (row, model: 'dense' or 'acm', options)
bf16_rows = [('acm-serve bf16', 'dense', ['--precision', 'bf16']),
             ('acm-serve bf16 ACM, cap 0.5', 'acm', ['--precision', 'bf16', '--budget', '0.5'])]
ct2_dir = whisper_tiny_en.ct2_dir  # CTranslate2's original of the same model (fp16 weights)
fixtures = 'Tests/ACMWhisperTests/Fixtures'
binary = '.build/release/acm-serve'
out = 'build/whisper/bench.json'
clip_30s = 'bench_30s.wav'  # the concatenated 30-s clip, written next to the JSON
repeats = 5  # timed repeats, after one warm-up
threads = 2  # CTranslate2 intra_threads and torch threads; acm-serve runs one worker per core
engines = ['acm-serve', 'CTranslate2 fp32', 'PyTorch']
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# inputs

def fixture_wavs(fixture_dir):
    with open(os.path.join(fixture_dir, 'clips.json')) as f:
        return [os.path.join(fixture_dir, c['file']) for c in json.load(f)]


def write_30s(wavs, path):
    """The clips at 16 kHz mono, one after another, cut to exactly 30 s and written as 16-bit PCM."""
    audio = np.concatenate([load_audio(w) for w in wavs])
    assert len(audio) >= n_samples, f'the fixture clips last only {len(audio) / sample_rate:.1f} s'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_wav(path, to_int16(audio[:n_samples])[:, None], sample_rate)
    return path


# -----------------------------------------------------------------------------
# engines: each run returns (encoder seconds, whole seconds, [token ids per clip], [text per clip])

ours_front = re.compile(r"model loaded in ([\d.]+) s; (\d+) input\(s\) decoded and log-mel'd in ([\d.]+) s")
ours_stages = re.compile(r'encoder ([\d.]+) s \(([\d.]+) s per input\); '
                         r'decoder ([\d.]+) s for (\d+) tokens \((\d+) inputs\)')


def parse_ours(stdout, stderr, count):
    """`acm-serve transcribe --timing --json` output -> Run."""
    front, stages = ours_front.search(stderr), ours_stages.search(stderr)
    if front is None or stages is None:
        raise RuntimeError(f'acm-serve transcribe --timing printed no timing lines we know:\n{stderr}')
    clips = [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]
    ids = [c['tokens'] for c in clips]
    assert int(front.group(2)) == int(stages.group(5)) == len(ids) == count, (front.group(0), stages.group(0))
    assert int(stages.group(4)) == sum(map(len, ids)), (stages.group(0), ids)
    encoder, decoder = float(stages.group(1)), float(stages.group(3))
    fractions = [c['compute_fraction'] for c in clips if c.get('compute_fraction') is not None]
    return Run(encoder, float(front.group(3)) + encoder + decoder, decoder, ids, [c['text'] for c in clips],
               sum(fractions) / len(fractions) if fractions else None)


class Run:
    """One engine's run of one input: encoder seconds, whole transcription seconds (front end, encoder,
    decoder), decoder seconds (None where the engine cannot time it alone), ids and text per clip, and the mean
    compute fraction (None for a dense model)."""
    def __init__(self, encoder, whole, decoder, ids, texts, fraction=None):
        self.encoder, self.whole, self.decoder, self.ids, self.texts = encoder, whole, decoder, ids, texts
        self.fraction = fraction


class Ours:
    def __init__(self, binary, model, options=()):
        self.binary, self.model, self.options = binary, model, list(options)

    def run(self, wavs, mels):
        cmd = [self.binary, 'transcribe', '--model', self.model, '--timing', '--json', '--repeats', '2', *self.options]
        for w in wavs:
            cmd += ['--audio', w]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return parse_ours(r.stdout, r.stderr, len(wavs))


class CTranslate2:
    def __init__(self, path, prompt, tokenizer):
        self.model = ctranslate2.models.Whisper(path, device='cpu', compute_type='float32', intra_threads=threads,
                                                inter_threads=1)
        self.prompt, self.tokenizer = prompt, tokenizer

    def features(self, mels):
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels)))  # (B, 80, 3000)

    def generate(self, features, count):
        results = self.model.generate(features, [self.prompt] * count, beam_size=1, suppress_blank=True,
                                      suppress_tokens=[-1], max_length=448)  # as CT2.greedy in whisper_fixtures
        return [r.sequences_ids[0] for r in results]

    def run(self, wavs, mels):
        t0 = time.perf_counter()
        encoded = self.model.encode(self.features(mels), to_cpu=True)
        encoder = time.perf_counter() - t0
        t0 = time.perf_counter()  # the decoder alone: generate() takes the encoder's output as well as a log-mel
        self.generate(encoded, len(wavs))
        decoder = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = self.generate(self.features([log_mel_torch(load_audio(w)) for w in wavs]), len(wavs))
        texts = [self.tokenizer.decode(i) for i in ids]
        return Run(encoder, time.perf_counter() - t0, decoder, ids, texts)


class PyTorch:
    def __init__(self, model):
        self.model = model

    def run(self, wavs, mels):
        t0 = time.perf_counter()
        for mel in mels:
            self.model.encode(mel)
        encoder = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, texts = [], []
        for w in wavs:
            ids.append(self.model.greedy(log_mel_torch(load_audio(w))))
            texts.append(self.model.tokenizer.decode(ids[-1]))
        return Run(encoder, time.perf_counter() - t0, None, ids, texts)


# -----------------------------------------------------------------------------
# benchmark

def bench(inputs, runners, repeats):
    """Warm-up, then `repeats` rounds of every input on every engine -> {input: {engine: {encoder, whole,
    decoder_per_token, tokens, texts, compute_fraction}}}: the encoder's and the whole transcription's seconds per
    clip and the decoder's seconds per token written, one per round; the last round's ids and text per clip."""
    res = {name: {e: {'encoder': [], 'whole': [], 'decoder_per_token': [], 'tokens': None, 'texts': None,
                      'compute_fraction': None} for e in runners}
           for name in inputs}
    for i in range(repeats + 1):
        for name, (wavs, mels) in inputs.items():
            for e, runner in runners.items():
                run = runner.run(wavs, mels)
                tokens = sum(map(len, run.ids))
                print(f'  {"warm-up" if i == 0 else f"repeat {i}"}: {name}, {e}: encoder {run.encoder:.3f} s, '
                      f'whole {run.whole:.3f} s, {tokens} tokens', flush=True)
                r = res[name][e]
                if i > 0:
                    r['encoder'].append(run.encoder / len(wavs))
                    r['whole'].append(run.whole / len(wavs))
                    if run.decoder is not None:
                        r['decoder_per_token'].append(run.decoder / tokens)
                r['tokens'], r['texts'], r['compute_fraction'] = run.ids, run.texts, run.fraction
    return res


def disagreements(res):
    """{input: [where an engine's tokens first differ from CTranslate2's, one line per clip]}: empty lists when
    the engines agree."""
    out = {}
    for name, by_engine in res.items():
        want = by_engine[engines[1]]['tokens']
        out[name] = []
        for e, r in by_engine.items():
            if e not in engines:  # the ACM model writes its own transcripts
                continue
            for b, (got, ct2) in enumerate(zip(r['tokens'], want)):
                if got != ct2:
                    at = next((t for t, (x, y) in enumerate(zip(got, ct2)) if x != y), min(len(got), len(ct2)))
                    out[name].append(f'{e}, clip {b}: differs from CTranslate2 at token {at} '
                                     f'({len(got)} tokens against {len(ct2)})')
    return out


def table(res):
    lines = ['| input | engine | encoder (s/clip) | × CT2 | × our dense | decoder (ms/token) | × CT2 | '
             'transcription (s/clip) | × CT2 | tokens | compute fraction |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for name, by_engine in res.items():
        base, dense = by_engine[engines[1]], by_engine[engines[0]]
        for e, r in by_engine.items():
            per_token = r['decoder_per_token_median']
            decoder = (f'{1000 * per_token:.2f} | {per_token / base["decoder_per_token_median"]:.2f}'
                       if per_token is not None else '– | –')
            fraction = f'{r["compute_fraction"]:.3f}' if r['compute_fraction'] is not None else '–'
            lines.append(f'| {name} | {e} | {r["encoder_median"]:.3f} | '
                         f'{r["encoder_median"] / base["encoder_median"]:.2f} | '
                         f'{r["encoder_median"] / dense["encoder_median"]:.2f} | {decoder} | {r["whole_median"]:.3f} | '
                         f'{r["whole_median"] / base["whole_median"]:.2f} | {sum(map(len, r["tokens"]))} | {fraction} |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--repeats', type=int, default=repeats,
                   help='timed repeats after one warm-up (default: %(default)s)')
    p.add_argument('--model', default=model_dir, help='our model directory (default: %(default)s)')
    p.add_argument('--acm-model', default=acm_model_dir,
                   help='the ACM model, timed at each of acm_policies when present (default: %(default)s)')
    p.add_argument('--ct2', default=ct2_dir, help='the CTranslate2 model directory (default: %(default)s)')
    p.add_argument('--bin', default=os.environ.get('ACM_SERVE_BIN', binary), help='acm-serve (default: %(default)s)')
    p.add_argument('--fixtures', default=fixtures, help='the Whisper fixtures (default: %(default)s)')
    p.add_argument('--out', default=out, help='JSON results (default: %(default)s)')
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error('--repeats must be ≥ 1')

    probe = sgemm_probe()  # first, so that a degraded machine shows
    print(f'sgemm {sgemm_n}^3 float32 ({probe["blas"]}): {probe["gflops"][1]:.0f} GFLOP/s on 1 thread, '
          f'{probe["gflops"][2]:.0f} on 2', flush=True)
    torch.set_num_threads(threads)
    ref = Whisper(args.model)
    runners = dict(zip(engines, [Ours(args.bin, args.model), CTranslate2(args.ct2, ref.gen.prompt, ref.tokenizer),
                                 PyTorch(ref)]))
    if os.path.isdir(args.acm_model):
        for name, options in acm_policies:
            runners[f'acm-serve ACM, {name}'] = Ours(args.bin, args.acm_model, options)
    else:
        print(f'note: no ACM model in {args.acm_model} (make whisper-model assembles it); timing the dense model only')
    version = subprocess.run([args.bin, 'version'], capture_output=True, text=True, check=True).stdout
    bf16 = next((line.split(':', 1)[1].strip() for line in version.splitlines() if line.startswith('bf16 GEMM')), 'none')
    if bf16.startswith('none'):
        print(f'note: no bf16 GEMM here ({bf16}); no bf16 rows', flush=True)
    else:
        for name, model, options in bf16_rows:
            if model == 'dense' or os.path.isdir(args.acm_model):
                runners[name] = Ours(args.bin, args.model if model == 'dense' else args.acm_model, options)
    clips = fixture_wavs(args.fixtures)
    wav_30s = write_30s(clips, os.path.join(os.path.dirname(args.out), clip_30s))
    inputs = {'30 s': ([wav_30s], [log_mel(load_audio(wav_30s))]),
              f'{len(clips)} clips': (clips, [log_mel(load_audio(w)) for w in clips])}
    cores = os.cpu_count()
    print(f'{cores} cores; CTranslate2 and torch on {threads} threads, acm-serve one worker per core; '
          f'{args.repeats} repeats after a warm-up', flush=True)
    if cores != threads:
        print(f'note: acm-serve runs {cores} workers, the others {threads} threads', flush=True)

    res = bench(inputs, runners, args.repeats)
    for by_engine in res.values():
        for r in by_engine.values():
            r['encoder_median'] = statistics.median(r['encoder'])
            r['whole_median'] = statistics.median(r['whole'])
            r['decoder_per_token_median'] = statistics.median(r['decoder_per_token']) if r['decoder_per_token'] \
                else None
    diffs = disagreements(res)
    print()
    print(table(res))
    print()
    for name, lines in diffs.items():
        print(f'{name}: ' + ('; '.join(lines) if lines else 'the three engines wrote the same tokens'))

    report = dict(date=time.strftime('%Y-%m-%d'), commit=git_commit(), cpu=cpu_name(), cores=cores, threads=threads,
                  sgemm_gflops=probe['gflops'],
                  repeats=args.repeats, versions=dict(ctranslate2=ctranslate2.__version__, torch=torch.__version__),
                  unit='seconds per clip', inputs={name: [os.path.relpath(w) for w in wavs]
                                                   for name, (wavs, _) in inputs.items()},
                  results=res, token_differences=diffs, table=table(res))
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
