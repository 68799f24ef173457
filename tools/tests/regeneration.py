"""Helpers for the tests that check committed, generated files against a fresh run of their generator."""
import os


def tree(d):
    """{path relative to d: bytes} of every file under d."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


def generate_twice(main, tmp):
    """Run a generator's main(['--out', dir]) into two fresh directories -> (tree a, tree b)."""
    main(['--out', str(tmp / 'a')])
    main(['--out', str(tmp / 'b')])
    return tree(tmp / 'a'), tree(tmp / 'b')
