"""
Speech fixtures for the Swift Whisper tests (Sources/ACMWhisper): short clips synthesised with espeak-ng and
flite, what CTranslate2 transcribes greedily from them, and the same from our PyTorch reference
(acm_tools.whisper_ref), which must agree token for token; plus log-mel spectrograms and encoder output for
numeric parity. Needs the model (`make whisper-model`) and the CTranslate2 copy it was converted from.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_fixtures --out Tests/ACMWhisperTests/Fixtures

Writes into <out> (README.md there says the same for the Swift side):
    clips/<name>.wav         16-bit PCM; 16 kHz mono, except the 22050 Hz stereo ones
    clips.json               [{name, file, sample_rate, channels, seconds, text_spoken, synthesizer, ct2: {ids,
                              text}, reference: {ids, text}, min_margin}], a clip a line
    logmel_<name>.npy        float32 [80, 3000], the reference's log-mel of one 16 kHz and one resampled clip
    encoder_<name>.npy       float32 [300, 384], rows 0..299 of CTranslate2's encoder output for one clip
    README.md

espeak-ng speaks at 22050 Hz: its 16 kHz clips are resampled here with libsoxr (VHQ, double precision) and
rounded to 16 bits. The 22050 Hz stereo clips keep espeak-ng's samples on the left and 0.6 of them on the
right, so that the engine's downmix (the channel mean) and resampler are exercised. CTranslate2 runs on the
reference's log-mel (it has no front end of its own), greedy, with the model's suppress lists.

Generation is deterministic for fixed espeak-ng (1.51) and flite (2.2) versions: clips.json, the clips and the
log-mels are compared byte for byte with a fresh run (tools/tests/test_whisper_fixtures.py); the encoder
output, which CTranslate2 computes with the CPU's own SIMD kernels, to 1e-4 of its largest value.
"""
import argparse
import json
import os
import shlex
import subprocess
import tempfile
import wave
from dataclasses import dataclass

import numpy as np
import torch

from . import whisper_tiny_en
from .whisper_ref import Whisper, bytes_to_unicode, log_mel, read_wav, to_mono_16k

# -----------------------------------------------------------------------------
# config
out = 'Tests/ACMWhisperTests/Fixtures'  # relative to the repository root
model_dir = whisper_tiny_en.out
ct2_dir = whisper_tiny_en.ct2_dir  # the CTranslate2 model that model_dir was converted from
stereo_right_gain = 0.6  # the right channel of a stereo clip: this times the left
encoder_rows = 300
min_margin = 0.1  # each greedy step's top logit leads the runner-up by this much, so float32 engines agree
# -----------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    text: str
    synth: str  # 'espeak-ng' or 'flite'
    voice: str
    speed: float  # espeak-ng: words per minute; flite: duration_stretch
    stereo_22k: bool = False  # keep espeak-ng's 22050 Hz, as stereo


def clips():
    return [
        Clip('espeak_us_fox', 'The quick brown fox jumps over the lazy dog.', 'espeak-ng', 'en-us', 130),
        Clip('espeak_us_weather', 'The weather today is sunny with a light breeze.', 'espeak-ng', 'en-us', 150),
        Clip('espeak_us_f3_window', 'Open the window and let the fresh air in.', 'espeak-ng', 'en-us+f3', 145),
        Clip('espeak_rp_books', 'Reading books is a wonderful way to relax.', 'espeak-ng', 'en-gb-x-rp', 160),
        Clip('espeak_scot_train', 'The train to Boston leaves in ten minutes.', 'espeak-ng', 'en-gb-scotland', 140),
        Clip('espeak_us_m3_fast', 'Can you hear me clearly now, or should I speak louder?', 'espeak-ng', 'en-us+m3',
             190),
        Clip('espeak_us_stereo', 'Good morning everyone, let us begin the meeting.', 'espeak-ng', 'en-us', 150,
             stereo_22k=True),
        Clip('flite_slt_stella', 'Please call Stella and ask her to bring these things.', 'flite', 'slt', 1.0),
        Clip('flite_rms_coffee', 'Coffee and tea are popular drinks around the world.', 'flite', 'rms', 1.1),
        Clip('flite_awb_color', 'My favorite color is blue, but I also like green.', 'flite', 'awb', 1.1),
        Clip('flite_kal16_thanks', 'Thank you for listening to this short recording.', 'flite', 'kal16', 1.0),
        Clip('flite_slt_slow', 'Turn left at the next corner and walk two blocks.', 'flite', 'slt', 1.3),
    ]


logmel_clips = ['flite_slt_stella', 'espeak_us_stereo']  # one 16 kHz clip, one resampled
encoder_clip = 'flite_slt_stella'


def command(clip, wav_path):
    """The synthesizer's command line."""
    if clip.synth == 'espeak-ng':
        return ['espeak-ng', '-v', clip.voice, '-s', str(int(clip.speed)), '-w', wav_path, clip.text]
    return ['flite', '-voice', clip.voice, '--setf', f'duration_stretch={clip.speed}', '-t', clip.text, '-o', wav_path]


def write_wav(path, pcm, rate):
    """int16 [samples, channels] -> a 16-bit PCM WAV file."""
    with wave.open(path, 'wb') as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype('<i2').tobytes())


