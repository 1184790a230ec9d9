#!/usr/bin/env python3
"""Stage C: tokenize and pack the corpus into uint16 token streams (training-tiny-models.md §5.2).

Outputs in --out: train.bin / heldout.bin (uint16, documents as [<bos>] + ids + [<eos>], concatenated),
train_index.npz / heldout_index.npz (doc_offsets int64 [n+1], doc_source int16 [n]), meta.json (sources, counts,
unigram baseline).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

CHUNK_CHARS = 100_000


def split_long(text):
    """Split a long document at boundaries that are exact for the Gemma BPE pipeline: right after a run of
    newlines, before a character that is neither newline nor space (a pre-tokenizer segment boundary that no
    merge crosses, see tok_train.py)."""
    if len(text) <= CHUNK_CHARS:
        return [text]
    out, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        cut = -1
        i = text.find("\n", start + CHUNK_CHARS // 2)
        while i != -1 and i < start + 4 * CHUNK_CHARS:
            j = i
            while j < len(text) and text[j] == "\n":
                j += 1
            if j < len(text) and text[j] != " ":
                cut = j
                break
            i = text.find("\n", j)
        if cut == -1:
            break
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def tokenize_docs(tok, docs, batch=2048):
    """docs: list of (source_idx, text). Returns list of (source_idx, np.uint16 ids) with BOS/EOS ensured."""
    out = []
    for s in range(0, len(docs), batch):
        part = docs[s:s + batch]
        pieces, owner = [], []
        for k, (_src, text) in enumerate(part):
            for p in split_long(text):
                pieces.append(p)
                owner.append(k)
        encs = tok.encode_batch(pieces, add_special_tokens=False)
        per = [[] for _ in part]
        for k, e in zip(owner, encs):
            per[k].extend(e.ids)
        for (src, _t), ids in zip(part, per):
            if not ids or ids[0] != C.BOS:
                ids = [C.BOS] + ids
            if ids[-1] != C.EOS:
                ids = ids + [C.EOS]
            out.append((src, np.asarray(ids, dtype=np.uint16)))
    return out


def write_bin(path, arrays):
    with open(path, "wb") as f:
        for a in arrays:
            f.write(a.tobytes())


def write_index(path, arrays, sources):
    lens = np.array([len(a) for a in arrays], dtype=np.int64)
    off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    np.savez(path, doc_offsets=off, doc_source=np.asarray(sources, dtype=np.int16))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-train-docs", type=int, default=0)
    ap.add_argument("--train-frac", type=float, default=1.0,
                    help="keep a hash-selected fraction of training docs (quick re-pack for stages G/H)")
    ap.add_argument("--report")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenizers import Tokenizer
    t0 = time.time()
    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    os.makedirs(a.out, exist_ok=True)
    sources, src_idx = [], {}
    docs = {"train": [], "heldout": []}
    for d in C.iter_docs(a.corpus):
        if d["split"] == "train" and a.train_frac < 1.0 and \
                C.h(f"pack:{d['source']}:{d['id']}") % 1000 >= a.train_frac * 1000:
            continue
        if d["source"] not in src_idx:
            src_idx[d["source"]] = len(sources)
            sources.append(d["source"])
        docs[d["split"]].append((src_idx[d["source"]], d["text"]))
    if a.max_train_docs:
        docs["train"] = docs["train"][: a.max_train_docs]
    C.log(f"pack: read {len(docs['train'])} train / {len(docs['heldout'])} heldout docs in {time.time() - t0:.1f}s")
    meta = {"sources": sources, "splits": {}}
    counts_train = None
    for split in ("train", "heldout"):
        t1 = time.time()
        enc = tokenize_docs(tok, docs[split])
        arrays = [e for _s, e in enc]
        srcs = [s for s, _e in enc]
        write_bin(os.path.join(a.out, f"{split}.bin"), arrays)
        write_index(os.path.join(a.out, f"{split}_index.npz"), arrays, srcs)
        n_tok = int(sum(len(x) for x in arrays))
        n_bytes = int(sum(len(t.encode("utf-8")) for _s, t in docs[split]))
        per_src = {}
        for s, arr in enc:
            ps = per_src.setdefault(sources[s], {"docs": 0, "tokens": 0})
            ps["docs"] += 1
            ps["tokens"] += int(len(arr))
        meta["splits"][split] = {"docs": len(arrays), "tokens": n_tok, "bytes": n_bytes,
                                 "bytes_per_token": round(n_bytes / max(1, n_tok), 3), "per_source": per_src}
        if split == "train":
            cat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint16)
            counts_train = np.bincount(cat.astype(np.int64), minlength=C.VOCAB_SIZE).astype(np.float64)
        else:
            # unigram baseline: add-one smoothed train unigram, scored on held-out next-token targets (not the
            # leading <bos> of each document, which the LM never predicts)
            p = (counts_train + 1.0) / (counts_train.sum() + C.VOCAB_SIZE)
            nll, n = 0.0, 0
            for arr in arrays:
                tgt = arr[1:].astype(np.int64)
                nll += float(-np.log(p[tgt]).sum())
                n += len(tgt)
            meta["unigram_heldout_nll"] = nll / max(1, n)
            meta["unigram_heldout_ppl"] = math.exp(nll / max(1, n))
        C.log(f"pack: {split}: {len(arrays)} docs, {n_tok} tokens, {n_bytes / max(1, n_tok):.2f} B/token, "
              f"{time.time() - t1:.1f}s")
    np.save(os.path.join(a.out, "unigram_counts.npy"), counts_train)
    meta["tokenizer_sha256"] = C.sha256_file(os.path.join(a.tokenizer, "tokenizer.json"))
    meta["train_frac"] = a.train_frac
    meta["seconds"] = round(time.time() - t0, 1)
    C.dump_json(os.path.join(a.out, "meta.json"), meta)
    C.log(f"pack: unigram held-out ppl {meta.get('unigram_heldout_ppl', float('nan')):.1f}; done in {meta['seconds']}s")
    if a.report:
        C.update_report(a.report, "pack", {k: v for k, v in meta.items() if k != "sources"})


if __name__ == "__main__":
    main()
