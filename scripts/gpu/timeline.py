#!/usr/bin/env python3
"""Summarise an in-graph kernel timeline (src/backend/cuda/timeline.cuh) per position in the decoder layer.

usage: scripts/gpu/timeline.py TIMELINE.tsv [...]

A kernel's cost in the chain is the time from its release (its predecessor completed) to the next kernel's
release. Layers are found by their per-head norm / RoPE kernel (qkv_norm_rope*); position p of a layer is
the p-th kernel from the layer's q|k|v projection (the kernel before that one). Prints the mean, min and max
cost of each position over the layers, and what the step spends outside the layers (embedding, head).
"""
import collections
import sys


def load(path):
    rows = []
    for line in open(path):
        if line.startswith('#'):
            continue
        f = line.rstrip('\n').split('\t')
        rows.append((f[1], float(f[3])))  # name, released (us)
    return rows


def main(paths):
    for path in paths:
        k = load(path)
        cost = [k[i + 1][1] - k[i][1] for i in range(len(k) - 1)] + [0.0]
        ropes = [i for i, (n, _) in enumerate(k) if n.startswith('qkv_norm_rope')]
        if len(ropes) < 2:
            sys.exit(f'{path}: fewer than two layers found')
        period = min(b - a for a, b in zip(ropes, ropes[1:]))
        by_pos = collections.defaultdict(list)
        names = {}
        for r in ropes:
            for p in range(period):
                i = r - 1 + p
                if i < len(k):
                    by_pos[p].append(cost[i])
                    names.setdefault(p, k[i][0])
        total = k[-1][1] - k[0][1]
        inside = sum(sum(v) for v in by_pos.values())
        print(f'{path}: {len(k)} kernels, {len(ropes)} layers of {period}, step {total:.1f} us')
        print(f'  {"pos":>3} {"kernel":<22} {"mean us":>8} {"min":>7} {"max":>7} {"sum us":>8}')
        for p in range(period):
            v = by_pos[p]
            print(f'  {p:>3} {names[p]:<22} {sum(v) / len(v):8.2f} {min(v):7.2f} {max(v):7.2f} {sum(v):8.1f}')
        print(f'  layers {inside:.1f} us, outside the layers (embedding, head) {total - inside:.1f} us')


if __name__ == '__main__':
    main(sys.argv[1:])
