"""
Augmentations of the synthetic speech corpus (docs/speech-data.md), applied to 16 kHz mono float64 audio in this
order: pitch shift, reverberation, silence around the speech, additive noise at an SNR, and a peak level. The
speaking rate, the fifth, is the synthesizer's own (acm_tools.speech_voices). Each is a pure function of its
parameters, and the noise and the room of a seed, so that a clip is the same on every run.

- pitch: sox's `pitch` effect (WSOLA: the pitch moves by `cents`, the duration stays), sox 14.4.2;
- reverberation: convolution with a synthetic room impulse response: the direct sound, then Gaussian noise
  from `predelay` on, decaying by 60 dB in `rt60` seconds, its energy `drr` dB below the direct sound's;
- noise: white, pink (1/f power) or brown (1/f^2) Gaussian noise, scaled so that the speech's mean power over
  the noise's is `snr` dB (the speech's power is measured over the clip less its silence below -40 dB of peak);
- level: the clip is scaled to a peak of `peak_db` dBFS, then rounded to 16 bits.
"""
import subprocess

import numpy as np

sample_rate = 16000


def pitch_shift(audio, cents):
    """sox `pitch cents` on raw float32 audio (its output has the input's length, give or take a few samples)."""
    if cents == 0:
        return audio
    out = subprocess.run(['sox', '-V1', '-t', 'f32', '-r', str(sample_rate), '-c', '1', '-', '-t', 'f32', '-',
                          'pitch', str(cents)], input=audio.astype('<f4').tobytes(), check=True,
                         capture_output=True).stdout
    return np.frombuffer(out, dtype='<f4').astype(np.float64)


def room_impulse(rt60, drr, predelay, rng):
    """A synthetic room impulse response: 1 at t = 0, then exponentially decaying Gaussian noise from predelay
    seconds, for rt60 seconds, with energy drr dB below the direct sound's."""
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60)  # -60 dB (amplitude 10^-3) at rt60
    tail *= np.sqrt(10 ** (-drr / 10) / np.sum(tail ** 2))
    h = np.zeros(int(predelay * sample_rate) + n)
    h[0] = 1.0
    h[-n:] += tail
    return h


def reverberate(audio, h):
    """audio convolved with h (FFT), cut back to the input's length plus the first 0.25 s of its tail."""
    n = len(audio) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(h, size), size)[:n]
    return y[:len(audio) + min(len(h) - 1, sample_rate // 4)]


def coloured_noise(n, colour, rng):
    """n samples of unit-variance Gaussian noise, white, pink (power ~ 1/f) or brown (~ 1/f^2)."""
    white = rng.standard_normal(n)
    if colour == 'white':
        return white
    spectrum = np.fft.rfft(white)
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0  # keep the mean at 0 power's scale; the mean is removed below
    spectrum /= f ** {'pink': 0.5, 'brown': 1.0}[colour]
    x = np.fft.irfft(spectrum, n)
    x -= x.mean()
    return x / x.std()


def speech_power(audio):
    """Mean power of the samples in frames (20 ms) louder than -40 dB of the loudest frame."""
    frame = sample_rate // 50
    n = len(audio) // frame * frame
    if n == 0:
        return float(np.mean(audio ** 2))
    p = np.mean(audio[:n].reshape(-1, frame) ** 2, axis=1)
    return float(p[p >= p.max() * 1e-4].mean())


def add_noise(audio, colour, snr, rng):
    return audio + coloured_noise(len(audio), colour, rng) * np.sqrt(speech_power(audio) / 10 ** (snr / 10))


def to_int16(audio, peak_db):
    """Scaled to a peak of peak_db dBFS, rounded to int16."""
    peak = np.abs(audio).max()
    if peak > 0:
        audio = audio * (10 ** (peak_db / 20) / peak)
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def apply(audio, aug, seed):
    """16 kHz float64 audio and an augmentation (speech_corpus.Augmentation as a dict) -> int16 audio."""
    rng = np.random.default_rng(seed)
    room_rng, noise_rng = rng.spawn(2)
    x = pitch_shift(audio, aug['pitch_cents'])
    if aug['reverb'] is not None:
        r = aug['reverb']
        x = reverberate(x, room_impulse(r['rt60'], r['drr_db'], r['predelay'], room_rng))
    x = np.concatenate([np.zeros(int(aug['pad'][0] * sample_rate)), x, np.zeros(int(aug['pad'][1] * sample_rate))])
    if aug['noise'] is not None:
        x = add_noise(x, aug['noise']['colour'], aug['noise']['snr_db'], noise_rng)
    return to_int16(x, aug['peak_db'])
