"""
Other libraries' checkpoints, as the converters (convert.py for the ViT, whisper_convert.py for Whisper) read
them: the file, a declarative key table that renames its keys into ours, and the strict check of what it
renamed. Every error names the checkpoint's own key.
"""
import pickle
import re

import torch
from safetensors.torch import load_file


class ConvertError(ValueError):
    pass


# -----------------------------------------------------------------------------
# key tables: (checkpoint key, our key). A {name} placeholder matches FIELDS[name] and carries over.
# The first entry that gives an our-key is the one named when that key is missing.

FIELDS = {
    'i': r'\d+',                                   # encoder (ViT) or encoder/decoder (Whisper) layer
    'j': r'\d+',                                   # ViT: gate layer
    's': r'weight|bias',                           # nn.Linear / nn.LayerNorm / nn.Conv parameter
    'acm': r'mlp|self_attention\.[qkvo]_proj',     # ViT: a module that may be an ACM
    't': r'w1|b1|w2|b2',                           # ViT: ACM learner tensors
    'p': r'[qkvo]_proj',                           # ViT: an attention projection
    'side': r'encoder|decoder',                    # Whisper: the stack
    'c': r'[12]',                                  # Whisper: the encoder's convolution
}


def compile_key(pattern):
    """'blocks.{i}.norm1.{s}' -> a regex with named groups i and s."""
    parts = re.split(r'\{(\w+)\}', pattern)  # literal, name, literal, name, ...
    regex = ''.join(re.escape(part) if n % 2 == 0 else f'(?P<{part}>{FIELDS[part]})'
                    for n, part in enumerate(parts))
    return re.compile(regex + '$')


class KeyTable:
    """A converter's key table, both ways: checkpoint key -> our key, and our key -> checkpoint key
    (to name a missing key as the checkpoint would)."""

    def __init__(self, entries, unsupported=(), dropped=(), missing_hints=None):
        self.entries = [(compile_key(src), src, compile_key(ours), ours) for src, ours in entries]
        self.unsupported = [(re.compile(r), why) for r, why in unsupported]
        self.dropped = [(re.compile(r), why) for r, why in dropped]
        self.missing_hints = missing_hints or {}

    def to_ours(self, key):
        """-> our key, None for a dropped key; raises ConvertError for an unsupported or unknown key."""
        for regex, why in self.unsupported:
            if regex.match(key):
                raise ConvertError(f'key {key}: {why} is not supported')
        for regex, _ in self.dropped:
            if regex.search(key):
                return None
        for src_re, _, _, ours in self.entries:
            m = src_re.match(key)
            if m:
                return ours.format(**m.groupdict())
        raise ConvertError(f'unknown key {key}')

    def to_source(self, ours):
        """Our key -> the checkpoint key it would come from (for messages)."""
        for _, src, ours_re, _ in self.entries:
            m = ours_re.match(ours)
            if m:
                return src.format(**m.groupdict())
        return ours

    def missing(self, ours):
        src = self.to_source(ours)
        hint = self.missing_hints.get(src)
        return ConvertError(f'missing key {src}' + (f': {hint}' if hint else ''))


def rename(checkpoint, table: KeyTable):
    """{checkpoint key: tensor} -> ({our key: tensor}, {our key: checkpoint key}, notes on the dropped keys)."""
    sd, source, notes = {}, {}, []
    for key, t in checkpoint.items():
        ours = table.to_ours(key)
        if ours is None:
            notes.append(f'dropped {key}: ' + next(why for r, why in table.dropped if r.search(key)))
            continue
        if ours in sd:
            raise ConvertError(f'keys {source[ours]} and {key} both give {ours}')
        sd[ours], source[ours] = t, key
    return sd, source, notes


def check_keys(sd, source, shapes, table: KeyTable, model):
    """Strictly against shapes ({our key: shape}): no key missing, none unused (by `model`, for the message),
    each with its shape and a floating-point dtype."""
    for ours in shapes:
        if ours not in sd:
            raise table.missing(ours)
    for ours, t in sd.items():
        if ours not in shapes:
            raise ConvertError(f'key {source[ours]} is not used by {model}')
        if list(t.shape) != list(shapes[ours]):
            raise ConvertError(f'key {source[ours]} has shape {list(t.shape)}, expected {list(shapes[ours])}')
        if not t.is_floating_point():
            raise ConvertError(f'key {source[ours]} has dtype {t.dtype}, not floating point')


# -----------------------------------------------------------------------------
# reading a checkpoint file

CONTAINERS = ('model_state', 'state_dict', 'model')  # ACM reference final.pth; timm/Lightning; timm/DeiT


def read_checkpoint(path, unsafe_pickle=False):
    """A .safetensors file, or a torch.save'd state dict or {'model_state'|'state_dict'|'model': state dict}
    -> {key: tensor}. Pickles are read with weights_only=True unless unsafe_pickle."""
    if path.endswith('.safetensors'):
        return load_file(path)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=not unsafe_pickle)
    except (RuntimeError, EOFError) as e:
        raise ConvertError(f'{path} is not a torch checkpoint: {str(e).splitlines()[0]}') from None
    except pickle.UnpicklingError as e:
        found = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        what = found.group(1) if found else str(e).splitlines()[0]
        raise ConvertError(
            f'{path} holds Python objects besides tensors ({what}; the ACM reference code pickles its OmegaConf '
            f'run config under "args", timm\'s train.py an argparse.Namespace), which torch.load(weights_only=True) '
            f'refuses to load. If you trust the file, rerun with --unsafe-pickle (this runs code from the file, '
            f'and the packages of those classes must be importable), or re-save just the state dict where the '
            f'file was made: torch.save(torch.load(f, weights_only=False)["model_state"], "weights.pth") '
            f'("state_dict" for timm)') from None
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for name in CONTAINERS:
            if isinstance(obj.get(name), dict):
                obj = obj[name]
                break
        else:
            raise ConvertError(f'{path}: no state dict found; top-level keys are {sorted(map(str, obj))[:20]} '
                               f'(expected tensors, or one of {list(CONTAINERS)})')
    if not isinstance(obj, dict):
        raise ConvertError(f'{path}: expected a state dict, found {type(obj).__name__}')
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ConvertError(f'key {k} is a {type(v).__name__}, not a tensor')
    return dict(obj)
