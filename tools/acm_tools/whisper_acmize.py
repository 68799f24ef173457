"""
ACMize Whisper: replace the MLPs of a dense Whisper (fc1, GELU, fc2) by Adaptive Computation Modules and train
them with acmize.py's three phases and budget robustness (acm_training.py), on audio alone: the dense model is
the teacher of its own activations, logits and greedy transcripts.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_acmize --teacher build/models/whisper-tiny.en \\
        --audio-manifest build/speech/train.jsonl [--val-manifest build/speech/val.jsonl] \\
        --out models/whisper-tiny.en-acm [--quick] [--targets encoder-mlp,decoder-mlp] [--num-learners 4]

A manifest has a JSON object per line with `file` (a WAV, relative to the manifest's folder unless absolute)
and `text` (used only by the report's word error rate). Per training clip, the teacher is run once: its
log-mel, its greedy transcript, each ACM layer's MLP input and output (the encoder's at sampled frames: the
speech and some of the padding), and its last decoder hidden states on its transcript (its logits, up to the
tied projection) are kept in <work> (reused while the manifest, the teacher and these settings are the same).

  0. init      each ACM starts from the MLP it replaces: hidden units by importance, cut into N learners.
  1. distill   every prefix k of learners regresses the teacher MLP's output on the captured inputs.
  2. gates     each gate learns the smallest k whose error ratio e_k/e_{k+1} is below tau_error.
  3. e2e       the ACMs (the dense weights stay the teacher's) under straight-through Gumbel sampling, on the
               teacher's transcript: cross-entropy to its tokens + KL to its logits + cost_weight·|compute
               fraction − beta_target| + entropy and diversity terms; half the batches under random per-clip
               caps beta ~ U[0.2, 1], spread over the ACMs by their budget shares as the engine spreads them.
Then each ACM's budget_share is measured on training clips, the ACM weights are rounded to F16 (what is
exported), and on the validation clips each budget's word error rate and compute fraction is reported.

Writes <out>/config.json (the whole model's, with its `acm` entries), <out>/acm.safetensors (the ACM tensors
only, F16, under model.safetensors' names) and <out>/metrics.json; <work>/train.log. whisper_tiny_en.build_acm
assembles a model directory from them and the dense model; this tool assembles one into <work>/model and
checks it gives the trained model's logits.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from .acm import ACM, ACMConfig, GateConfig, uniform_k
from .acm_training import (cosine_lr, distill, distill_logits, diversity, gate_terms, init_mlp, track_budget_shares,
                           train_gates)
from .modelio import to_stored
from .train_teacher import start_run
from .whisper_format import WhisperConfig, config_to_json, load_whisper
from .whisper_ref import Policy, Tokenizer, Whisper, load_audio, log_mel
from .whisper_tiny_en import build_acm

# -----------------------------------------------------------------------------
# config
out = 'models/whisper-tiny.en-acm'
work = 'build/whisper/acmize'  # captured activations, train.log, the assembled model
seed = 0
# the first 2,000 clips of the manifest (about 3.4 h of speech): phase 3 draws 1,200 clips, phase 1 has ~360k rows
# per ACM to sample, and capturing the corpus's 6,000 would take 68 min here instead of 23
train_clips = 2000
targets = 'encoder-mlp'  # encoder-mlp, decoder-mlp: which layers' MLPs become ACMs
# N; each learner has ffn_dim / N hidden units. 8 rather than 4: with k_min 1 (below) a quarter of the learners is
# every frame's floor when N = 4, so a budget of 0.25 left nothing to route (its WER was uniform k = 1's, 50.0%
# against the dense model's 30.5% on the validation clips); with N = 8 the floor is an eighth, and the same run
# on the same captured clips gave 29.2% at 0.25 and 27.9% at 0.5 (docs/whisper-acm.md)
num_learners = 8
# k_min: phase 2's labels never asked for k = 0, but with k_min = 0 a cap of 0.25 spread by the budget shares left
# the least used encoder layer under one learner a frame, and a quarter of its frames without an MLP turned
# every transcript into noise (WER 102%, in the reference and in the engine); a floor of one learner avoids it
min_choice = 1
gate = dict(depth=3, hidden_dim=16, activation='identity')  # the paper's gate
speech_frames, padding_frames = 128, 32  # encoder frames captured per clip: in the speech, in the padding after it
# rows: captured frames (or decoder tokens) per ACM and step; 1024 rather than 4096: four times the steps in the
# same time, which brought each prefix's error down further
phase1_steps, phase1_lr, phase1_rows = 3000, 1e-3, 1024
phase2_steps, phase2_lr = 1000, 1e-3
phase3_steps, phase3_lr, phase3_clips = 300, 1e-4, 4  # clips: utterances per step
tau_error = 1.2
gumbel_tau = 0.8
beta_target = 0.6
cost_weight, entropy_weight, diversity_weight = 0.1, 0.05, 0.05
distill_weight, distill_temperature = 1.0, 1.0
robust_fraction = 0.5
robust_range = (0.2, 1.0)
share_momentum = 0.95
calibration_clips = 48  # training clips on which the exported budget shares are measured
fidelity_clips = 16  # training clips on which the full budget is compared to the teacher
# uniform f: every frame runs the learners of compute fraction f (k = f·N), the static baseline of a cap of f
report_budgets = ['full', 'auto', 'cap 0.75', 'cap 0.5', 'cap 0.375', 'cap 0.25', 'uniform 0.25', 'uniform 0.5',
                  'uniform 0.75']
# one thread: on a shared 2-core machine, two OpenMP threads spin against each other and the other processes,
# and a decoder step's small ops take 15x longer (measured: 15 ms -> 250 ms)
threads = 1
# --quick (CI): a few utterances, a handful of steps per phase
quick = dict(clips=6, val_clips=2, phase1_steps=6, phase2_steps=4, phase3_steps=1, phase3_clips=2,
             calibration_clips=2, fidelity_clips=3, report_budgets=['full', 'auto', 'cap 0.5'])
# -----------------------------------------------------------------------------

TARGETS = ('encoder-mlp', 'decoder-mlp')
CACHE_VERSION = 2  # what capture_clip keeps


def acm_config(cfg: WhisperConfig, targets, N):
    """The student's WhisperConfig: the teacher's, with an ACM as the MLP of every layer of the targets."""
    acm = {}
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f'unknown target {t!r}: use {", ".join(TARGETS)}')
        part, layers, ffn = ((('encoder', cfg.encoder_layers, cfg.encoder_ffn_dim)) if t == 'encoder-mlp'
                             else ('decoder', cfg.decoder_layers, cfg.decoder_ffn_dim))
        if ffn % N:
            raise ValueError(f'{part} ffn_dim {ffn} is not a multiple of {N} learners')
        for i in range(layers):
            acm[f'model.{part}.layers.{i}'] = ACMConfig(
                num_learners=N, learner_dim=ffn // N, activation='gelu', min_choice=min_choice, hidden_bias=True,
                output_bias=True, gate=GateConfig(**gate), budget_share=1.0)
    fields = {k: v for k, v in vars(cfg).items() if k != 'acm'}
    return WhisperConfig(**fields, acm=dict(sorted(acm.items(), key=lambda kv: cfg.layer_paths().index(kv[0]))))


# -----------------------------------------------------------------------------
# data

def read_manifest(path, limit=None):
    """A JSONL manifest -> [(wav path, text)]; a relative `file` is relative to the manifest's folder."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                file = row['file'] if os.path.isabs(row['file']) else os.path.join(os.path.dirname(path), row['file'])
                rows.append((file, row['text']))
    return rows[:limit]


