#!/usr/bin/env python3
"""Stage F: the exported bf16 target generates its own continuations of training-split prompts
(training-tiny-models.md §7.2). Output: selfgen.bin (uint16 rows, concatenated), selfgen_index.npz, meta.json."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def chat_prompt_of(text):
    i = text.rfind("<|turn>model\n")
    if i < 0:
        return None
    cut = i + len("<|turn>model\n")
    if "<|think|>" not in text and text[cut:].startswith("<|channel>thought\n<channel|>"):
        cut += len("<|channel>thought\n<channel|>")
    return text[:cut]


def make_prompts(corpus, tok, n, chat_frac, seed):
    chat, text = [], []
    for d in C.iter_docs(corpus, "train"):
        key = C.h(f"selfgen:{seed}:{d['source']}:{d['id']}")
        if "<|turn>" in d["text"]:
            p = chat_prompt_of(d["text"])
            if p:
                chat.append((key, p))
        else:
            text.append((key, d["text"][:1500]))
    chat.sort()
    text.sort()
    n_chat = min(len(chat), int(round(n * chat_frac)))
    n_text = min(len(text), n - n_chat)
    out = []
    for key, p in chat[:n_chat]:
        ids = tok.encode(p, add_special_tokens=False).ids
        if not ids or ids[0] != C.BOS:
            ids = [C.BOS] + ids
        out.append(ids[-400:] if len(ids) <= 400 else [C.BOS] + ids[-399:])
    for key, t in text[:n_text]:
        ids = tok.encode(t, add_special_tokens=False).ids
        k = 32 + key % 65  # 32..96 tokens
        out.append([C.BOS] + ids[:k])
    C.log(f"selfgen: {n_chat} chat prompts (of {len(chat)}), {n_text} text prompts (of {len(text)})")
    return out


def left_pad(batch_ids, device):
    import torch
    L = max(len(x) for x in batch_ids)
    ids = torch.zeros(len(batch_ids), L, dtype=torch.long)
    am = torch.zeros(len(batch_ids), L, dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, L - len(x):] = torch.tensor(x)
        am[i, L - len(x):] = 1
    return ids.to(device), am.to(device)


def cut_at_stop(gen):
    for j, t in enumerate(gen):
        if t in C.STOP_IDS:
            return gen[: j + 1], True
    return gen, False


def generate_batch(model, prompts, greedy, max_new, device):
    import torch
    ids, am = left_pad(prompts, device)
    kw = dict(max_new_tokens=max_new, eos_token_id=list(C.STOP_IDS), pad_token_id=C.PAD)
    if greedy:
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=am, **kw)
    gen = out[:, ids.shape[1]:].tolist()
    res = []
    for p, g in zip(prompts, gen):
        g2, stopped = cut_at_stop(g)
        res.append((p, g2, stopped))
    return res


def padding_sanity(model, prompts, max_new, device):
    """16 prompts generated one by one (unpadded) vs in one left-padded batch, greedy."""
    sel = prompts[:16]
    batch = generate_batch(model, sel, True, max_new, device)
    n_same, n_prefix16 = 0, 0
    for p, (_, g, _s) in zip(sel, batch):
        (_, g1, _s1), = generate_batch(model, [p], True, max_new, device)
        n_same += int(g1 == g)
        n_prefix16 += int(g1[:16] == g[:16])
    return {"n": len(sel), "identical": n_same, "identical_first16": n_prefix16}


def write_selfgen(out_dir, rows, prompt_lens, meta):
    os.makedirs(out_dir, exist_ok=True)
    arrays = [np.asarray(r, dtype=np.uint16) for r in rows]
    with open(os.path.join(out_dir, "selfgen.bin"), "wb") as f:
        for x in arrays:
            f.write(x.tobytes())
    off = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in arrays], out=off[1:])
    np.savez(os.path.join(out_dir, "selfgen_index.npz"), offsets=off, prompt_lens=np.asarray(prompt_lens, np.int64))
    C.dump_json(os.path.join(out_dir, "meta.json"), meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-prompts", type=int, default=8192)
    ap.add_argument("--max-new", type=int, default=192)
    ap.add_argument("--greedy-frac", type=float, default=0.7)
    ap.add_argument("--chat-frac", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--report")
    a = ap.parse_args()
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    torch.manual_seed(a.seed)
    t0 = time.time()
    tok = Tokenizer.from_file(os.path.join(a.target, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(a.target, dtype=torch.bfloat16).cuda().eval()
    prompts = make_prompts(a.corpus, tok, a.n_prompts, a.chat_frac, a.seed)
    rng = np.random.default_rng(a.seed)
    prompts = [prompts[i] for i in rng.permutation(len(prompts))]
    san = padding_sanity(model, prompts, min(64, a.max_new), "cuda")
    C.log(f"selfgen: padding sanity {san}")
    bucket = san["identical_first16"] < san["n"] // 2
    if bucket:
        C.log("selfgen: WARNING padded generation disagrees with unpadded; truncating prompts per batch instead")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows, plens, n_stop, n_greedy_rows = [], [], 0, 0
    for bi, s in enumerate(range(0, len(order), a.batch)):
        idx = order[s:s + a.batch]
        batch = [prompts[i] for i in idx]
        if bucket:
            m = min(len(x) for x in batch)
            batch = [[C.BOS] + x[len(x) - m + 1:] if len(x) > m else x for x in batch]
        greedy = (C.h(f"{a.seed}:batch{bi}") % 1000) < a.greedy_frac * 1000
        t1 = time.time()
        res = generate_batch(model, batch, greedy, a.max_new, "cuda")
        for p, g, stopped in res:
            rows.append(list(p) + list(g))
            plens.append(len(p))
            n_stop += int(stopped)
            n_greedy_rows += int(greedy)
        C.log(f"selfgen: batch {bi} ({len(batch)} prompts, greedy={greedy}) {time.time() - t1:.1f}s")
    n_tok = sum(len(r) for r in rows)
    n_gen = sum(len(r) - p for r, p in zip(rows, plens))
    meta = {"rows": len(rows), "tokens": n_tok, "generated_tokens": n_gen, "stopped_frac": n_stop / max(1, len(rows)),
            "greedy_row_frac": n_greedy_rows / max(1, len(rows)), "padding_sanity": san, "bucketed": bucket,
            "seconds": round(time.time() - t0, 1), "args": vars(a)}
    write_selfgen(a.out, rows, plens, meta)
    C.log(f"selfgen: {len(rows)} rows, {n_tok} tokens ({n_gen} generated) in {meta['seconds']}s")
    if a.report:
        C.update_report(a.report, "selfgen", meta)


if __name__ == "__main__":
    main()
