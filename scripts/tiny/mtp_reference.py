#!/usr/bin/env python3
"""Clean reference MTP loop (training-tiny-models.md §8.5), importable.

The target is recomputed without a cache every round (exact, no stale KV). Rows of a prompt set are batched with
right padding (causal attention makes padding after a row's tokens irrelevant). The assistant sees only committed
target KV: full keys [0, L-1], sliding keys [L-W, L-1]; query position L-1+offset (offset +1 = HF convention).
``mode="hf"`` instead runs one prompt at a time through HF's Gemma4AssistantForCausalLM.forward with pre-sliced KV
(a cross-check of the batched path).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import tiny_models as TM  # noqa: E402


def _dtype(name):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def to_mask(boolmask, attn, dtype):
    import torch
    if attn == "eager":
        z = torch.zeros(boolmask.shape, dtype=dtype, device=boolmask.device)
        return z.masked_fill(~boolmask, torch.finfo(dtype).min)
    return boolmask


class Pair:
    def __init__(self, target, assistant, dtype="fp32", attn="sdpa", target_model=None):
        import torch
        from transformers import AutoModelForCausalLM
        self.dt = _dtype(dtype)
        self.dt_name = dtype
        self.attn = attn
        if target_model is not None:
            self.tgt = target_model
        else:
            self.tgt = AutoModelForCausalLM.from_pretrained(target, dtype=self.dt, attn_implementation=attn).cuda().eval()
        self.asst = AutoModelForCausalLM.from_pretrained(assistant, dtype=self.dt, attn_implementation=attn).cuda().eval() \
            if assistant else None
        self.lm = self.tgt.model.language_model
        self.cap = self.tgt.config.get_text_config().final_logit_softcapping
        self.W = self.tgt.config.get_text_config().sliding_window
        self.ordered = bool(self.asst is not None and self.asst.config.use_ordered_embeddings)
        self._pre = None

    # -------------------------------------------------------------- target
    def target_forward(self, seqs, sel, seed_mode="post"):
        """seqs: list of id lists. sel: list of lists of positions per row. Returns (logits [B,k,V] fp32 at sel,
        hidden at sel [B,k,H] (post- or pre-norm), kv dict)."""
        import torch
        B, L = len(seqs), max(len(s) for s in seqs)
        x = torch.zeros(B, L, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
        x = x.cuda()
        cap = {}
        hook = None
        if seed_mode == "pre":
            hook = self.lm.norm.register_forward_pre_hook(lambda m, args: cap.__setitem__("pre", args[0]))
        with torch.no_grad():
            out = self.tgt.model(input_ids=x, use_cache=False, return_shared_kv_states=True)
        if hook is not None:
            hook.remove()
        h = out.last_hidden_state
        k = max(len(p) for p in sel)
        idx = torch.tensor([p + [p[-1]] * (k - len(p)) for p in sel], device=x.device)
        hs = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
        with torch.no_grad():
            logits = self.tgt.lm_head(hs).float()
            if self.cap:
                logits = TM.softcap(logits, self.cap)
        seed = hs if seed_mode == "post" else cap["pre"].gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
        return logits, seed, dict(out.shared_kv_states)

    # -------------------------------------------------------------- assistant
    def head(self, y):
        if self.ordered:
            return self.asst.masked_embedding(y, self.asst.lm_head.weight)
        return self.asst.lm_head(y)

    def draft_batched(self, tok, hh, Lc, kv, K, offset):
        """tok [B] bonus ids, hh [B,Hb] seeds, Lc [B] committed lengths. Returns drafts [B,K]."""
        import torch
        dev = tok.device
        Lmax = kv["full_attention"][0].shape[2]
        j = torch.arange(Lmax, device=dev)
        full = j[None, :] <= (Lc - 1)[:, None]
        slid = full & (j[None, :] >= (Lc - self.W)[:, None])
        masks = {"full_attention": to_mask(full[:, None, None, :], self.attn, self.dt),
                 "sliding_attention": to_mask(slid[:, None, None, :], self.attn, self.dt)}
        pos = (Lc - 1 + offset)[:, None]
        out = []
        with torch.no_grad():
            for _ in range(K):
                e = self.lm.embed_tokens(tok[:, None])
                x = self.asst.pre_projection(torch.cat([e, hh[:, None, :].to(e.dtype)], -1))
                y = self.asst.model(inputs_embeds=x, position_ids=pos, attention_mask=masks, shared_kv_states=kv,
                                    use_cache=False).last_hidden_state
                hh = self.asst.post_projection(y)[:, 0]
                tok = self.head(y)[:, 0].argmax(-1)
                out.append(tok)
        return torch.stack(out, 1)

    def draft_hf(self, tok, hh, L, kv, K, offset):
        """One row through HF Gemma4AssistantForCausalLM.forward with KV pre-sliced to the committed set."""
        import torch
        lo = max(0, L - self.W)
        kv_t = {"full_attention": tuple(t[:, :, :L] for t in kv["full_attention"]),
                "sliding_attention": tuple(t[:, :, lo:L] for t in kv["sliding_attention"])}
        out = []
        with torch.no_grad():
            for _ in range(K):
                e = self.lm.embed_tokens(tok.view(1, 1))
                o = self.asst(inputs_embeds=torch.cat([e, hh.view(1, 1, -1).to(e.dtype)], -1),
                              position_ids=torch.tensor([[L - 1 + offset]], device=e.device), shared_kv_states=kv_t)
                tok = o.logits[0, 0].argmax(-1)
                hh = o.last_hidden_state[0, 0]
                out.append(tok)
        return torch.stack(out)[None]


def _emit(emitted, toks, max_new):
    """Append toks to emitted until a stop token or max_new. Returns True if the row is finished."""
    for t in toks:
        emitted.append(int(t))
        if int(t) in C.STOP_IDS or len(emitted) >= max_new:
            return True
    return False


def _ctx(pair):
    import contextlib
    return TM.fp32_exact() if pair.dt_name == "fp32" else contextlib.nullcontext()


def spec_generate(pair, prompts, K, offset=1, temperature=0.0, seed_mode="post", max_new=128, seed=0,
                  mode="batched", batch=256):
    """Speculative decoding with the clean reference semantics. Returns per-prompt dicts {emitted, n}."""
    with _ctx(pair):
        return _spec_generate(pair, prompts, K, offset, temperature, seed_mode, max_new, seed, mode, batch)


def _spec_generate(pair, prompts, K, offset, temperature, seed_mode, max_new, seed, mode, batch):
    if mode == "hf":
        res = []
        for p in prompts:
            res += _spec_rows(pair, [p], K, offset, temperature, seed_mode, max_new, seed, "hf")
        return res
    res = []
    for s in range(0, len(prompts), batch):
        res += _spec_rows(pair, prompts[s:s + batch], K, offset, temperature, seed_mode, max_new, seed + s, "batched")
    return res


def _spec_rows(pair, prompts, K, offset, temperature, seed_mode, max_new, seed, mode):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    B = len(prompts)
    ids = [list(p) for p in prompts]
    emitted = [[] for _ in range(B)]
    ns = [[] for _ in range(B)]
    logits, hs, kv = pair.target_forward(ids, [[len(p) - 1] for p in ids], seed_mode)
    z = logits[:, 0]
    if temperature > 0:
        b = torch.multinomial(torch.softmax(z / temperature, -1), 1, generator=g)[:, 0]
    else:
        b = z.argmax(-1)
    h = hs[:, 0]
    active = []
    for i in range(B):
        if not _emit(emitted[i], [b[i]], max_new):
            active.append(i)
    keep = torch.tensor(active, device="cuda", dtype=torch.long)
    b, h = b[keep], h[keep]
    kv = {k: (v[0][keep], v[1][keep]) for k, v in kv.items()}
    while active:
        Lc = torch.tensor([len(ids[i]) for i in active], device="cuda")
        if mode == "hf":
            d = pair.draft_hf(b[0], h[0], int(Lc[0]), kv, K, offset)
        else:
            d = pair.draft_batched(b, h, Lc, kv, K, offset)
        seqs = [ids[i] + [int(b[r])] + d[r].tolist() for r, i in enumerate(active)]
        sel = [list(range(len(ids[i]), len(ids[i]) + K + 1)) for i in active]
        logits, hs, kv = pair.target_forward(seqs, sel, seed_mode)
        if temperature > 0:
            p = torch.softmax(logits / temperature, -1)  # [B, K+1, V]
            n = torch.zeros(len(active), dtype=torch.long, device="cuda")
            alive = torch.ones(len(active), dtype=torch.bool, device="cuda")
            nxt = torch.zeros(len(active), dtype=torch.long, device="cuda")
            for j in range(K):
                pd = p[:, j].gather(-1, d[:, j:j + 1])[:, 0]
                u = torch.rand(len(active), generator=g, device="cuda")
                acc = alive & (u < pd)
                rej = alive & ~acc
                if bool(rej.any()):
                    q = p[:, j].clone()
                    q.scatter_(-1, d[:, j:j + 1], 0.0)
                    q = q / q.sum(-1, keepdim=True).clamp_min(1e-30)
                    smp = torch.multinomial(q, 1, generator=g)[:, 0]
                    nxt = torch.where(rej, smp, nxt)
                n = n + acc.long()
                alive = acc
            if bool(alive.any()):
                smp = torch.multinomial(p[:, K], 1, generator=g)[:, 0]
                nxt = torch.where(alive, smp, nxt)
            a_next = nxt
        else:
            a = logits.argmax(-1)  # [B, K+1]; a[:, j] follows (b, d1..dj)
            match = (d == a[:, :K]).long().cumprod(1)
            n = match.sum(1)
            a_next = a.gather(1, n[:, None])[:, 0]
        h_new = hs.gather(1, n[:, None, None].expand(-1, 1, hs.shape[-1]))[:, 0]
        n_l, a_l, d_l = n.tolist(), a_next.tolist(), d.tolist()
        still = []
        for r, i in enumerate(active):
            nr = n_l[r]
            ns[i].append(nr)
            ids[i] = ids[i] + [int(b[r])] + d_l[r][:nr]
            if not _emit(emitted[i], d_l[r][:nr] + [a_l[r]], max_new):
                still.append(r)
        keep = torch.tensor(still, device="cuda", dtype=torch.long)
        active = [active[r] for r in still]
        b = a_next[keep]
        h = h_new[keep]
        kv = {k: (v[0][keep], v[1][keep]) for k, v in kv.items()}
    return [{"emitted": emitted[i], "n": ns[i]} for i in range(B)]


def plain_generate(pair, prompts, max_new=128, batch=256):
    """Greedy target-only decoding with the same no-cache batched forward."""
    with _ctx(pair):
        return _plain_generate(pair, prompts, max_new, batch)


def _plain_generate(pair, prompts, max_new, batch):
    out = []
    for s in range(0, len(prompts), batch):
        ps = prompts[s:s + batch]
        seqs = [list(p) for p in ps]
        em = [[] for _ in ps]
        active = list(range(len(ps)))
        while active:
            logits, _h, _kv = pair.target_forward([seqs[i] for i in active], [[len(seqs[i]) - 1] for i in active])
            a = logits[:, 0].argmax(-1).tolist()
            still = []
            for r, i in enumerate(active):
                seqs[i].append(a[r])
                if not _emit(em[i], [a[r]], max_new):
                    still.append(i)
            active = still
        out += em
    return out


def acceptance_stats(rows, K):
    rounds = sum(len(r["n"]) for r in rows)
    toks = sum(len(r["emitted"]) - 1 for r in rows)
    hist = [0] * (K + 1)
    for r in rows:
        for n in r["n"]:
            hist[n] += 1
    ge = [sum(hist[j:]) for j in range(K + 1)]  # rounds with n >= j
    alpha = [ge[j] / ge[j - 1] if ge[j - 1] else 0.0 for j in range(1, K + 1)]
    acc = sum(n for r in rows for n in r["n"])
    als = [(len(r["emitted"]) - 1) / len(r["n"]) for r in rows if r["n"]]
    return {"AL": toks / max(1, rounds), "AL_mean_of_prompts": sum(als) / max(1, len(als)), "rounds": rounds,
            "alpha": [round(x, 4) for x in alpha], "accepted": acc, "proposed": rounds * K,
            "accept_rate": acc / max(1, rounds * K), "n_hist": hist, "prompts": len(rows)}


def load_prompt_sets(corpus, tok, n_chat=100, n_think=30, n_text=100):
    rows = C.load_prompt_rows(corpus, {"chat": n_chat, "think": n_think, "text": n_text})
    sets = {}
    for r in rows:
        sets.setdefault(r["kind"], []).append({"id": r["id"], "raw_kind": r["raw_kind"],
                                               "ids": C.encode_prompt(tok, r["text"], r["kind"])})
    return sets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--assistant", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--K", default="1,2,3,4,6")
    ap.add_argument("--offset", type=int, default=1)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--mode", default="batched", choices=["batched", "hf"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.target, "tokenizer.json"))
    sets = load_prompt_sets(a.corpus, tok)
    res = {}
    for dt in a.dtype.split(","):
        pair = Pair(a.target, a.assistant, dt)
        for K in [int(k) for k in a.K.split(",")]:
            for name, ps in sets.items():
                t0 = time.time()
                rows = spec_generate(pair, [p["ids"] for p in ps], K, a.offset, max_new=a.max_new, mode=a.mode)
                st = acceptance_stats(rows, K)
                st["seconds"] = round(time.time() - t0, 1)
                res[f"{dt}/K{K}/{name}"] = st
                C.log(f"{dt} K={K} {name}: AL {st['AL']:.3f} alpha {st['alpha']} ({st['seconds']}s)")
    C.dump_json(a.out, res)


if __name__ == "__main__":
    main()