class Recording(Whisper):
    """The dense teacher, keeping each layer MLP's input and output while `saved` is a dict."""
    saved = None

    def mlp(self, x, p, policy, lengths, first=None):
        y = super().mlp(x, p, policy, lengths, first)
        if self.saved is not None:
            self.saved[p] = (x, y)
        return y


def forced_steps(gen, ids):
    """The decoder calls greedy decoding made for these ids: the prompt, then each token (for the ACMs'
    sequences)."""
    return [len(gen.prompt)] + [1] * len(ids)


@torch.no_grad()
def capture_clip(teacher, audio, paths, g):
    """One clip through the teacher -> its audio, transcript, last decoder hidden states on prompt + transcript,
    and {path: (MLP input, MLP output)} at sampled encoder frames or every decoder token. The activations are
    kept as F16 and the audio rather than its log-mel, which is 30 s long: a 3-s clip takes about 1 MB."""
    mel = torch.from_numpy(log_mel(audio, teacher.cfg.num_mel_bins))
    teacher.saved = {}
    encoded = teacher.encode(mel)
    encoder_saved, teacher.saved = teacher.saved, None
    cross = teacher.cross_kv(encoded)
    ids = teacher.generate(cross)
    teacher.saved = {}
    tokens = torch.tensor(teacher.gen.prompt + ids)
    hidden = teacher.decode_hidden(tokens, cross, [], steps=forced_steps(teacher.gen, ids))  # (2 + n, d)
    decoder_saved, teacher.saved = teacher.saved, None
    # frames of speech: the encoder's stride is 2 mel frames of 160 samples; the rest is the 30-s padding
    S = teacher.cfg.max_source_positions
    speech = min(S, max(1, math.ceil(len(audio) / 320)))
    frames = torch.randperm(speech, generator=g)[:speech_frames]
    if speech < S:
        frames = torch.cat([frames, speech + torch.randperm(S - speech, generator=g)[:padding_frames]])
    acts = {}
    for p in paths:
        x, y = encoder_saved[p] if p in encoder_saved else decoder_saved[p]
        acts[p] = tuple(a[frames].half() if p in encoder_saved else a.half() for a in (x, y))
    return dict(audio=torch.from_numpy(audio), ids=ids, hidden=hidden, acts=acts)


