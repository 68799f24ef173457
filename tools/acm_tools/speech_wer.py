"""
Is the synthetic speech corpus intelligible? Dense Whisper tiny.en's word error rate on its validation clips,
by voice family, by held-out voice and by augmentation (docs/speech-data.md has the figures).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.speech_wer --corpus build/speech [--per-family 20]
        [--engine ct2 | reference] [--split val]
    PYTHONPATH=tools .venv/bin/python -m acm_tools.speech_wer --screen-variants

Takes the first --per-family clips of each voice family in the manifest (all with --per-family 0), transcribes
them greedily and prints the WER (acm_tools.wer) of each group, the median of its clips' WERs, and how many of
its clips made greedy decoding loop (a phrase repeated to the token limit: a few such clips can dominate a
group's WER); writes every transcript and the table to <corpus>/dense_wer_<split>.json. --rescore takes the
transcripts from that file instead of transcribing again. Engines: `ct2`, CTranslate2 4.8.5 on build/whisper/ct2 (the CTranslate2 model
build/models/whisper-tiny.en was converted from; float32 compute, batches of 8), as whisper_fixtures decodes;
`reference`, our PyTorch reference (acm_tools.whisper_ref) on build/models/whisper-tiny.en, one clip at a time,
which gives the same tokens (tools/tests/test_whisper_fixtures.py) but takes longer.

--screen-variants chose speech_voices.espeak_variants_excluded: it has every espeak-ng variant (and no variant)
speak `screen_passages` training passages with two voices, en-us and en-gb-x-rp, clean, at rate 1, and prints
each variant's WER over those 12 clips, worst first.
"""
import argparse
import json
import os
import time

import numpy as np

from . import speech_text, speech_voices, whisper_tiny_en
from .speech_corpus import held_out_voices, read_manifest
from .wer import corpus_wer, edits, normalize
from .whisper_ref import bytes_to_unicode, load_audio, log_mel, to_mono_16k

# -----------------------------------------------------------------------------
# config
batch = 8
screen_voices = ['en-us', 'en-gb-x-rp']
screen_passages = 6
# -----------------------------------------------------------------------------


def ct2_transcriber(path=whisper_tiny_en.ct2_dir, prompt=(50257, 50362)):
    """-> transcribe(list of 16 kHz audio) -> list of text, by CTranslate2 (prompt: <|startoftranscript|>
    <|notimestamps|>, as the model's generation config has it)."""
    import ctranslate2
    model = ctranslate2.models.Whisper(path, device='cpu', compute_type='float32', intra_threads=os.cpu_count())
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def transcribe(audios):
        texts = []
        for i in range(0, len(audios), batch):
            mels = np.stack([log_mel(a) for a in audios[i:i + batch]])
            x = ctranslate2.StorageView.from_array(mels)
            for r in model.generate(x, [list(prompt)] * len(mels), beam_size=1, suppress_blank=True,
                                    suppress_tokens=[-1], max_length=448):
                tokens = [t for t in r.sequences[0] if not t.startswith('<|')]
                texts.append(bytes(byte_of[c] for t in tokens for c in t).decode('utf-8', errors='replace'))
        return texts
    return transcribe


def reference_transcriber(path=whisper_tiny_en.out):
    import torch
    from .whisper_ref import Whisper
    torch.set_num_threads(os.cpu_count())
    model = Whisper(path)
    return lambda audios: [model.transcribe(a)[1] for a in audios]


def sample(rows, per_family):
    """The first per_family rows of each family, in manifest order (all rows when per_family is 0)."""
    if not per_family:
        return list(rows)
    taken = {}
    out = []
    for r in rows:
        if taken.get(r['family'], 0) < per_family:
            taken[r['family']] = taken.get(r['family'], 0) + 1
            out.append(r)
    return out


def groups(row):
    """The table rows a clip counts in."""
    a = row['augmentation']
    clean = a['noise'] is None and a['reverb'] is None
    g = ['all', f'{row["family"]}', f'{row["family"]}, {"clean" if clean else "noise or reverb"}']
    if row['voice'] in held_out_voices:
        g.append('held-out voices')
    g.append('clean' if clean else 'noise and reverb' if a['noise'] and a['reverb'] else
             'noise' if a['noise'] else 'reverb')
    return g


def loops(reference, hypothesis):
    """Did greedy decoding loop? More than twice the reference's words, plus 5, in the hypothesis."""
    return len(normalize(hypothesis).split()) > 2 * len(normalize(reference).split()) + 5


