"""
docs/results.md and its plots: every number measured by the Swift engine through `acm-serve evaluate`,
on the 10k Fashion-MNIST test images.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.report          # or: make fashion-report

Needs the built binary (.build/release/acm-serve), the bundled models and <work>/acm-nonrobust from
acm_tools.fashion_pipeline.
"""
import argparse
import json
import os
import subprocess

import numpy as np

from . import fashion

# -----------------------------------------------------------------------------
# config
binary = '.build/release/acm-serve'
work = 'build/fashion'
teacher = 'models/fashion-vit-teacher'
acm = 'models/fashion-vit-acm'
nonrobust = 'build/fashion/acm-nonrobust'
caps = [1.0, 0.75, 0.6, 0.5, 0.4, 0.3, 0.25]
uniform = [1, 2, 3, 4]
kmap_images = 6
out_md = 'docs/results.md'
out_plot = 'docs/results.png'
out_kmap = 'docs/results-kmap.png'
# -----------------------------------------------------------------------------


def test_set(work_dir):
    """The test images and labels as .npy files for acm-serve evaluate (written once)."""
    xs, ys = os.path.join(work_dir, 'test_images.npy'), os.path.join(work_dir, 'test_labels.npy')
    if not (os.path.exists(xs) and os.path.exists(ys)):
        x, y = fashion.load('test')
        os.makedirs(work_dir, exist_ok=True)
        np.save(xs, x.numpy())
        np.save(ys, y.numpy())
    return xs, ys


def evaluate(model, policy_args, xs, ys, kmaps=0):
    cmd = [binary, 'evaluate', '--model', model, '--images', xs, '--labels', ys, '--json', *policy_args]
    if kmaps:
        cmd += ['--kmap-images', str(kmaps)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def rows(xs, ys):
    out = [('dense teacher', evaluate(teacher, [], xs, ys))]
    out.append(('ACM, auto (gates choose)', evaluate(acm, [], xs, ys, kmaps=kmap_images)))
    for b in caps:
        out.append((f'ACM, cap {b}', evaluate(acm, ['--budget', str(b)], xs, ys)))
    for k in uniform:
        out.append((f'uniform k = {k} (static baseline)', evaluate(acm, ['--uniform-k', str(k)], xs, ys)))
    for b in caps:
        out.append((f'ACM without budget robustness, cap {b}', evaluate(nonrobust, ['--budget', str(b)], xs, ys)))
    out.append(('ACM without budget robustness, auto', evaluate(nonrobust, [], xs, ys)))
    return out


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    teacher_acc = results[0][1]['accuracy'] * 100
    series = {'ACM, cap β (one model)': [], 'uniform k (static)': [], 'ACM without robustness, cap β': []}
    for name, r in results:
        key = ('ACM, cap β (one model)' if name.startswith('ACM, cap') else
               'uniform k (static)' if name.startswith('uniform') else
               'ACM without robustness, cap β' if name.startswith('ACM without budget robustness, cap') else None)
        if key:
            series[key].append((r['compute_fraction'], r['accuracy'] * 100))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (label, pts), marker in zip(series.items(), ['o', 's', '^']):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    auto = results[1][1]
    ax.scatter([auto['compute_fraction']], [auto['accuracy'] * 100], marker='*', s=160, color='k', zorder=5,
               label='ACM, auto')
    ax.axhline(teacher_acc, color='gray', linestyle='--', label=f'dense teacher ({teacher_acc:.2f}%)')
    ax.set_xlabel('compute fraction of the ACM layers (executed / all learners)')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title('Fashion-MNIST, measured by the Swift engine')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_kmaps(auto, xs, path, grid=7):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    images = np.load(xs)[:len(auto['kmaps'])]
    n = len(auto['kmaps'])
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), dpi=120)
    for i, kmap in enumerate(auto['kmaps']):
        axes[0, i].imshow(images[i, 0], cmap='gray')
        axes[0, i].set_axis_off()
        im = axes[1, i].imshow(np.array(kmap[1:]).reshape(grid, grid), cmap='viridis', vmin=0, vmax=4)
        axes[1, i].set_axis_off()
        axes[1, i].set_title(f'cls {kmap[0]:.2f}', fontsize=7)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label='mean learners per patch')
    fig.suptitle('Test images and their learners per patch (auto mode, mean over all ACM layers)', fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def markdown(results):
    lines = ['| model and mode | test accuracy | compute fraction | GFLOPs / image | images/s |',
             '| --- | ---: | ---: | ---: | ---: |']
    for name, r in results:
        lines.append(f'| {name} | {r["accuracy"] * 100:.2f}% | {r["compute_fraction"]:.3f} | '
                     f'{r["gflops_per_image"]:.4f} | {r["images_per_second"]:.0f} |')
    return '\n'.join(lines)


def uniform_at(results, fraction):
    """The uniform-k baseline's accuracy at a compute fraction: linear between its measured points."""
    pts = sorted((r['compute_fraction'], r['accuracy']) for name, r in results if name.startswith('uniform'))
    return float(np.interp(fraction, [p[0] for p in pts], [p[1] for p in pts]))


def goals(results):
    """The issue's goals, row by row: each cap of the ACM model against the teacher and against the
    uniform-k baseline at the same realized fraction."""
    teacher_acc = results[0][1]['accuracy']
    lines = ['| ACM mode | fraction | accuracy | vs dense teacher | uniform k at this fraction | ACM − uniform |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    for name, r in results:
        if name.startswith('ACM, cap') or name.startswith('ACM, auto'):
            u = uniform_at(results, r['compute_fraction'])
            lines.append(f'| {name.removeprefix("ACM, ")} | {r["compute_fraction"]:.3f} | {r["accuracy"] * 100:.2f}% | '
                         f'{(r["accuracy"] - teacher_acc) * 100:+.2f} | {u * 100:.2f}% | '
                         f'{(r["accuracy"] - u) * 100:+.2f} |')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--json-out', default=os.path.join(work, 'results.json'))
    args = ap.parse_args(argv)
    xs, ys = test_set(work)
    results = rows(xs, ys)
    with open(args.json_out, 'w') as f:
        json.dump(results, f, indent=1)
    plot(results, out_plot)
    plot_kmaps(results[1][1], xs, out_kmap)
    print(markdown(results))
    print()
    print(goals(results))
    print()
    print('mean learners per token, auto mode:')
    for path, k in sorted(results[1][1]['mean_learners'].items()):
        print(f'  {path}: {k:.2f}')


if __name__ == '__main__':
    main()
