"""
The synthetic speech corpus for ACMizing Whisper tiny.en (docs/speech-data.md): fortune-cookie passages
(acm_tools.speech_text) spoken by espeak-ng, flite and Piper voices (acm_tools.speech_voices) and augmented
(acm_tools.speech_augment), as 16 kHz mono 16-bit WAVs and a JSONL manifest per split.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.speech_corpus --out build/speech   # = make speech-data
        [--train N] [--val N] [--seed S] [--jobs J] [--quick]
    PYTHONPATH=tools .venv/bin/python -m acm_tools.speech_corpus --list-val docs/speech-val.tsv

Writes <out>/train/NNNNNN.wav, <out>/val/NNNNNN.wav and <out>/train.jsonl, <out>/val.jsonl, a clip a line:
    {"id", "file" (relative to <out>), "text", "voice", "family", "source" (fortune file#index),
     "augmentation": {"rate", "pitch_cents", "reverb": null | {"rt60", "drr_db", "predelay"},
                      "noise": null | {"colour", "snr_db"}, "pad": [before, after] seconds, "peak_db", "seed"},
     "seconds"}
--quick writes 6 clips per split (each voice family twice) for the tests. --list-val writes the validation
plan (what each clip says, in which voice, with which augmentation) without synthesising it.

Every choice comes from NumPy generators seeded by (seed, split), and each clip's noise (Piper's, the room's,
the additive noise's) from its own seed, so a clip is the same whatever --jobs is and whichever other clips
are made. The validation plan does not depend on --train. Training clips never say a validation sentence
(speech_text), and never use a voice in `held_out_voices`.
"""
import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool

import numpy as np

from . import speech_augment, speech_text, speech_voices
from .whisper_fixtures import write_wav
from .whisper_ref import to_mono_16k

# -----------------------------------------------------------------------------
# config
out = 'build/speech'
train_clips = 6000
val_clips = 300
quick_clips = 6  # per split, with --quick
seed = 11
held_out_voices = ['flite:awb']  # validation only: a speaker training never hears
max_seconds = 30.0  # Whisper's window
no_variant = 0.2  # of espeak-ng clips, spoken without a variant
rate_range = (0.8, 1.25)  # speaking rate, times the synthesizer's normal
pitch = dict(p=0.5, cents=(-300, 300))
reverb = dict(p=0.3, rt60=(0.2, 0.8), drr_db=(0.0, 12.0), predelay=(0.002, 0.02))
noise = dict(p=0.4, colours=['white', 'pink', 'brown'], snr_db=(8.0, 30.0))
pad = (0.0, 0.4)  # seconds of silence before and after, each
peak_db = (-20.0, -1.0)
# -----------------------------------------------------------------------------

SPLITS = {'train': 0, 'val': 1}  # the generator stream of each split


@dataclass
class Clip:
    id: str
    file: str
    text: str
    voice: str
    family: str
    source: str
    augmentation: dict


def choose_augmentation(rng):
    """-> the augmentation of one clip (speech_augment.apply's `aug`, plus the rate and the seed)."""
    def u(lo_hi):
        return float(rng.uniform(*lo_hi))

    a = dict(rate=round(u(rate_range), 3), pitch_cents=0, reverb=None, noise=None)
    if rng.random() < pitch['p']:
        a['pitch_cents'] = int(rng.integers(pitch['cents'][0], pitch['cents'][1] + 1))
    if rng.random() < reverb['p']:
        a['reverb'] = dict(rt60=round(u(reverb['rt60']), 3), drr_db=round(u(reverb['drr_db']), 1),
                           predelay=round(u(reverb['predelay']), 4))
    if rng.random() < noise['p']:
        a['noise'] = dict(colour=str(rng.choice(noise['colours'])), snr_db=round(u(noise['snr_db']), 1))
    a['pad'] = [round(u(pad), 3), round(u(pad), 3)]
    a['peak_db'] = round(u(peak_db), 1)
    a['seed'] = int(rng.integers(2 ** 63))
    return a