def to_int16(x):
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def synthesize(clip, path):
    """Run the synthesizer and write the clip's WAV to path -> the command, as a string."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, 'raw.wav')
        cmd = command(clip, raw)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        samples, rate = read_wav(raw)  # float64 [samples, 1]
    if clip.stereo_22k:
        left = to_int16(samples[:, 0])
        right = to_int16(left.astype(np.float64) / 32768 * stereo_right_gain)
        write_wav(path, np.stack([left, right], axis=1), rate)
    else:
        write_wav(path, to_int16(to_mono_16k(samples, rate))[:, None], 16000)
    return shlex.join(command(clip, f'{clip.name}.raw.wav'))


class CT2:
    """CTranslate2's Whisper, the independent reference for the transcripts and the encoder output."""

    def __init__(self, path=ct2_dir):
        import ctranslate2  # the tools' other uses do not need it
        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(path, device='cpu', intra_threads=1, inter_threads=1)
        self.byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def encode(self, mel):
        """float32 [80, 3000] -> float32 [1500, d]."""
        x = self.ct2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        return np.array(self.model.encode(x, to_cpu=True))[0]

    def greedy(self, mel, prompt):
        """-> (token ids, text). max_length=448 (the default) allows min(448 / 2, 448 - prefix) = 224 new tokens;
        suppress_tokens=[-1] is config.json's suppress_ids, suppress_blank its suppress_ids_begin."""
        x = self.ct2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        r = self.model.generate(x, [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1],
                                max_length=448)[0]
        text = bytes(self.byte_of[c] for t in r.sequences[0] if not t.startswith('<|') for c in t)
        return r.sequences_ids[0], text.decode('utf-8', errors='replace')


def readme():
    return f"""# Whisper fixtures

Generated by `tools/acm_tools/whisper_fixtures.py` (`make whisper-fixtures`) from
`build/models/whisper-tiny.en` (`make whisper-model`); docs/whisper.md describes the model.

- `clips/*.wav`: speech synthesised with espeak-ng and flite; 16-bit PCM, 16 kHz mono, except
  {', '.join(f'`{c.name}.wav`' for c in clips() if c.stereo_22k)}: 22050 Hz stereo (right = {stereo_right_gain} x left).
  espeak-ng's 16 kHz clips were resampled from its 22050 Hz output with libsoxr (python-soxr, VHQ).
- `clips.json`: a clip a line: the spoken text, the synthesizer command (`<name>.raw.wav` is its output
  before resampling), and the token ids and text of greedy decoding by CTranslate2 (`ct2`) and by the PyTorch
  reference (`reference`), which are equal; `min_margin` is the smallest lead of the chosen token's logit over
  the runner-up at any step (reference, float32). Ids exclude the prompt and the final <|endoftext|>.
- `logmel_<clip>.npy`: float32 [80, 3000], the reference's log-mel (NumPy, float64, rounded once) of
  {logmel_clips[0]} (16 kHz) and {logmel_clips[1]} (channels averaged, then resampled 22050 -> 16000 Hz with
  libsoxr VHQ in double precision, python-soxr).
- `encoder_{encoder_clip}.npy`: float32 [{encoder_rows}, 384], rows 0..{encoder_rows - 1} of CTranslate2's
  encoder output (`ctranslate2.models.Whisper.encode`, CPU, fp16 weights computed in float32) on
  `logmel_{encoder_clip}.npy`.
"""


@torch.no_grad()
def write(out_dir, model_path=model_dir, ct2_path=ct2_dir):
    torch.set_num_threads(1)
    model, ct2 = Whisper(model_path), CT2(ct2_path)
    prompt = model.gen.prompt
    os.makedirs(os.path.join(out_dir, 'clips'), exist_ok=True)
    listing = []
    for clip in clips():
        wav = os.path.join(out_dir, 'clips', f'{clip.name}.wav')
        cmd = synthesize(clip, wav)
        samples, rate = read_wav(wav)
        mel = log_mel(to_mono_16k(samples, rate))
        margins = []
        ids = model.greedy(mel, margins)
        text = model.tokenizer.decode(ids)
        ct2_ids, ct2_text = ct2.greedy(mel, prompt)
        assert ct2_ids == ids and ct2_text == text, (clip.name, ct2_ids, ids, ct2_text, text)
        assert min(margins) >= min_margin, (clip.name, min(margins))
        seconds = len(samples) / rate
        assert 2 <= seconds <= 5, (clip.name, seconds)
        listing.append(dict(name=clip.name, file=f'clips/{clip.name}.wav', sample_rate=rate,
                            channels=samples.shape[1], seconds=round(seconds, 3), text_spoken=clip.text,
                            synthesizer=cmd, ct2=dict(ids=ct2_ids, text=ct2_text),
                            reference=dict(ids=ids, text=text), min_margin=round(min(margins), 3)))
        if clip.name in logmel_clips:
            np.save(os.path.join(out_dir, f'logmel_{clip.name}.npy'), mel)
        if clip.name == encoder_clip:
            np.save(os.path.join(out_dir, f'encoder_{clip.name}.npy'), ct2.encode(mel)[:encoder_rows])
    with open(os.path.join(out_dir, 'clips.json'), 'w') as fh:
        fh.write('[\n' + ',\n'.join(json.dumps(c) for c in listing) + '\n]\n')  # a clip a line
    with open(os.path.join(out_dir, 'README.md'), 'w') as fh:
        fh.write(readme())
    return listing


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', default=out, help='fixture directory (default: %(default)s)')
    p.add_argument('--model', default=model_dir, help='our model directory (default: %(default)s)')
    p.add_argument('--ct2', default=ct2_dir, help='the CTranslate2 model directory (default: %(default)s)')
    args = p.parse_args(argv)
    for c in write(args.out, args.model, args.ct2):
        print(f'{c["name"]:22} {c["seconds"]:5.2f} s  margin {c["min_margin"]:6.3f}  {c["reference"]["text"].strip()}')


if __name__ == '__main__':
    main()