def clip_mel(clip):
    return torch.from_numpy(log_mel(clip['audio'].numpy()))


def cache_key(teacher_dir, clips, paths):
    h = hashlib.sha256()
    with open(os.path.join(teacher_dir, 'model.safetensors'), 'rb') as f:
        h.update(f.read(1 << 20))
    h.update(json.dumps([CACHE_VERSION, clips, paths, speech_frames, padding_frames, seed]).encode())
    return h.hexdigest()[:16]


def capture_all(teacher, teacher_dir, clips, paths, cache_dir, name):
    """capture_clip for every clip, from <cache_dir>/<name>-<key>.pt when there. The frames are drawn from their
    own generator, so that training draws the same batches whether the capture was cached or not."""
    key = cache_key(teacher_dir, [f for f, _ in clips], paths)
    path = os.path.join(cache_dir, f'{name}-{key}.pt')
    if os.path.exists(path):
        logging.info(f'{name}: captured activations from {path}')
        return torch.load(path)
    t = time.time()
    g = torch.Generator().manual_seed(seed)
    data = [capture_clip(teacher, load_audio(f), paths, g) for f, _ in tqdm(clips, desc=f'capture {name}', leave=False)]
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(data, path + '.tmp')
    os.replace(path + '.tmp', path)
    logging.info(f'{name}: captured {len(clips)} clips in {time.time() - t:.0f} s')
    return data


def pooled(data, paths):
    """{path: (inputs, outputs)}, every clip's captured rows together (F16)."""
    return {p: (torch.cat([c['acts'][p][0] for c in data]), torch.cat([c['acts'][p][1] for c in data])) for p in paths}


