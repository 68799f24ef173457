"""
Train the dense ViT teacher on Fashion-MNIST and write it in acm-serve's model format.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.train_teacher --out build/fashion/teacher

Logs to <out>/train.log, writes <out>/config.json + model.safetensors and <out>/metrics.json
(validation accuracy per epoch; the test set is not touched here).
"""
import argparse
import json
import logging
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import fashion
from .modelio import save_model
from .vit import ViTConfig, VisionTransformer

# -----------------------------------------------------------------------------
# config
out = 'build/fashion/teacher'
seed = 0
hidden_dim, num_layers, num_heads, mlp_dim, patch_size = 128, 4, 4, 512, 4  # T = 50 tokens
epochs = 18
batch_size = 128
lr = 1e-3  # AdamW peak, after a linear warm-up of warmup_steps, cosine to zero
weight_decay = 0.05
warmup_steps = 500
label_smoothing = 0.1
threads = 2
limit = None  # training images (None: all 55k); CI uses a few hundred
# -----------------------------------------------------------------------------


def teacher_config():
    return ViTConfig(image_size=28, patch_size=patch_size, num_channels=1, hidden_dim=hidden_dim,
                     num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim, num_classes=10)


def augment(x, g):
    """Random crop with 2-pixel zero padding (in normalised units: the background value) and
    horizontal flip. x (B, 1, 28, 28) -> same."""
    B = x.shape[0]
    background = (0.0 - fashion.MEAN) / fashion.STD
    padded = F.pad(x, (2, 2, 2, 2), value=background)  # (B, 1, 32, 32)
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    x = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(B, generator=g) < 0.5
    return torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def accuracy(model, x, y, mode='full', batch=500, **kw):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits, _ = model(x[i:i + batch], mode=mode, **kw)
        correct += (logits.argmax(-1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def lr_at(step, total):
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def setup_logging(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', force=True,
                        handlers=[logging.FileHandler(os.path.join(out_dir, 'train.log')), logging.StreamHandler()])


def start_run(out_dir, run_seed, num_threads):
    """Log to <out_dir>/train.log, seed torch, set its threads -> the run's data-order generator."""
    setup_logging(out_dir)
    torch.manual_seed(run_seed)
    torch.set_num_threads(num_threads)
    return torch.Generator().manual_seed(run_seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=out)
    ap.add_argument('--epochs', type=int, default=epochs)
    ap.add_argument('--limit', type=int, default=limit, help='training images (default: all)')
    ap.add_argument('--seed', type=int, default=seed)
    args = ap.parse_args(argv)
    g = start_run(args.out, args.seed, threads)

    x_train, y_train = fashion.load('train', limit=args.limit)
    x_val, y_val = fashion.load('val', limit=None if args.limit is None else max(100, args.limit // 5))
    model = VisionTransformer(teacher_config())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and 'pos_embedding' not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or 'pos_embedding' in n]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = args.epochs * steps_per_epoch
    history = []
    step = 0
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f'teacher epoch {epoch + 1}/{args.epochs}', leave=False)
        for i in bar:
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = augment(x_train[idx], g)
            for group in opt.param_groups:
                group['lr'] = lr_at(step, total)
            logits, _ = model(x, mode='full')
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.set_postfix(loss=f'{loss.item():.3f}')
        val = accuracy(model, x_val, y_val)
        history.append({'epoch': epoch + 1, 'val_accuracy': val, 'seconds': time.time() - start})
        logging.info(f'teacher epoch {epoch + 1}: loss {loss.item():.4f}, val accuracy {val:.4f}')
    model.eval()
    save_model(model, args.out, dtype='F32', preprocessing=fashion.PREPROCESSING, labels=fashion.LABELS)
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump({'history': history, 'val_accuracy': history[-1]['val_accuracy'] if history else None,
                   'seconds': time.time() - start, 'train_images': len(x_train)}, f, indent=1)
    logging.info(f'wrote {args.out} in {time.time() - start:.0f} s')


if __name__ == '__main__':
    main()
