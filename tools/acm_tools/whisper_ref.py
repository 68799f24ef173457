"""
An independent PyTorch reference of Whisper that reads our model directory (docs/whisper.md): the log-mel
front end in NumPy (and, to check it, in torch.stft as openai-whisper computes it), the encoder, the decoder
with a KV cache, greedy decoding with Whisper's suppression rules and its temperature fallback (sampled with the
engine's noise, so both draw the same tokens), and byte-level BPE detokenisation.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_ref --model build/models/whisper-tiny.en clip.wav

Upstream code it mirrors:
- https://github.com/openai/whisper/blob/v20240930/whisper/audio.py (log_mel_spectrogram, pad_or_trim)
- https://github.com/openai/whisper/blob/v20240930/whisper/model.py (AudioEncoder, TextDecoder)
- https://github.com/openai/whisper/blob/v20240930/whisper/decoding.py (SuppressBlank, SuppressTokens, GreedyDecoder's
  sum_logprobs, avg_logprob)
- https://github.com/openai/whisper/blob/v20240930/whisper/transcribe.py (decode_with_fallback) and utils.py
  (compression_ratio)
- https://github.com/librosa/librosa/blob/0.10.2/librosa/filters.py (mel, slaney scale and norm)
- https://github.com/OpenNMT/CTranslate2/blob/v4.8.5/src/models/whisper.cc (WhisperReplica::generate, whose
  greedy output this reproduces: the prompt before its last token is a prefix, at most max_length / 2 new
  tokens, suppress_ids at every step, suppress_ids_begin at the first)

Audio is read from 16-bit PCM WAV; other rates are resampled to 16 kHz with libsoxr at VHQ quality
(python-soxr, the library the Swift engine links) and channels are averaged.

An MLP that is an ACM (config.json's `acm`) runs acm.py's ACM under a learner policy (Policy: full, auto, a
cap, uniform k; or Gumbel sampling for training). As in the Swift engine, an ACM's sequence is the utterance
in the encoder and the new tokens of one decoder call (the prompt, then each generated token); a cap is
spread over the ACMs by their budget shares (acm.split_budget). The model is differentiable in its ACMs'
parameters: inference calls run under torch.no_grad.
"""
import argparse
import json
import math
import wave
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .acm import ACM, budget_layers, split_budget
from .whisper_format import load_whisper

# -----------------------------------------------------------------------------
# config: Whisper's audio hyperparameters (whisper/audio.py)
sample_rate = 16000
n_fft = 400
hop_length = 160
chunk_length = 30  # seconds
n_samples = chunk_length * sample_rate  # 480000
n_frames = n_samples // hop_length  # 3000
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# audio

def read_wav(path):
    """16-bit PCM WAV -> (float64 [samples, channels] in [-1, 1), sample rate)."""
    with wave.open(path, 'rb') as w:
        if w.getsampwidth() != 2 or w.getcomptype() != 'NONE':
            raise ValueError(f'{path}: only 16-bit PCM WAV is read')
        channels, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2')
    return (pcm.astype(np.float64) / 32768).reshape(-1, channels), rate


def to_mono_16k(samples, rate):
    """float64 [samples, channels] at rate -> float64 [samples'] at 16 kHz: channels averaged, then libsoxr at
    VHQ quality (which computes in double precision, so the result hardly depends on the CPU's SIMD paths)."""
    x = samples.mean(axis=1)
    if rate != sample_rate:
        import soxr  # only resampled audio needs it
        x = soxr.resample(x, rate, sample_rate, quality='VHQ')
    return x


def load_audio(path):
    """A WAV file -> 16 kHz mono float64 audio."""
    return to_mono_16k(*read_wav(path))


def pad_or_trim(audio, length=n_samples):
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


# -----------------------------------------------------------------------------
# log-mel front end