def row_batches(pool, steps, g):
    """steps batches of phase1_rows random captured rows per ACM: {path: (input (1, R, d), output (1, R, d))},
    float32."""
    for _ in range(steps):
        batch = {}
        for p, (x, y) in pool.items():
            idx = torch.randint(len(x), (min(phase1_rows, len(x)),), generator=g)
            batch[p] = (x[idx][None].float(), y[idx][None].float())
        yield batch


# -----------------------------------------------------------------------------
# the student

def make_student(teacher_dir, cfg):
    """The teacher's weights with fresh ACMs in place of the target MLPs (as yet untrained)."""
    _, gen, tensors = load_whisper(teacher_dir)
    tensors = {k: v for k, v in tensors.items()
               if not any(k.startswith(f'{p}.fc1.') or k.startswith(f'{p}.fc2.') for p in cfg.acm)}
    for p, c in cfg.acm.items():
        tensors.update({f'{p}.{k}': v for k, v in ACM(cfg.d_model, cfg.d_model, c).state_dict().items()})
    return Whisper.from_tensors(cfg, gen, tensors, Tokenizer(os.path.join(teacher_dir, 'tokenizer.json')))


def acm_parameters(student):
    return [p for acm in student.acms.values() for p in acm.parameters()]


def forced_logits(model, clip, policy):
    """model on the clip's log-mel, decoding the teacher's transcript in greedy's steps -> the logits that
    predict each transcript token and the final eot [n + 1, vocab]."""
    gen = model.gen
    cross = model.cross_kv(model.encode(clip_mel(clip), policy))
    hidden = model.decode_hidden(torch.tensor(gen.prompt + clip['ids']), cross, [], policy,
                                 steps=forced_steps(gen, clip['ids']))
    return model.logits(hidden[len(gen.prompt) - 1:])


