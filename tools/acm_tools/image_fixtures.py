"""
Image fixtures for the Swift preprocessing tests (Sources/ACMServing/Preprocessing.swift): small PNG and
JPEG files, broken inputs, and the model input each case must give, from an independent reference path:
PIL decodes (Image.open -> convert('RGB'), then convert('L') for grey), torch resizes
(F.interpolate bilinear, align_corners=False, antialias=False, torchvision's size rule), numpy crops
(torchvision's CenterCrop offsets) and normalises.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.image_fixtures --out Tests/ACMServingTests/Fixtures/images

Writes into <out>:
    <image files>                 the encoded images of the cases
    cases.json                    [{name, file, preprocessing: {color, resize, crop, mean, std}, channels,
                                    image_size}], preprocessing as in a model's config.json
    expected.safetensors          <name>: f32 [channels, image_size, image_size] per case
    truncated.png, truncated.jpg  the first part of a valid file
    corrupt.png                   one flipped byte in the image data (CRC error)
    random.bin                    random bytes, neither PNG nor JPEG
    cmyk.jpg                      a valid CMYK JPEG, which the server does not decode
    bomb.png, bomb.jpg            valid headers claiming 100000x100000 and 65000x65000 pixels

Where PIL is no guide the reference says so: 16-bit PNGs become round(v * 255 / 65535) (libpng's
scale_16; PIL clips 16-bit grey to 255 in convert()).
"""
import argparse
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin
from safetensors.numpy import save_file

# -----------------------------------------------------------------------------
# config
out = 'Tests/ACMServingTests/Fixtures/images'  # relative to the repository root
imagenet = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
grey = dict(mean=[0.5], std=[0.25])
jpeg_quality = 90
# -----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    file: str
    color: str  # 'grey' or 'rgb'
    resize: int  # shorter side after resizing, or None
    crop: int  # centre crop side, or None
    mean: list
    std: list
    image_size: int


def cases():
    return [
        Case('rgb_png_upscale', 'rgb_20x13.png', 'rgb', 16, 16, **imagenet, image_size=16),
        Case('rgb_png_as_grey', 'rgb_20x13.png', 'grey', None, 13, **grey, image_size=13),  # left = round(3.5) = 4
        Case('rgba_png', 'rgba_9x17.png', 'rgb', 7, 6, **imagenet, image_size=6),  # top = round(3.5), left = round(0.5)
        Case('grey16_png', 'grey16_11x11.png', 'grey', None, 8, **grey, image_size=8),  # top = left = round(1.5)
        Case('gamma_png', 'gamma_10x7.png', 'rgb', None, 7, **imagenet, image_size=7),
        Case('palette_png', 'palette_12x10.png', 'rgb', 8, 8, **imagenet, image_size=8),  # 9x8, left = round(0.5)
        Case('grey_alpha_png', 'grey_alpha_8x8.png', 'grey', None, None, **grey, image_size=8),
        Case('grey_png_identity', 'grey_28x28.png', 'grey', 28, 28, mean=[0.286], std=[0.353], image_size=28),
        Case('grey_png_downscale', 'grey_28x28.png', 'grey', 20, None, **grey, image_size=20),
        Case('rgb_jpeg', 'rgb_32x24.jpg', 'rgb', 20, 20, **imagenet, image_size=20),
        Case('rgb_jpeg_as_grey', 'rgb_32x24.jpg', 'grey', 12, 12, **grey, image_size=12),
        Case('grey_jpeg', 'grey_15x15.jpg', 'grey', 12, 12, **grey, image_size=12),
    ]