def hz_to_mel(f):
    """Slaney's mel scale (librosa, htk=False): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels=80, sr=sample_rate, n_fft=n_fft):
    """float64 [n_mels, 1 + n_fft // 2]: librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) with its defaults
    fmin=0, fmax=sr/2, htk=False, norm='slaney': triangles on the mel scale, each of unit area in Hz."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))  # band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])  # slaney: divide each triangle by its width
    return weights * enorm[:, None]


def log_mel(audio, n_mels=80):
    """16 kHz mono float32 audio -> float32 [n_mels, 3000], computed in float64 with NumPy: the audio padded or
    trimmed to 30 s first, STFT (periodic Hann, center=True with reflect padding, last frame dropped), power,
    slaney mel filters, log10 clamped at 1e-10 and at max - 8, then (x + 4) / 4."""
    x = pad_or_trim(np.asarray(audio, dtype=np.float64))
    x = np.pad(x, n_fft // 2, mode='reflect')  # center=True
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    starts = np.arange(n_frames) * hop_length  # 3001 frames fit; the last is dropped
    frames = x[starts[:, None] + np.arange(n_fft)[None, :]] * window  # (3000, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (3000, 201)
    mel = mel_filters(n_mels) @ power.T  # (n_mels, 3000)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def log_mel_torch(audio, n_mels=80):
    """The same in float32 with torch.stft, as openai-whisper's log_mel_spectrogram computes it."""
    x = torch.from_numpy(pad_or_trim(np.asarray(audio, dtype=np.float32)))
    window = torch.hann_window(n_fft)  # periodic
    stft = torch.stft(x, n_fft, hop_length, window=window, center=True, pad_mode='reflect', return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2  # (201, 3000)
    mel = torch.from_numpy(mel_filters(n_mels).astype(np.float32)) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def content_frames(mel):
    """How many of the encoder's 1500 frames see the audio of a log-mel [n_mels, 3000], not only the padding after
    it: padding is the trailing columns whose every bin is the spectrogram's least value (log-mel of zeros, clamped
    to the maximum - 8); encoder frame t reads columns 2t - 2 .. 2t + 2, so audio in columns 0 .. c - 1 reaches the
    first (c + 1) // 2 + 1 frames (none when c = 0)."""
    mel = np.asarray(mel)
    at_least = (mel == mel.min()).all(axis=0)  # (3000,) columns with every bin at the least value
    audio = mel.shape[1] - int(np.argmin(at_least[::-1])) if not at_least.all() else 0
    return 0 if audio == 0 else min(mel.shape[1] // 2, (audio + 1) // 2 + 1)


# -----------------------------------------------------------------------------
# model

@dataclass
class Policy:
    """How many learners the ACMs run, for one utterance: mode 'full', 'auto', 'cap' (beta, the utterance's
    budget), 'uniform' (k), or 'gumbel' (training: temperature tau, optional cap beta). It records what each
    ACM chose: choices[path] is a list, one entry per call, of k (T,) or, under 'gumbel', the
    straight-through one-hots (T, C)."""
    mode: str = 'full'
    beta: float = None
    k: int = None
    tau: float = None
    choices: dict = field(default_factory=dict)


class Whisper:
    """The model in float32 (weights widened from F16 as stored), one audio clip at a time."""

    def __init__(self, model_dir):
        cfg, gen, tensors = load_whisper(model_dir)
        self.setup(cfg, gen, tensors, Tokenizer(f'{model_dir}/tokenizer.json'))

    @classmethod
    def from_tensors(cls, cfg, gen, tensors, tokenizer):
        """A model from its parts (load_whisper's and a Tokenizer), without a directory."""
        model = cls.__new__(cls)
        model.setup(cfg, gen, tensors, tokenizer)
        return model

    def setup(self, cfg, gen, tensors, tokenizer):
        self.cfg, self.gen, self.tokenizer = cfg, gen, tokenizer
        self.w = {k: v.float() for k, v in tensors.items()}
        d = cfg.d_model
        self.acms = {}  # layer path -> ACM, its tensors taken out of self.w
        for path, c in cfg.acm.items():
            acm = ACM(d, d, c)
            own = acm.state_dict()
            acm.load_state_dict({k: self.w.pop(f'{path}.{k}') for k in own}, strict=True)
            self.acms[path] = acm.eval()

    def acm_tensors(self):
        """{name: tensor} of every ACM, as model.safetensors names them."""
        return {f'{path}.{k}': v for path, acm in self.acms.items() for k, v in acm.state_dict().items()}

    def linear(self, x, name):
        y = x @ self.w[f'{name}.weight'].T  # [T, in] × [in, out]
        b = self.w.get(f'{name}.bias')
        return y if b is None else y + b

    def norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.w[f'{name}.weight'], self.w[f'{name}.bias'], self.cfg.layer_norm_eps)

    def mlp(self, x, p, policy, lengths, first=None):
        """Layer p's MLP on x [T, d], whose rows are sequences of the given lengths for an ACM. first: under a
        cap (or a capped 'gumbel'), how many leading rows of the one sequence are served before the rest
        (trim_served_first)."""
        acm = self.acms.get(p)
        if acm is None:
            return self.linear(F.gelu(self.linear(x, f'{p}.fc1')), f'{p}.fc2')
        budget = None
        if policy.beta is not None and policy.mode in ('cap', 'gumbel'):
            # from the budget shares as they are now: training moves them
            budget = split_budget(policy.beta, budget_layers(self.cfg.acm, self.cfg.d_model))[p]
        outs, start = [], 0
        for length, count in runs(lengths):
            xs = x[start:start + length * count].view(count, length, -1)  # (sequences, T, d)
            start += length * count
            if policy.mode == 'gumbel':
                beta = None if budget is None else torch.full((count,), budget, dtype=torch.float64)
                y, chosen = acm(xs, mode='gumbel', tau=policy.tau, beta=beta, first=first)
                chosen = chosen.flatten(0, 1)  # (sequences*T, C)
            else:
                y, chosen = acm(xs, mode=policy.mode, beta=budget, k=policy.k, first=first)
                chosen = chosen.flatten()  # (sequences*T,)
            policy.choices.setdefault(p, []).append(chosen)
            outs.append(y.flatten(0, 1))
        return torch.cat(outs)

    @staticmethod
    def attend(q, k, v, n_heads, mask=None):
        """q [Tq, d], k and v [Tk, d] -> [Tq, d], scaled dot-product attention over n_heads heads."""
        Tq, d = q.shape
        hs = d // n_heads
        q = q.view(Tq, n_heads, hs).transpose(0, 1)  # (nh, Tq, hs)
        k = k.view(-1, n_heads, hs).transpose(0, 1)  # (nh, Tk, hs)
        v = v.view(-1, n_heads, hs).transpose(0, 1)  # (nh, Tk, hs)
        att = (q @ k.transpose(1, 2)) / math.sqrt(hs)  # (nh, Tq, Tk)
        if mask is not None:
            att = att.masked_fill(mask, float('-inf'))
        y = torch.softmax(att, dim=-1) @ v  # (nh, Tq, hs)
        return y.transpose(0, 1).reshape(Tq, d)  # (Tq, d)

    def encode(self, mel, policy=None):
        """float32 [n_mels, 3000] -> encoder output [1500, d]. Under a cap the frames that see audio are served
        before the padding's (content_frames)."""
        policy = Policy() if policy is None else policy
        first = content_frames(mel)
        x = torch.as_tensor(mel)[None]  # (1, n_mels, 3000)
        x = F.gelu(F.conv1d(x, self.w['model.encoder.conv1.weight'], self.w['model.encoder.conv1.bias'], padding=1))
        x = F.gelu(F.conv1d(x, self.w['model.encoder.conv2.weight'], self.w['model.encoder.conv2.bias'],
                            stride=2, padding=1))  # (1, d, 1500)
        x = x[0].T + self.w['model.encoder.embed_positions.weight']  # (1500, d)
        for i in range(self.cfg.encoder_layers):
            p = f'model.encoder.layers.{i}'
            # self-attention
            h = self.norm(x, f'{p}.self_attn_layer_norm')
            q, k, v = (self.linear(h, f'{p}.self_attn.{n}_proj') for n in 'qkv')
            x = x + self.linear(self.attend(q, k, v, self.cfg.encoder_attention_heads), f'{p}.self_attn.out_proj')
            # mlp
            x = x + self.mlp(self.norm(x, f'{p}.final_layer_norm'), p, policy, [x.shape[0]], first)
        return self.norm(x, 'model.encoder.layer_norm')

    def cross_kv(self, memory):
        """[(k, v) per decoder layer], the cross-attention keys and values of the encoder output [1500, d]."""
        return [(self.linear(memory, f'model.decoder.layers.{i}.encoder_attn.k_proj'),
                 self.linear(memory, f'model.decoder.layers.{i}.encoder_attn.v_proj'))
                for i in range(self.cfg.decoder_layers)]

    def decode(self, tokens, cross, cache, policy=None, steps=None):
        """New tokens [T] after the len(cache[0]) cached ones -> logits [T, vocab]; appends to cache, a list of
        [k, v] per layer, each [past, d]. steps: how many of the tokens each decoding step fed, for the ACMs'
        sequences (default: all in one step)."""
        return self.logits(self.decode_hidden(tokens, cross, cache, policy, steps))

    def logits(self, hidden):
        return hidden @ self.w['model.decoder.embed_tokens.weight'].T  # [T, d] × [d, vocab]

    def decode_hidden(self, tokens, cross, cache, policy=None, steps=None):
        """decode's last hidden states, after the final layer norm: [T, d]."""
        policy = Policy() if policy is None else policy
        offset = cache[0][0].shape[0] if cache else 0
        T = len(tokens)
        x = self.w['model.decoder.embed_tokens.weight'][tokens] \
            + self.w['model.decoder.embed_positions.weight'][offset:offset + T]  # (T, d)
        # position offset + i sees the past and itself
        mask = torch.arange(offset + T)[None, :] > (offset + torch.arange(T))[:, None]  # (T, offset + T)
        heads = self.cfg.decoder_attention_heads
        for i in range(self.cfg.decoder_layers):
            p = f'model.decoder.layers.{i}'
            # causal self-attention over the cache
            h = self.norm(x, f'{p}.self_attn_layer_norm')
            q, k, v = (self.linear(h, f'{p}.self_attn.{n}_proj') for n in 'qkv')
            if len(cache) <= i:
                cache.append([k[:0], v[:0]])
            cache[i][0] = torch.cat([cache[i][0], k])  # (offset + T, d)
            cache[i][1] = torch.cat([cache[i][1], v])
            x = x + self.linear(self.attend(q, cache[i][0], cache[i][1], heads, mask), f'{p}.self_attn.out_proj')
            # cross-attention
            h = self.norm(x, f'{p}.encoder_attn_layer_norm')
            q = self.linear(h, f'{p}.encoder_attn.q_proj')
            x = x + self.linear(self.attend(q, *cross[i], heads), f'{p}.encoder_attn.out_proj')
            # mlp
            x = x + self.mlp(self.norm(x, f'{p}.final_layer_norm'), p, policy, steps or [T])
        return self.norm(x, 'model.decoder.layer_norm')

    @torch.no_grad()
    def greedy(self, mel, margins=None, policy=None):
        """float32 [n_mels, 3000] -> the generated token ids (without the prompt and the final eot). margins: a
        list to append each step's lead of the chosen token's logit over the runner-up to. policy: the ACMs'
        (default full), which records their choices."""
        policy = Policy() if policy is None else policy
        return self.generate(self.cross_kv(self.encode(mel, policy)), margins, policy)

    @torch.no_grad()
    def generate(self, cross, margins=None, policy=None, temperature=0.0, stats=None):
        """greedy's decoding, from the cross-attention keys and values (cross_kv); above temperature 0, a draw from
        softmax(logits / temperature) by the Gumbel-max trick with gumbel()'s noise, the engine's draws. stats: a
        dict to set sum_logprob in (Σ log p of the tokens and the end token, under the untempered softmax)."""
        g = self.gen
        policy = Policy() if policy is None else policy
        cache = []
        logits = self.decode(torch.tensor(g.prompt), cross, cache, policy)[-1]
        out = []
        sum_logprob = 0.0
        while len(out) < g.max_new_tokens:
            logits[g.suppress_tokens] = float('-inf')
            if not out:
                logits[g.begin_suppress_tokens] = float('-inf')  # SuppressBlank: no space or eot first
            top = torch.topk(logits, 2)
            token = int(top.indices[0])
            if temperature > 0:
                token = sample(logits.double().numpy(), temperature, step=len(out))
            if margins is not None:
                margins.append(float(top.values[0] - top.values[1]))
            sum_logprob += float(torch.log_softmax(logits.double(), -1)[token])
            if token == g.eos_token_id:
                break
            out.append(token)
            logits = self.decode(torch.tensor([token]), cross, cache, policy)[-1]
        if stats is not None:
            stats['sum_logprob'] = sum_logprob
        return out

    @torch.no_grad()
    def decode_window(self, mel, policy=None, temperatures=None):
        """One 30-s window as the engine decodes it (WhisperModel.decode): greedily, then sampled at each fallback
        temperature in turn while the text fails a check. -> dict(tokens, temperature, avg_logprob,
        compression_ratio, attempts: the decodings run)."""
        g = self.gen
        cross = self.cross_kv(self.encode(mel, policy))
        temperatures = [0.0, *g.temperature_fallback] if temperatures is None else temperatures
        ratio_limit = math.inf if g.compression_ratio_threshold is None else g.compression_ratio_threshold
        logprob_floor = -math.inf if g.logprob_threshold is None else g.logprob_threshold
        tried = []
        for t in temperatures:
            stats = {}
            ids = self.generate(cross, policy=policy, temperature=t, stats=stats)
            w = dict(tokens=ids, temperature=t, avg_logprob=stats['sum_logprob'] / (len(ids) + 1),
                     compression_ratio=compression_ratio(self.tokenizer.decode(ids)))
            tried.append(w)
            if w['compression_ratio'] <= ratio_limit and w['avg_logprob'] >= logprob_floor:
                return dict(w, attempts=len(tried))
        # every attempt failed: the likeliest of those that do not repeat, else the least repetitive
        unrepeated = [w for w in tried if w['compression_ratio'] <= ratio_limit]
        if not unrepeated:
            return dict(min(tried, key=lambda w: w['compression_ratio']), attempts=len(tried))
        return dict(max(unrepeated, key=lambda w: w['avg_logprob']), attempts=len(tried))

    def transcribe(self, audio, margins=None, policy=None, fallback=True):
        """16 kHz mono audio (up to 30 s) -> (token ids, text): greedy decoding with the temperature fallback, or
        greedy alone (with margins, each step's lead of the chosen token over the runner-up)."""
        mel = log_mel(audio, self.cfg.num_mel_bins)
        ids = self.decode_window(mel, policy)['tokens'] if fallback else self.greedy(mel, margins, policy)
        return ids, self.tokenizer.decode(ids)

    def compute_fraction(self, policy):
        """The learner FLOPs policy's recorded choices ran over those of every learner (docs/compute-budget.md),
        as the engine's LearnerCounts counts them; 1 for a model without ACMs."""
        d = self.cfg.d_model
        executed = possible = 0.0
        for path, calls in policy.choices.items():
            c = self.cfg.acm[path]
            f = c.learner_flops(d, d)
            for k in calls:
                executed += float(k.double().sum()) * f
                possible += k.numel() * c.num_learners * f
        return executed / possible if possible else 1.0


def gumbel(temperature, step, tokens):
    """Standard Gumbel noise -log(-log u) for token ids at a decoding step, the engine's (TokenSearch.gumbel): u in
    (0, 1) from SplitMix64's output for the key milli-temperature << 40 | step << 20 | token, (top 53 bits + ½)·2⁻⁵³."""
    key = (np.uint64(round(temperature * 1000)) << np.uint64(40)) | (np.uint64(step) << np.uint64(20)) \
        | np.asarray(tokens, dtype=np.uint64)
    with np.errstate(over='ignore'):
        z = key + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    return -np.log(-np.log(u))


# the width of gumbel's range, [-log(-log 2^-54), -log(-log(1 - 2^-54))], rounded up: only tokens within it (times
# the temperature) of the largest logit can win a draw
gumbel_range = 41.1


def sample(logits, temperature, step):
    """argmax of logits / temperature + gumbel(): a draw from softmax(logits / temperature); float64 logits."""
    candidates = np.flatnonzero(logits >= logits.max() - gumbel_range * temperature)
    scores = logits[candidates] / temperature + gumbel(temperature, step, candidates)
    return int(candidates[np.argmax(scores)])


def compression_ratio(text):
    """openai-whisper's: the UTF-8 bytes of the stripped text over their zlib-compressed size; 0 for no text."""
    data = text.strip().encode('utf-8')
    return len(data) / len(zlib.compress(data))


def runs(lengths):
    """[(length, count)] of consecutive equal lengths: [2, 1, 1] -> [(2, 1), (1, 2)]."""
    out = []
    for n in lengths:
        if out and out[-1][0] == n:
            out[-1] = (n, out[-1][1] + 1)
        else:
            out.append((n, 1))
    return out


# -----------------------------------------------------------------------------
# tokenizer

def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters that byte-level BPE tokens are made of."""
    bs = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    """Decoding only: token ids -> text, from tokenizer.json's byte-level BPE vocabulary."""

    def __init__(self, path):
        with open(path) as f:
            tok = json.load(f)
        self.tokens = {i: t for t, i in tok['model']['vocab'].items()}
        self.eot = next(t['id'] for t in tok['added_tokens'] if t['content'] == '<|endoftext|>')
        self.byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def decode(self, ids):
        """Special tokens (ids >= <|endoftext|>) are skipped, as Whisper's decode does."""
        text = ''.join(self.tokens[i] for i in ids if i < self.eot)
        return bytes(self.byte_of[c] for c in text).decode('utf-8', errors='replace')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', default='build/models/whisper-tiny.en', help='model directory (default: %(default)s)')
    p.add_argument('wav', nargs='+', help='16-bit PCM WAV files')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = Whisper(args.model)
    for path in args.wav:
        ids, text = model.transcribe(load_audio(path))
        print(f'{path}: {text.strip()}  {ids}')


if __name__ == '__main__':
    main()