def phase3(student, data, g, steps, clips_per_step):
    """End to end on the teacher's transcripts (see the module's docstring); the ACMs' weights only."""
    params = acm_parameters(student)
    opt = torch.optim.AdamW(params, lr=phase3_lr, weight_decay=0.0)
    d = student.cfg.d_model
    flops = {p: c.learner_flops(d, d) for p, c in student.cfg.acm.items()}
    eos = student.gen.eos_token_id
    for acm in student.acms.values():
        acm.train()
    parts = {}
    bar = tqdm(range(steps), desc='phase 3: end to end (robust)', leave=False)
    for step in bar:
        cosine_lr(opt, phase3_lr, step, steps)
        idx = torch.randperm(len(data), generator=g)[:clips_per_step].tolist()
        capped = torch.rand(1, generator=g).item() < robust_fraction
        tasks, kds, fractions, entropies, all_gates = [], [], [], [], []
        for i in idx:
            clip = data[i]
            beta = None
            if capped:
                beta = robust_range[0] + (robust_range[1] - robust_range[0]) * torch.rand(1, generator=g).item()
            policy = Policy(mode='gumbel', tau=gumbel_tau, beta=beta)
            logits = forced_logits(student, clip, policy)  # (n + 1, vocab)
            with torch.no_grad():
                teacher_logits = student.logits(clip['hidden'][len(student.gen.prompt) - 1:])
            target = torch.tensor(clip['ids'] + [eos])
            tasks.append(F.cross_entropy(logits, target))
            kds.append(distill_logits(logits, teacher_logits, distill_temperature))
            gates = {p: torch.cat(calls)[None] for p, calls in policy.choices.items()}  # (1, T_p, C)
            fraction, entropy = gate_terms(gates, student.cfg.acm, flops)
            fractions.append(fraction)
            entropies.append(entropy)
            all_gates.append(gates)
        fraction_b = torch.cat(fractions)  # (B,)
        task, kd = torch.stack(tasks).mean(), torch.stack(kds).mean()
        cost = (fraction_b.mean() - beta_target).abs() if not capped else fraction_b.mean() * 0
        if not capped:
            for gates in all_gates:
                track_budget_shares(gates, student.cfg.acm, share_momentum)
        loss = (task + distill_weight * kd + cost_weight * cost - entropy_weight * torch.cat(entropies).mean()
                + diversity_weight * diversity(fraction_b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        parts = dict(task=task.item(), kd=kd.item(), fraction=fraction_b.mean().item(), capped=capped)
        bar.set_postfix(task=f'{task.item():.3f}', kd=f'{kd.item():.3f}', frac=f'{fraction_b.mean().item():.2f}')
    for acm in student.acms.values():
        acm.eval()
    logging.info(f'phase 3: last batch {parts}')
    return parts


@torch.no_grad()
def calibrate_budget_shares(student, data):
    """Set each ACM's budget_share (docs/compute-budget.md) to the share of its learners the gates run in auto
    mode over the clips' encoder frames and the decoder steps of their transcripts, rounded to 6 decimals."""
    sums = {p: [0.0, 0] for p in student.cfg.acm}
    for clip in data:
        policy = Policy(mode='auto')
        forced_logits(student, clip, policy)
        for p, calls in policy.choices.items():
            k = torch.cat(calls)
            sums[p][0] += k.double().sum().item()
            sums[p][1] += k.numel()
    for p, c in student.cfg.acm.items():
        c.budget_share = round(sums[p][0] / (sums[p][1] * c.num_learners), 6)
    return {p: c.budget_share for p, c in student.cfg.acm.items()}


@torch.no_grad()
def full_budget_fidelity(student, data):
    """How close the student at full budget is to the teacher, on the clips' teacher transcripts: the mean per
    token KL(teacher ‖ student) and the share of tokens whose argmax is the teacher's token."""
    kls, agree, n = 0.0, 0, 0
    for clip in data:
        logits = forced_logits(student, clip, Policy(mode='full'))
        teacher_logits = student.logits(clip['hidden'][len(student.gen.prompt) - 1:])
        kls += distill_logits(logits, teacher_logits, 1.0).item() * len(logits)
        agree += (logits.argmax(-1) == teacher_logits.argmax(-1)).sum().item()
        n += len(logits)
    return dict(kl=kls / n, top1_agreement=agree / n, tokens=n)


@torch.no_grad()
def round_to_f16(student):
    """Round the ACMs' weights to F16, as exported, so that what is reported is what is served."""
    for p in acm_parameters(student):
        p.copy_(p.half().float())


# -----------------------------------------------------------------------------
# report

def word_error_rate(refs, hyps):
    """Word-level Levenshtein distance over reference words, on lowercase text without punctuation."""
    def words(s):
        return re.sub(r"[^a-z0-9' ]+", ' ', s.lower()).split()
    errors = total = 0
    for ref, hyp in zip(refs, hyps):
        r, h = words(ref), words(hyp)
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors += row[-1]
        total += len(r)
    return errors / max(total, 1)


def budget_policy(name, num_learners):
    """A report budget's Policy: 'full', 'auto', 'cap β', or 'uniform f' (k = f·N learners for every frame)."""
    if name in ('full', 'auto'):
        return Policy(mode=name)
    if name.startswith('cap '):
        return Policy(mode='cap', beta=float(name[4:]))
    if name.startswith('uniform '):
        return Policy(mode='uniform', k=uniform_k(float(name[8:]), num_learners))
    raise ValueError(f'unknown report budget {name!r}')


def num_learners_of(model):
    """N of a model's ACMs, which all have the same (this tool makes them so)."""
    ns = {c.num_learners for c in model.cfg.acm.values()}
    if len(ns) != 1:
        raise ValueError(f'ACMs with different numbers of learners: {sorted(ns)}')
    return ns.pop()


@torch.no_grad()
def report(student, teacher, clips, budgets):
    """Greedy transcription of each clip by the dense teacher and by the student at each budget ->
    {name: {wer, wer_to_dense, fraction, seconds}}: WER against the manifest's text and against the dense
    model's transcripts, and the mean compute fraction."""
    refs = [text for _, text in clips]
    mels = [torch.from_numpy(log_mel(load_audio(f), teacher.cfg.num_mel_bins)) for f, _ in clips]
    t = time.time()
    dense = [teacher.tokenizer.decode(teacher.greedy(m)) for m in mels]
    rows = {'dense': dict(wer=word_error_rate(refs, dense), wer_to_dense=0.0, fraction=1.0,
                          seconds=round(time.time() - t, 1))}
    for name in budgets:
        t = time.time()
        hyps, fractions = [], []
        n = num_learners_of(student)
        for m in mels:
            policy = budget_policy(name, n)
            hyps.append(student.tokenizer.decode(student.greedy(m, policy=policy)))
            fractions.append(student.compute_fraction(policy))
        rows[name] = dict(wer=word_error_rate(refs, hyps), wer_to_dense=word_error_rate(dense, hyps),
                          fraction=float(np.mean(fractions)), seconds=round(time.time() - t, 1))
        logging.info(f'report {name}: {rows[name]}')
    return rows


def report_table(rows, clips):
    lines = [f'| budget | WER | WER vs dense | compute fraction |  ({clips} clips)', '| --- | --- | --- | --- |']
    for name, r in rows.items():
        lines.append(f'| {name} | {100 * r["wer"]:.1f}% | {100 * r["wer_to_dense"]:.1f}% | {r["fraction"]:.3f} |')
    return '\n'.join(lines)


# -----------------------------------------------------------------------------
# export

def export(student, out_dir):
    """<out_dir>/config.json (the whole model's config, with its acm entries) and acm.safetensors (the ACM
    tensors, F16)."""
    os.makedirs(out_dir, exist_ok=True)
    obj = config_to_json(student.cfg, student.gen)
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:  # a section a line, as save_whisper writes it
        f.write('{\n' + ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in obj.items()) + '\n}\n')
    save_file(to_stored(student.acm_tensors(), 'F16'), os.path.join(out_dir, 'acm.safetensors'),
              metadata={'format': 'pt'})
    os.chmod(os.path.join(out_dir, 'acm.safetensors'), 0o644)


@torch.no_grad()
def check_export(student, model_dir, clip):
    """The assembled model, loaded strictly from model_dir, against the in-memory student on one clip's forced
    decoding: the largest logit difference at full budget, in auto mode and under a cap, which the budget
    shares spread (0 when the export is exact)."""
    loaded = Whisper(model_dir)
    diffs = {}
    n = num_learners_of(student)
    for name in ('full', 'auto', 'cap 0.5'):
        a, b = forced_logits(student, clip, budget_policy(name, n)), forced_logits(loaded, clip, budget_policy(name, n))
        diffs[name] = (a - b).abs().max().item()
    return diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--teacher', required=True, help='dense Whisper model directory (acm-serve format)')
    ap.add_argument('--audio-manifest', required=True, help='training clips, JSONL of {"file", "text"}')
    ap.add_argument('--val-manifest', help='held-out clips for the report (default: none, no report)')
    ap.add_argument('--out', default=out, help='where the ACM layers go (default: %(default)s)')
    ap.add_argument('--work', default=work, help='captured activations, train.log, the assembled model '
                                                 '(default: %(default)s)')
    ap.add_argument('--quick', action='store_true', help='CI: a few clips, a handful of steps per phase')
    ap.add_argument('--targets', default=targets, help=f'comma-separated: {", ".join(TARGETS)}')
    ap.add_argument('--num-learners', type=int, default=num_learners)
    ap.add_argument('--steps', type=int, nargs=3, metavar=('P1', 'P2', 'P3'),
                    default=[phase1_steps, phase2_steps, phase3_steps])
    ap.add_argument('--limit', type=int, default=train_clips, help='training clips, the first of the manifest '
                                                                  '(default: %(default)s; 0: all)')
    ap.add_argument('--val-limit', type=int, help='validation clips (default: all)')
    ap.add_argument('--seed', type=int, default=seed)
    ap.add_argument('--threads', type=int, default=threads, help='torch intra-op threads')
    args = ap.parse_args(argv)
    q = quick if args.quick else {}
    steps = [q.get('phase1_steps', args.steps[0]), q.get('phase2_steps', args.steps[1]),
             q.get('phase3_steps', args.steps[2])]
    g = start_run(args.work, args.seed, args.threads)
    start = time.time()

    teacher = Recording(args.teacher)
    cfg = acm_config(teacher.cfg, args.targets.split(','), args.num_learners)
    paths = list(cfg.acm)
    clips = read_manifest(args.audio_manifest, q.get('clips', args.limit or None))
    val = read_manifest(args.val_manifest, q.get('val_clips', args.val_limit)) if args.val_manifest else []
    metrics = dict(teacher=args.teacher, targets=args.targets, num_learners=args.num_learners, quick=args.quick,
                   train_clips=len(clips), val_clips=len(val), steps=steps, seconds={})

    t = time.time()
    # every layer's MLP, whatever the targets, so that one capture serves runs with other targets
    data = capture_all(teacher, args.teacher, clips, teacher.cfg.layer_paths(), args.work, 'train')
    metrics['seconds']['capture'] = round(time.time() - t, 1)

    student = make_student(args.teacher, cfg)
    pool = pooled(data, paths)
    for p in paths:  # phase 0
        fc = {k: teacher.w[f'{p}.{k}'] for k in ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias')}
        init_mlp(student.acms[p], fc['fc1.weight'], fc['fc1.bias'], fc['fc2.weight'], fc['fc2.bias'], pool[p][0].float())
    for acm in student.acms.values():
        acm.train()
    t = time.time()
    metrics['phase1_mse'] = distill(student.acms, row_batches(pool, steps[0], g), steps[0], phase1_lr)
    metrics['seconds']['phase1'] = round(time.time() - t, 1)
    t = time.time()
    metrics['phase2_ce'] = train_gates(student.acms, row_batches(pool, steps[1], g), steps[1], phase2_lr, tau_error)
    metrics['seconds']['phase2'] = round(time.time() - t, 1)
    for acm in student.acms.values():
        acm.eval()
    calibration = data[:q.get('calibration_clips', calibration_clips)]
    metrics['budget_shares_before_phase3'] = calibrate_budget_shares(student, calibration)
    t = time.time()
    metrics['phase3_last_batch'] = phase3(student, data, g, steps[2], q.get('phase3_clips', phase3_clips))
    metrics['seconds']['phase3'] = round(time.time() - t, 1)
    round_to_f16(student)
    metrics['budget_shares'] = calibrate_budget_shares(student, calibration)
    logging.info(f'budget shares: {metrics["budget_shares"]}')

    export(student, args.out)
    assembled = os.path.join(args.work, 'model')
    build_acm(args.out, args.teacher, assembled)
    metrics['export_max_logit_diff'] = check_export(student, assembled, data[0])
    metrics['full_budget_fidelity'] = full_budget_fidelity(student, data[:q.get('fidelity_clips', fidelity_clips)])
    logging.info(f'full budget against the teacher, on training clips: {metrics["full_budget_fidelity"]}')
    logging.info(f'exported model vs trained: largest logit difference {metrics["export_max_logit_diff"]}')
    if val:
        t = time.time()
        metrics['report'] = report(student, teacher, val, q.get('report_budgets', report_budgets))
        metrics['seconds']['report'] = round(time.time() - t, 1)
        logging.info('\n' + report_table(metrics['report'], len(val)))
    metrics['seconds']['total'] = round(time.time() - start, 1)
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    logging.info(f'wrote {args.out} in {metrics["seconds"]["total"]:.0f} s ({metrics["seconds"]})')
    print(f'whisper_acmize: {metrics["seconds"]["total"]:.0f} s on this machine')


if __name__ == '__main__':
    main()