def plan(split, n, seed=seed, texts=None, voices=None, variants=None):
    """The clips of a split: which passage, in which voice, with which augmentation -> [Clip]. texts, voices and
    variants default to speech_text.pool()'s passages of the split, speech_voices.voices() and
    speech_voices.espeak_variants()."""
    if n == 0:
        return []  # e.g. --train 0: the validation set alone
    rng = np.random.default_rng([seed, SPLITS[split]])
    if texts is None:
        train, val = speech_text.pool()
        texts = train if split == 'train' else val
    voices = voices or speech_voices.voices()
    variants = speech_voices.espeak_variants() if variants is None else variants
    if split == 'train':
        voices = {f: [v for v in vs if v not in held_out_voices] for f, vs in voices.items()}
    elif n > len(texts):
        raise ValueError(f'{n} validation clips, but only {len(texts)} validation passages')
    families = sorted(voices)
    # passages: a permutation, then another, ... (validation: one, so each passage is said once)
    order = np.concatenate([rng.permutation(len(texts)) for _ in range(-(-n // len(texts)))])[:n]
    clips = []
    for i in range(n):
        if i % len(families) == 0:  # every family once in each run of len(families) clips
            block = [families[j] for j in rng.permutation(len(families))]
        fam = block[i % len(families)]
        voice = str(rng.choice(voices[fam]))
        if fam == 'espeak-ng' and rng.random() >= no_variant:
            voice += '+' + str(rng.choice(variants))
        p = texts[int(order[i])]
        clips.append(Clip(f'{split}-{i:06d}', f'{split}/{i:06d}.wav', p.text, voice, fam, p.source,
                          choose_augmentation(rng)))
    return clips


# -----------------------------------------------------------------------------
# synthesis

_synth = None


def _init_worker():
    global _synth
    _synth = speech_voices.Synthesizer()


def render(clip, synth=None):
    """A planned clip -> (int16 16 kHz audio, the augmentation as applied). The rate is raised, and recorded,
    when the clip would last over max_seconds."""
    synth = synth or _synth
    aug = dict(clip.augmentation)
    for _ in range(4):
        audio, sr = synth(clip.voice, clip.text, aug['rate'], aug['seed'])
        pcm = speech_augment.apply(to_mono_16k(audio[:, None], sr), aug, aug['seed'])
        seconds = len(pcm) / speech_augment.sample_rate
        if seconds <= max_seconds:
            return pcm, aug
        aug['rate'] = round(aug['rate'] * seconds / (max_seconds - 1), 3)
    raise RuntimeError(f'{clip.id}: still {seconds:.1f} s at rate {aug["rate"]}')


def _make(args):
    clip, out_dir = args
    pcm, aug = render(clip)
    path = os.path.join(out_dir, clip.file)
    write_wav(path + '.tmp', pcm[:, None], speech_augment.sample_rate)
    os.replace(path + '.tmp', path)
    row = asdict(clip)
    row['augmentation'] = aug
    row['seconds'] = round(len(pcm) / speech_augment.sample_rate, 3)
    return row


def generate(out_dir, counts, seed=seed, jobs=None, log=print):
    """Plan and synthesise {split: n clips} into out_dir -> {split: manifest rows}."""
    manifests = {}
    with Pool(jobs or os.cpu_count(), initializer=_init_worker) as pool:
        for split, n in counts.items():
            clips = plan(split, n, seed)
            os.makedirs(os.path.join(out_dir, split), exist_ok=True)
            rows, t0 = [], time.time()
            for row in pool.imap(_make, [(c, out_dir) for c in clips], chunksize=4):
                rows.append(row)
                if len(rows) % 500 == 0 or len(rows) == n:
                    log(f'{split}: {len(rows)}/{n} clips, {sum(r["seconds"] for r in rows) / 3600:.2f} h, '
                        f'{time.time() - t0:.0f} s')
            path = os.path.join(out_dir, f'{split}.jsonl')
            with open(path + '.tmp', 'w') as f:
                f.writelines(json.dumps(r) + '\n' for r in rows)
            os.replace(path + '.tmp', path)
            manifests[split] = rows
    return manifests


def read_manifest(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def summary(rows):
    """-> {'clips', 'hours', 'voices', 'by_family': {family: [clips, hours]}}."""
    by = {}
    for r in rows:
        c = by.setdefault(r['family'], [0, 0.0])
        c[0] += 1
        c[1] += r['seconds'] / 3600
    return dict(clips=len(rows), hours=round(sum(r['seconds'] for r in rows) / 3600, 3),
                voices=len({r['voice'] for r in rows}),
                by_family={f: [c, round(h, 3)] for f, (c, h) in sorted(by.items())})


# -----------------------------------------------------------------------------
# the validation list (docs/speech-val.tsv)

VAL_COLUMNS = ['id', 'voice', 'rate', 'pitch_cents', 'reverb', 'noise', 'source', 'text']


def val_listing(clips):
    """Planned clips -> the lines of a TSV listing, with a header."""
    lines = ['\t'.join(VAL_COLUMNS)]
    for c in clips:
        a = c.augmentation
        rv = '-' if a['reverb'] is None else f'rt60={a["reverb"]["rt60"]},drr={a["reverb"]["drr_db"]}'
        nz = '-' if a['noise'] is None else f'{a["noise"]["colour"]},snr={a["noise"]["snr_db"]}'
        lines.append('\t'.join([c.id, c.voice, str(a['rate']), str(a['pitch_cents']), rv, nz, c.source, c.text]))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', default=out, help='output directory (default: %(default)s)')
    p.add_argument('--train', type=int, default=train_clips, help='training clips (default: %(default)s)')
    p.add_argument('--val', type=int, default=val_clips, help='validation clips (default: %(default)s)')
    p.add_argument('--seed', type=int, default=seed, help='(default: %(default)s)')
    p.add_argument('--jobs', type=int, default=None, help='processes (default: one per core)')
    p.add_argument('--quick', action='store_true', help=f'{quick_clips} clips per split, for the tests')
    p.add_argument('--list-val', metavar='TSV', help='write the validation plan to TSV and stop')
    args = p.parse_args(argv)
    if args.list_val:
        with open(args.list_val, 'w') as f:
            f.write('\n'.join(val_listing(plan('val', args.val, args.seed))) + '\n')
        return
    counts = dict(train=quick_clips, val=quick_clips) if args.quick else dict(train=args.train, val=args.val)
    t0 = time.time()
    manifests = generate(args.out, counts, args.seed, args.jobs)
    for split, rows in manifests.items():
        print(f'{split}: {json.dumps(summary(rows))}')
    print(f'{args.out}: {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