def synth(h, w, c, seed):
    """A smooth pattern plus noise, uint8 [h, w, c]: gradients for the resize, noise for rounding."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [127.5 + 90 * np.sin(x / (w / 3 + k) + y / (h / 2 + k) + k) for k in range(c)]
    img = np.stack(planes, axis=-1) + rng.normal(0, 25, (h, w, c))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def png_chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def images():
    """{file name: encoded bytes} of the case images and the broken inputs."""
    f = {}
    f['rgb_20x13.png'] = encode(Image.fromarray(synth(13, 20, 3, 1)), 'PNG')
    rgba = synth(17, 9, 4, 2)
    rgba[0, :, 3] = 0  # fully transparent row: PIL keeps its colour
    f['rgba_9x17.png'] = encode(Image.fromarray(rgba, 'RGBA'), 'PNG')
    grey16 = (synth(11, 11, 1, 3)[..., 0].astype(np.uint16) * 257 + np.random.default_rng(3).integers(0, 257, (11, 11)))
    f['grey16_11x11.png'] = encode(Image.fromarray(grey16.astype(np.uint16)), 'PNG')
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b'gAMA', struct.pack('>I', 100000))  # gamma 1.0: libpng would brighten, PIL ignores it
    f['gamma_10x7.png'] = encode(Image.fromarray(synth(7, 10, 3, 4)), 'PNG', pnginfo=gamma)
    palette = Image.fromarray(synth(10, 12, 3, 5)).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    f['palette_12x10.png'] = encode(palette, 'PNG', transparency=3)
    f['grey_alpha_8x8.png'] = encode(Image.fromarray(synth(8, 8, 2, 6), 'LA'), 'PNG')
    f['grey_28x28.png'] = encode(Image.fromarray(synth(28, 28, 1, 7)[..., 0]), 'PNG')
    f['rgb_32x24.jpg'] = encode(Image.fromarray(synth(24, 32, 3, 8)), 'JPEG', quality=jpeg_quality)
    f['grey_15x15.jpg'] = encode(Image.fromarray(synth(15, 15, 1, 9)[..., 0]), 'JPEG', quality=jpeg_quality)

    # broken inputs
    png, jpg = f['rgb_20x13.png'], f['rgb_32x24.jpg']
    f['truncated.png'] = png[:len(png) // 2]
    f['truncated.jpg'] = jpg[:len(jpg) * 6 // 10]
    idat = png.index(b'IDAT') + 8
    f['corrupt.png'] = png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1:]
    f['random.bin'] = b'\x00' + np.random.default_rng(10).integers(0, 256, 255, dtype=np.uint8).tobytes()
    f['cmyk.jpg'] = encode(Image.fromarray(synth(8, 8, 4, 11), 'CMYK'), 'JPEG', quality=jpeg_quality)
    ihdr = struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0)
    f['bomb.png'] = (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', ihdr) + png_chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + png_chunk(b'IEND', b''))
    f['bomb.jpg'] = jpeg_with_size(f['grey_15x15.jpg'], 65000, 65000)
    return f


def jpeg_with_size(jpg, width, height):
    """The JPEG with its SOF0 frame header claiming width x height."""
    i = 2
    while jpg[i] == 0xFF and jpg[i + 1] != 0xC0:
        i += 2 + struct.unpack('>H', jpg[i + 2:i + 4])[0]
    assert jpg[i:i + 2] == b'\xff\xc0', 'no baseline SOF0 marker'
    return jpg[:i + 5] + struct.pack('>HH', height, width) + jpg[i + 9:]


def decode(data):
    """uint8 [H, W, 3] as PIL's convert('RGB'); 16-bit grey as round(v * 255 / 65535), not PIL's clip."""
    img = Image.open(io.BytesIO(data))
    if img.mode in ('I;16', 'I;16B', 'I'):
        v = np.asarray(img, dtype=np.float64)
        return np.repeat(np.round(v * 255 / 65535).astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(img.convert('RGB'))


def reference(data, case):
    """The model input for one case: f32 [C, image_size, image_size]."""
    rgb = decode(data)
    if case.color == 'grey':
        x = np.asarray(Image.fromarray(rgb, 'RGB').convert('L'))[None]  # (1, H, W)
    else:
        x = rgb.transpose(2, 0, 1)  # (3, H, W)
    # float64 throughout, rounded to f32 once at the end: the bytes do not depend on the CPU's SIMD paths
    x = torch.from_numpy(np.array(x, dtype=np.float64))
    c, h, w = x.shape
    if case.resize is not None:
        # torchvision.transforms.functional._compute_resized_output_size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = case.resize, int(case.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        x = F.interpolate(x[None], size=(new_h, new_w), mode='bilinear', align_corners=False, antialias=False)[0]
        h, w = new_h, new_w
    x = x.numpy()
    if case.crop is not None:
        # torchvision.transforms.functional.center_crop
        top, left = int(round((h - case.crop) / 2.0)), int(round((w - case.crop) / 2.0))
        x = x[:, top:top + case.crop, left:left + case.crop]
    assert x.shape == (c, case.image_size, case.image_size), (case.name, x.shape)
    mean = np.array(case.mean, dtype=np.float64)[:, None, None]
    std = np.array(case.std, dtype=np.float64)[:, None, None]
    return np.ascontiguousarray((x / 255 - mean) / std, dtype=np.float32)


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files = images()
    for name, data in files.items():
        with open(os.path.join(out_dir, name), 'wb') as fh:
            fh.write(data)
    expected, listing = {}, []
    for case in cases():
        expected[case.name] = reference(files[case.file], case)
        listing.append(dict(
            name=case.name, file=case.file,
            preprocessing=dict(color=case.color, resize=case.resize, crop=case.crop, mean=case.mean, std=case.std),
            channels=1 if case.color == 'grey' else 3, image_size=case.image_size))
    with open(os.path.join(out_dir, 'cases.json'), 'w') as fh:
        fh.write('[\n' + ',\n'.join(json.dumps(c) for c in listing) + '\n]\n')  # a case a line
    save_file(expected, os.path.join(out_dir, 'expected.safetensors'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', default=out, help='fixture directory (default: %(default)s)')
    args = p.parse_args(argv)
    write(args.out)


if __name__ == '__main__':
    main()
