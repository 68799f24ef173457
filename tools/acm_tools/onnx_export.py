"""
A dense model directory of our format as ONNX, exported from the PyTorch reference (acm_tools.vit): the network
that OpenVINO and ONNX Runtime run in `make bench-peers` (acm_tools.bench_peers).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.onnx_export models/fashion-vit-teacher build/bench-peers/teacher.onnx

Input `input` [B, C, H, W] float32 with a dynamic batch B, output `logits` [B, classes]; opset 17 (the first with
LayerNormalization, which both runtimes fuse). Exported with torch's TorchScript exporter (dynamo=False): it needs
nothing beyond the pinned torch, where the dynamo exporter needs onnxscript, and tracing gives this model's plain
graph. Only dense models: the peers run the teacher, and ONNX has no counterpart of an ACM's per-token choice.
The export is checked by running it (onnx_max_diff) on a batch other than the traced one, so that a batch size
baked into the graph fails the check.
"""
import argparse
import warnings

import numpy as np
import torch

from .modelio import load_model

# -----------------------------------------------------------------------------
# config
opset = 17
trace_batch = 2
check_batch = 3
tolerance = 1e-4  # max |ONNX logits - PyTorch logits|
threads = 2
# -----------------------------------------------------------------------------


class Logits(torch.nn.Module):
    """The model's logits alone: VisionTransformer.forward also returns the (empty, for a dense model) choices."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='full')[0]  # (B, classes)


def input_shape(cfg):
    return (cfg.num_channels, cfg.image_size, cfg.image_size)


def export_onnx(model_dir, path):
    """Write model_dir's network to path as ONNX. -> the PyTorch model (eval, float32), for onnx_max_diff."""
    model = load_model(model_dir)
    if model.cfg.acm:
        raise ValueError(f'{model_dir} has ACMs; export its dense teacher instead')
    x = torch.randn(trace_batch, *input_shape(model.cfg))
    with warnings.catch_warnings():
        # the exporter's deprecation notice, and TracerWarnings on VisionTransformer's input-shape check (constant
        # for a fixed C, H, W) and math.sqrt of the head size
        warnings.simplefilter('ignore')
        torch.onnx.export(Logits(model).eval(), (x,), path, dynamo=False, opset_version=opset,
                          input_names=['input'], output_names=['logits'],
                          dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    return model


def onnx_max_diff(model, path, runtime='onnxruntime', batch=check_batch, seed=0):
    """max |logits through the ONNX file - PyTorch's| on N(0, 1) input, run by onnxruntime or openvino (at f32:
    OpenVINO's default on a CPU with bf16 is bf16)."""
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape(model.cfg)), dtype=np.float32)
    torch.set_num_threads(threads)
    with torch.no_grad():
        want = Logits(model)(torch.from_numpy(x)).numpy()  # (B, classes)
    if runtime == 'onnxruntime':
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        got = ort.InferenceSession(path, so, providers=['CPUExecutionProvider']).run(None, {'input': x})[0]
    elif runtime == 'openvino':
        import openvino as ov
        compiled = ov.Core().compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32',
                                                         'INFERENCE_NUM_THREADS': threads})
        got = compiled.create_infer_request().infer({0: x})[0]
    else:
        raise ValueError(f'runtime {runtime!r} is not onnxruntime or openvino')
    if got.shape != want.shape or not np.isfinite(got).all() or not np.isfinite(want).all():
        return float('inf')
    return float(np.abs(got - want).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('model', help='dense model directory')
    ap.add_argument('out', help='ONNX file to write')
    args = ap.parse_args(argv)
    model = export_onnx(args.model, args.out)
    diff = onnx_max_diff(model, args.out)
    print(f'wrote {args.out}; max |ONNX Runtime - PyTorch| = {diff:.2e} at batch {check_batch}')
    if not diff <= tolerance:
        raise SystemExit(f'the export differs from PyTorch by {diff:.2e} > {tolerance}')


if __name__ == '__main__':
    main()