def table(rows, hyps):
    """-> {group: {'clips', 'ref_words', 'wer', 'sub', 'dele', 'ins', 'median', 'loops'}}: the corpus WER, the
    median of the clips' WERs, and how many clips looped."""
    by = {}
    for r, h in zip(rows, hyps):
        for g in groups(r):
            by.setdefault(g, []).append((r['text'], h))
    out = {}
    order = ['all', *sorted(g for g in by if g.split(',')[0] in speech_voices.FAMILIES), 'held-out voices',
             'clean', 'noise', 'reverb', 'noise and reverb']
    for g in [g for g in order if g in by]:
        pairs = by[g]
        e = corpus_wer(*zip(*pairs))
        per_clip = [edits(r, h).wer for r, h in pairs if normalize(r)]
        out[g] = dict(clips=len(pairs), ref_words=e.ref_words, wer=round(e.wer, 4), sub=e.substitutions,
                      dele=e.deletions, ins=e.insertions, median=round(float(np.median(per_clip)), 4),
                      loops=sum(loops(r, h) for r, h in pairs))
    return out


def markdown(t):
    lines = ['| group | clips | reference words | WER | sub / del / ins | median clip WER | loops |',
             '| --- | ---: | ---: | ---: | --- | ---: | ---: |']
    for g, v in t.items():
        lines.append(f'| {g} | {v["clips"]} | {v["ref_words"]} | {100 * v["wer"]:.1f}% | '
                     f'{v["sub"]} / {v["dele"]} / {v["ins"]} | {100 * v["median"]:.1f}% | {v["loops"]} |')
    return '\n'.join(lines)


def screen_variants(transcribe, log=print):
    """-> {variant ('' for none): WER} of every espeak-ng variant, excluded ones too (the module's doc)."""
    train, _ = speech_text.pool()
    rng = np.random.default_rng(0)
    texts = [train[int(i)].text for i in rng.choice(len(train), screen_passages, replace=False)]
    saved = speech_voices.espeak_variants_excluded
    speech_voices.espeak_variants_excluded = set()
    try:
        variants = [''] + speech_voices.espeak_variants()
    finally:
        speech_voices.espeak_variants_excluded = saved
    out = {}
    for v in variants:
        refs, audio = [], []
        for base in screen_voices:
            for t in texts:
                a, sr = speech_voices.espeak(base + (f'+{v}' if v else ''), t, 1.0)
                refs.append(t)
                audio.append(to_mono_16k(a[:, None], sr))
        out[v] = corpus_wer(refs, transcribe(audio)).wer
        log(f'{v or "(none)":14} {100 * out[v]:6.1f}%')
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--corpus', default='build/speech', help='the corpus directory (default: %(default)s)')
    p.add_argument('--split', default='val', help='(default: %(default)s)')
    p.add_argument('--per-family', type=int, default=20, help='clips per voice family, 0 for all (default: 20)')
    p.add_argument('--engine', choices=['ct2', 'reference'], default='ct2')
    p.add_argument('--screen-variants', action='store_true', help="WER of each espeak-ng variant, then stop")
    p.add_argument('--rescore', action='store_true', help='score the transcripts of the last run again')
    args = p.parse_args(argv)
    if args.screen_variants:
        t0 = time.time()
        result = screen_variants(ct2_transcriber() if args.engine == 'ct2' else reference_transcriber())
        print('worst first:')
        for v, w in sorted(result.items(), key=lambda kv: -kv[1]):
            print(f'{v or "(none)":14} {100 * w:6.1f}%')
        print(f'{time.time() - t0:.0f} s')
        return
    rows = sample(read_manifest(os.path.join(args.corpus, f'{args.split}.jsonl')), args.per_family)
    path = os.path.join(args.corpus, f'dense_wer_{args.split}.json')
    t0 = time.time()
    if args.rescore:
        with open(path) as f:
            saved = json.load(f)
        hyp_of = {c['id']: c['hypothesis'] for c in saved['clips']}
        hyps = [hyp_of[r['id']] for r in rows]
        args.engine = saved['engine']
    else:
        transcribe = ct2_transcriber() if args.engine == 'ct2' else reference_transcriber()
        hyps = transcribe([load_audio(os.path.join(args.corpus, r['file'])) for r in rows])
    seconds = time.time() - t0
    t = table(rows, hyps)
    print(markdown(t))
    print(f'{len(rows)} clips, {sum(r["seconds"] for r in rows) / 60:.1f} min of audio, transcribed by '
          f'{args.engine}' + ('' if args.rescore else f' in {seconds:.0f} s'))
    if args.rescore:
        return
    with open(path, 'w') as f:
        json.dump(dict(engine=args.engine, table=t,
                       clips=[dict(id=r['id'], voice=r['voice'], text=r['text'], hypothesis=h)
                              for r, h in zip(rows, hyps)]), f, indent=1)


if __name__ == '__main__':
    main()
