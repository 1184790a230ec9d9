#!/usr/bin/env python3
"""Stage G: train the MTP assistant trunk (parallel K-step teacher-forced unroll over the frozen exported target),
then the centroid head (balanced k-means + centroid fit), then export the dense and centroid variants
(training-tiny-models.md §6-§7)."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import tiny_models as TM  # noqa: E402

BAD_INPUT_IDS = (C.PAD, C.BOS) + C.STOP_IDS


def make_assistant_config(use_ordered):
    return TM.assistant_config(use_ordered, attn="sdpa")


# ------------------------------------------------------------------------------------------------ features
class Target:
    def __init__(self, path):
        import torch
        from transformers import AutoModelForCausalLM
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
        self.model.requires_grad_(False)
        self.lm = self.model.model.language_model
        self.cap = self.model.config.get_text_config().final_logit_softcapping

    def features(self, ids):
        """ids [B,T] -> (h post-norm [B,T,256], E(ids) scaled [B,T,256], p softmax fp32 [B,T,V], kv dict)."""
        import torch
        with torch.no_grad():
            kv = {}
            out = self.lm(input_ids=ids, shared_kv_states=kv, use_cache=False, return_shared_kv_states=True)
            if out.shared_kv_states is not None:
                kv = dict(out.shared_kv_states)
            h = out.last_hidden_state
            z = self.model.lm_head(h).float()
            if self.cap:
                z = TM.softcap(z, self.cap)
            p = z.softmax(-1)
            e = self.lm.embed_tokens(ids)
        assert set(kv) == {"sliding_attention", "full_attention"}, kv.keys()
        return h, e, p, kv


def target_features(target, ids):
    return target.features(ids)


def causal_masks(T, W, device):
    import torch
    t = torch.arange(T, device=device)
    full = t[None, :] <= t[:, None]
    slid = full & (t[None, :] > t[:, None] - W)
    return {"full_attention": full[None, None], "sliding_attention": slid[None, None]}


def step_weights(K, decay):
    w = [decay ** (s - 1) for s in range(1, K + 1)]
    return [x / sum(w) for x in w]


def assistant_step(asst, x_in, pos, masks, kv):
    """One parallel assistant step: x_in [B,T,2*Hb] -> (y post-norm [B,T,Ha], state [B,T,Hb])."""
    x = asst.pre_projection(x_in)
    y = asst.model(inputs_embeds=x, position_ids=pos, attention_mask=masks, shared_kv_states=kv,
                   use_cache=False).last_hidden_state
    return y, asst.post_projection(y)


def anchor_ok(ids, valid, K):
    """ok[s] [B,T-s] bool: row t is a valid step-s example (x_{t+1..t+s} real, no pad/bos/stop among them)."""
    import torch
    bad = torch.zeros_like(ids, dtype=torch.bool)
    for b in BAD_INPUT_IDS:
        bad |= ids == b
    bad |= ~valid
    badc = torch.cumsum(bad.long(), 1)
    out = {}
    T = ids.shape[1]
    for s in range(1, K + 1):
        out[s] = (badc[:, s:] - badc[:, : T - s]) == 0
    return out


def unroll(asst, feats, ids, valid, K, W, offset, need_y=False):
    """Teacher-forced K-step unroll over all anchors. Yields per step s: (logits [B,T-s,V], y, state, ok)."""
    import torch
    h, e, p, kv = feats
    B, T = ids.shape
    masks = causal_masks(T, W, ids.device)
    pos = (torch.arange(T, device=ids.device) + offset)[None]
    ok = anchor_ok(ids, valid, K)
    state = h
    for s in range(1, K + 1):
        es = torch.cat([e[:, s:], torch.zeros_like(e[:, :s])], 1)
        y, state = assistant_step(asst, torch.cat([es.to(state.dtype), state], -1), pos, masks, kv)
        logits = asst.lm_head(y)
        yield s, logits[:, : T - s], (y[:, : T - s] if need_y else None), state, ok[s]


def unroll_loss(asst, feats, ids, valid, K, weights, W, offset, hard_weight=0.0, feat_loss=0.0):
    import torch
    h, e, p, kv = feats
    loss = 0.0
    stats = {}
    for s, logits, _y, state, ok in unroll(asst, feats, ids, valid, K, W, offset):
        T = ids.shape[1]
        logq = logits.float().log_softmax(-1)
        tp = p[:, s:]
        ce = -(tp * logq).sum(-1)
        n = ok.sum().clamp_min(1)
        ls = (ce * ok).sum() / n
        if hard_weight:
            tgt = tp.argmax(-1)
            hard = -logq.gather(-1, tgt[..., None]).squeeze(-1)
            ls = ls + hard_weight * (hard * ok).sum() / n
        if feat_loss:
            fl = torch.nn.functional.smooth_l1_loss(state[:, : T - s].float(), h[:, s:].float(), reduction="none").mean(-1)
            ls = ls + feat_loss * (fl * ok).sum() / n
        loss = loss + weights[s - 1] * ls
        with torch.no_grad():
            agree = (logq.argmax(-1) == tp.argmax(-1)) & ok
            stats[s] = (float(agree.sum()), float(ok.sum()), float(ls))
    return loss, stats


# ------------------------------------------------------------------------------------------------ data
class Batches:
    def __init__(self, data_dir, selfgen_dir, T, B, selfgen_frac, seed, split="train"):
        self.data, _off, _src = TM.load_stream(data_dir, split)
        self.T, self.B = T, B
        self.rng = np.random.default_rng(seed)
        self.sg = None
        if selfgen_dir and os.path.exists(os.path.join(selfgen_dir, "selfgen.bin")) and selfgen_frac > 0:
            arr = np.fromfile(os.path.join(selfgen_dir, "selfgen.bin"), dtype=np.uint16)
            off = np.load(os.path.join(selfgen_dir, "selfgen_index.npz"))["offsets"]
            self.sg = (arr, off)
        self.n_sg = int(round(B * selfgen_frac)) if self.sg is not None else 0

    def next(self):
        import torch
        T, B = self.T, self.B
        ids = np.zeros((B, T), dtype=np.int64)
        valid = np.zeros((B, T), dtype=bool)
        n_c = B - self.n_sg
        starts = self.rng.integers(0, max(1, len(self.data) - T), size=n_c)
        for i, st in enumerate(starts):
            row = self.data[st:st + T]
            ids[i, : len(row)] = row
            valid[i, : len(row)] = True
        if self.n_sg:
            arr, off = self.sg
            pick = self.rng.integers(0, len(off) - 1, size=self.n_sg)
            for j, r in enumerate(pick):
                row = arr[off[r]:off[r + 1]][:T]
                ids[n_c + j, : len(row)] = row
                valid[n_c + j, : len(row)] = True
        return torch.from_numpy(ids).cuda(), torch.from_numpy(valid).cuda()


# ------------------------------------------------------------------------------------------------ parity
def parity_selftest(asst, target, ids_row, K, W, offset, anchors=(3, 100, 200, 400)):
    """Parallel training path vs HF Gemma4AssistantForCausalLM.forward run sequentially with pre-sliced KV (fp32)."""
    import torch
    exact = TM.fp32_exact().__enter__()
    asst.eval()
    T = ids_row.shape[1]
    anchors = [t for t in anchors if t + K + 1 < T]
    h, e, p, kv = target.features(ids_row)
    h, e = h.float(), e.float()
    kv = {k: (v[0].float(), v[1].float()) for k, v in kv.items()}
    valid = torch.ones_like(ids_row, dtype=torch.bool)
    par = {}
    with torch.no_grad():
        for s, logits, _y, _st, _ok in unroll(asst, (h, e, p, kv), ids_row, valid, K, W, offset):
            par[s] = logits[0].float()
        worst = 0.0
        scale = 1.0
        x = ids_row[0]
        Kf, Vf = kv["full_attention"]
        Ks, Vs = kv["sliding_attention"]
        for t in anchors:
            lo = max(0, t - W + 1)
            kv_t = {"full_attention": (Kf[:, :, : t + 1], Vf[:, :, : t + 1]),
                    "sliding_attention": (Ks[:, :, lo: t + 1], Vs[:, :, lo: t + 1])}
            tok, hh = x[t + 1], h[0, t]
            for s in range(1, K + 1):
                emb = target.lm.embed_tokens(tok.view(1, 1)).float()
                o = asst(inputs_embeds=torch.cat([emb, hh.view(1, 1, -1)], -1),
                         position_ids=torch.tensor([[t + offset]], device=x.device), shared_kv_states=kv_t)
                ref = par[s][t]
                d = float((o.logits[0, 0].float() - ref).abs().max())
                scale = max(scale, float(ref.abs().max()))
                worst = max(worst, d)
                hh = o.last_hidden_state[0, 0]
                if t + s + 1 < T:
                    tok = x[t + s + 1]
    asst.train()
    exact.__exit__(None, None, None)
    ok = worst < 1e-4 * scale
    return {"anchors": anchors, "max_abs_dlogit": worst, "logit_scale": scale, "pass": bool(ok)}


# ------------------------------------------------------------------------------------------------ centroids
def balanced_kmeans(E, C_, iters, seed):
    """Balanced k-means on normalised rows of E [V,D]; C_ clusters of exactly V/C_ members. Returns cluster id [V]."""
    import torch
    V = E.shape[0]
    cap = V // C_
    X = torch.nn.functional.normalize(E.float(), dim=-1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++ (cosine distance)
    first = int(torch.randint(0, V, (1,), generator=g))
    cent = [X[first]]
    dmin = 1 - X @ X[first]
    for _ in range(1, C_):
        w = dmin.clamp_min(0) ** 2
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / V)
        nxt = int(torch.multinomial(w.cpu(), 1, generator=g))
        cent.append(X[nxt])
        dmin = torch.minimum(dmin, 1 - X @ X[nxt])
    Cm = torch.stack(cent)
    assign = None
    for it in range(iters):
        S = X @ Cm.T  # [V, C]
        order = torch.argsort(S.reshape(-1), descending=True).cpu().numpy()
        tok_of = order // C_
        cl_of = order % C_
        new = np.full(V, -1, dtype=np.int64)
        fill = np.zeros(C_, dtype=np.int64)
        left = V
        for tkn, cl in zip(tok_of.tolist(), cl_of.tolist()):
            if new[tkn] >= 0 or fill[cl] >= cap:
                continue
            new[tkn] = cl
            fill[cl] += 1
            left -= 1
            if left == 0:
                break
        na = torch.from_numpy(new).to(X.device)
        if assign is not None and bool((na == assign).all()):
            assign = na
            break
        assign = na
        M = torch.zeros(C_, X.shape[1], device=X.device).index_add_(0, assign, X)
        Cm = torch.nn.functional.normalize(M, dim=-1)
    return assign, it + 1


def token_ordering_from(assign, C_):
    import torch
    parts = [torch.nonzero(assign == c).flatten().sort().values for c in range(C_)]
    order = torch.cat(parts)
    V = assign.numel()
    assert order.numel() == V and bool((order.sort().values == torch.arange(V, device=order.device)).all())
    return order


def fit_centroids(asst, target, batches, assign, C_, topk, seconds, K, weights, W, offset, lr=1e-2):
    """Fit centroids.weight only (trunk frozen) with the soft cluster CE over the same unrolled steps."""
    import torch
    E = asst.lm_head.weight.detach().float()
    Wc = torch.zeros(C_, E.shape[1], device=E.device).index_add_(0, assign, E)
    Wc = Wc / torch.bincount(assign, minlength=C_).clamp_min(1)[:, None].float()
    Wc = torch.nn.Parameter(Wc)
    opt = torch.optim.Adam([Wc], lr=lr)
    M = torch.nn.functional.one_hot(assign, C_).float()  # [V, C]
    t0 = time.time()
    n = 0
    last = float("nan")
    while time.time() - t0 < seconds:
        ids, valid = batches.next()
        feats = target.features(ids)
        p = feats[2]
        loss = 0.0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            ys = [(s, y.float(), ok) for s, _lg, y, _st, ok in unroll(asst, feats, ids, valid, K, W, offset, need_y=True)]
        for s, y, ok in ys:
            P = p[:, s:] @ M  # [B, T-s, C]
            lc = (y @ Wc.T).log_softmax(-1)
            ce = -(P * lc).sum(-1)
            loss = loss + weights[s - 1] * (ce * ok).sum() / ok.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
        last = float(loss.detach())
    return Wc.detach(), {"steps": n, "final_loss": last, "seconds": round(time.time() - t0, 1)}


def evaluate(asst, target, batches, n_batches, K, W, offset, centroid=None, topk=8):
    """Teacher-forced top-1 agreement per step, and (with centroid=(Wc, assign)) recall@topk."""
    import torch
    asst.eval()
    agree = np.zeros(K); tot = np.zeros(K); rec_d = np.zeros(K); rec_t = np.zeros(K)
    with torch.no_grad():
        for _ in range(n_batches):
            ids, valid = batches.next()
            feats = target.features(ids)
            p = feats[2]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                for s, logits, y, _st, ok in unroll(asst, feats, ids, valid, K, W, offset, need_y=centroid is not None):
                    a = logits.float().argmax(-1)
                    tt = p[:, s:].argmax(-1)
                    agree[s - 1] += float(((a == tt) & ok).sum())
                    tot[s - 1] += float(ok.sum())
                    if centroid is not None:
                        Wc, assign = centroid
                        top = (y.float() @ Wc.T).topk(topk, -1).indices  # [B,T-s,k]
                        rec_d[s - 1] += float(((top == assign[a][..., None]).any(-1) & ok).sum())
                        rec_t[s - 1] += float(((top == assign[tt][..., None]).any(-1) & ok).sum())
    asst.train()
    out = {"alpha_hat": (agree / np.maximum(tot, 1)).round(4).tolist(), "n": tot.tolist()}
    if centroid is not None:
        out["recall_dense_argmax"] = (rec_d / np.maximum(tot, 1)).round(4).tolist()
        out["recall_target_argmax"] = (rec_t / np.maximum(tot, 1)).round(4).tolist()
    return out


# ------------------------------------------------------------------------------------------------ export
def reparam_layer_scalars(asst, scalars):
    return TM.reparam_layer_scalars(asst.model, scalars, has_ple=False)


def export_variant(sd, out_dir, use_ordered, fixtures, centroids=None, ordering=None, name=""):
    import torch
    from transformers import Gemma4AssistantForCausalLM
    cfg = make_assistant_config(use_ordered)
    m = Gemma4AssistantForCausalLM(cfg).cuda().float()
    sd = {k: v for k, v in sd.items() if not k.startswith("masked_embedding.")}
    res = m.load_state_dict(sd, strict=False)
    missing = [k for k in res.missing_keys if k != "lm_head.weight"]
    if use_ordered:
        with torch.no_grad():
            m.masked_embedding.centroids.weight.copy_(centroids)
            m.masked_embedding.token_ordering.copy_(ordering)
        missing = [k for k in missing if not k.startswith("masked_embedding.")]
    assert not missing and not res.unexpected_keys, (missing, res.unexpected_keys)
    m.tie_weights()
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    m.to(torch.bfloat16)
    m.config.dtype = torch.bfloat16
    os.makedirs(out_dir, exist_ok=True)
    for fn in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(out_dir, fn)):
            os.remove(os.path.join(out_dir, fn))
    m.save_pretrained(out_dir)
    p = os.path.join(out_dir, "config.json")
    native = C.load_json(p)
    os.makedirs(fixtures, exist_ok=True)
    shutil.copy(p, os.path.join(fixtures, f"{name}.config.hf_native.json"))
    rel = dict(TM.ASSISTANT_TOP)
    rel["use_ordered_embeddings"] = bool(use_ordered)
    rel["text_config"] = dict(TM.ASSISTANT_TEXT_CONFIG)
    if native.get("transformers_version"):
        rel["transformers_version"] = native["transformers_version"]
    TM.write_json(p, rel)
    TM.write_json(os.path.join(out_dir, "generation_config.json"), TM.ASSISTANT_GEN_CONFIG)
    TM.write_json(os.path.join(out_dir, "mtp_convention.json"), TM.MTP_CONVENTION)
    hdr = TM.safetensors_header(os.path.join(out_dir, "model.safetensors"))
    keys = sorted(k for k in hdr if k != "__metadata__")
    return {"dir": out_dir, "n_tensors": len(keys), "dtypes": {k: hdr[k]["dtype"] for k in keys if hdr[k]["dtype"] != "BF16"},
            "bytes": os.path.getsize(os.path.join(out_dir, "model.safetensors")),
            "native_has_per_layer_config": "per_layer_config" in (native.get("text_config") or {})}


def reload_check(out_dir, use_ordered, scalars):
    import torch
    from transformers import AutoModelForCausalLM
    m, info = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16, output_loading_info=True)
    bad = {k: sorted(map(str, info.get(k, []) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    r = {"class": type(m).__name__, "loading": bad, "loading_info_keys": sorted(info.keys()),
         "tied": m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr(),
         "layer_scalars": [float(l.layer_scalar.float().item()) for l in m.model.layers]}
    if use_ordered:
        to = m.masked_embedding.token_ordering
        r["token_ordering_dtype"] = str(to.dtype)
        r["token_ordering_perm"] = bool((to.sort().values == torch.arange(to.numel())).all())
    r["pass"] = bool(r["class"] == "Gemma4AssistantForCausalLM" and r["tied"] and all(not v for v in bad.values())
                     and r["layer_scalars"] == [float(s) for s in scalars]
                     and (not use_ordered or r["token_ordering_perm"]))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--selfgen", default="")
    ap.add_argument("--out", required=True, help="models root: writes tiny-gemma4-assistant{,-centroid}/")
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--ckpt-out", default="")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--step-decay", type=float, default=0.8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--selfgen-frac", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--time-budget-s", type=float, default=200)
    ap.add_argument("--centroids", type=int, default=64)
    ap.add_argument("--centroid-topk", type=int, default=8)
    ap.add_argument("--centroid-fit-s", type=float, default=20)
    ap.add_argument("--kmeans-iters", type=int, default=25)
    ap.add_argument("--qpos-offset", type=int, default=1)
    ap.add_argument("--hard-weight", type=float, default=0.0)
    ap.add_argument("--feat-loss", type=float, default=0.0)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--report")
    a = ap.parse_args()
    import torch
    from transformers import Gemma4AssistantForCausalLM
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.time()
    W = C.W_SLIDING
    K = a.K
    weights = step_weights(K, a.step_decay)
    target = Target(a.target)
    tcfg = target.model.config.get_text_config()
    assert tcfg.sliding_window == W, tcfg.sliding_window
    asst = Gemma4AssistantForCausalLM(make_assistant_config(False)).cuda().float()
    asst.train()
    assert asst.lm_head.weight is asst.model.embed_tokens.weight or \
        asst.lm_head.weight.data_ptr() == asst.model.embed_tokens.weight.data_ptr(), "assistant head not tied"
    geo_a = TM.layer_geometry(asst.model)
    geo_t = TM.layer_geometry(target.lm)
    C.log(f"assistant geometry {json.dumps(geo_a)}")
    for g in geo_a:  # the assistant must match the owner layers' geometry
        own = [x for x in geo_t if x["type"] == g["type"] and not x["kv_shared"]][-1]
        assert g["head_dim"] == own["head_dim"], (g, own)
    n_params = sum(p.numel() for p in asst.parameters())
    train_b = Batches(a.data, a.selfgen, a.seq_len, a.batch, a.selfgen_frac, a.seed)
    ho_b = Batches(a.data, None, a.seq_len, min(a.batch, 32), 0.0, a.seed + 1, split="heldout")
    sg_b = Batches(a.data, a.selfgen, a.seq_len, min(a.batch, 32), 1.0, a.seed + 2) if train_b.sg is not None else None
    C.log(f"train_assistant: {n_params} params; selfgen rows per batch {train_b.n_sg}/{a.batch}; K={K} w={weights}")

    row, _v = ho_b.next()
    par0 = parity_selftest(asst, target, row[:1], K, W, a.qpos_offset)
    C.log(f"parity self-test (init): {par0}")
    if not par0["pass"]:
        C.log("train_assistant: FAIL parity self-test"); sys.exit(1)

    decay = [p for n_, p in asst.named_parameters() if p.ndim == 2]
    rest = [p for n_, p in asst.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=True)
    N = None
    t_loop = time.time()
    step = 0
    hist = []
    rate_t0 = None
    while True:
        el = time.time() - t_loop
        if el > a.time_budget_s or (N is not None and step >= N):
            break
        if step < a.warmup:
            lr = a.lr * (step + 1) / a.warmup
        elif N is None:
            lr = a.lr
        else:
            prog = min(1.0, (step - a.warmup) / max(1, N - a.warmup))
            lr = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, valid = train_b.next()
        feats = target.features(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, stats = unroll_loss(asst, feats, ids, valid, K, weights, W, a.qpos_offset,
                                      a.hard_weight, a.feat_loss)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(asst.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 3:
            torch.cuda.synchronize(); rate_t0 = time.time()
        if rate_t0 is not None and step >= max(a.warmup, 10) and N is None:
            torch.cuda.synchronize()
            rate = (step - 3) / max(1e-6, time.time() - rate_t0)
            N = int(step + rate * (a.time_budget_s - (time.time() - t_loop)))
        if step % 25 == 0 or step == 1:
            al = [round(stats[s][0] / max(1, stats[s][1]), 3) for s in range(1, K + 1)]
            hist.append([step, round(time.time() - t_loop, 1), round(float(loss.detach()), 4), al])
            if step % 100 == 0 or step == 1:
                C.log(f"asst step {step} loss {float(loss.detach()):.4f} gnorm {float(gn):.2f} lr {lr:.2e} N {N} "
                      f"alpha_hat {al} elapsed {time.time() - t_loop:.0f}s")
    C.log(f"train_assistant: trunk {step} steps in {time.time() - t_loop:.0f}s")
    par1 = parity_selftest(asst, target, row[:1], K, W, a.qpos_offset)
    C.log(f"parity self-test (trained): {par1}")
    ev_ho = evaluate(asst, target, ho_b, a.eval_batches, K, W, a.qpos_offset)
    ev_sg = evaluate(asst, target, sg_b, a.eval_batches, K, W, a.qpos_offset) if sg_b else None
    C.log(f"teacher-forced alpha_hat held-out {ev_ho['alpha_hat']} selfgen {ev_sg and ev_sg['alpha_hat']}")

    # ---- centroid head
    t1 = time.time()
    asst.eval()
    asst.requires_grad_(False)
    assign, iters = balanced_kmeans(asst.lm_head.weight.detach(), a.centroids, a.kmeans_iters, a.seed)
    ordering = token_ordering_from(assign, a.centroids)
    for tid in (C.EOS, C.TURN_CLOSE):
        assert 0 <= int(assign[tid]) < a.centroids
    Wc, fit = fit_centroids(asst, target, train_b, assign, a.centroids, a.centroid_topk, a.centroid_fit_s, K,
                            weights, W, a.qpos_offset)
    ev_c = evaluate(asst, target, ho_b, a.eval_batches, K, W, a.qpos_offset, centroid=(Wc, assign), topk=a.centroid_topk)
    ev_c_sg = evaluate(asst, target, sg_b, a.eval_batches, K, W, a.qpos_offset, centroid=(Wc, assign),
                       topk=a.centroid_topk) if sg_b else None
    C.log(f"centroids: kmeans {iters} iters, fit {fit}; recall@{a.centroid_topk} held-out {ev_c.get('recall_dense_argmax')} "
          f"selfgen {ev_c_sg and ev_c_sg.get('recall_dense_argmax')}; {time.time() - t1:.0f}s")

    # ---- export
    if a.ckpt_out:
        os.makedirs(a.ckpt_out, exist_ok=True)
        asst.save_pretrained(a.ckpt_out)
        torch.save({"centroids": Wc.cpu(), "token_ordering": ordering.cpu()}, os.path.join(a.ckpt_out, "centroids.pt"))
    scal = TM.ASSISTANT_LAYER_SCALARS
    with torch.no_grad():
        dummy_ids, dummy_valid = ho_b.next()
        dummy_ids, dummy_valid = dummy_ids[:2], dummy_valid[:2]
        f = target.features(dummy_ids)
        f32 = (f[0].float(), f[1].float(), f[2], {k: (v[0].float(), v[1].float()) for k, v in f[3].items()})
        exact = TM.fp32_exact().__enter__()
        before = [lg.float() for _s, lg, _y, _st, _ok in unroll(asst, f32, dummy_ids, dummy_valid, K, W, a.qpos_offset)]
        final_scale = reparam_layer_scalars(asst, scal)
        after = [lg.float() for _s, lg, _y, _st, _ok in unroll(asst, f32, dummy_ids, dummy_valid, K, W, a.qpos_offset)]
        exact.__exit__(None, None, None)
        d_reparam = max(float((x - y).abs().max()) for x, y in zip(before, after))
    C.log(f"assistant reparam max|dlogit| {d_reparam:.2e} (final scale {final_scale})")
    sd = {k: v.detach().clone() for k, v in asst.state_dict().items()}
    dense_dir = os.path.join(a.out, "tiny-gemma4-assistant")
    cent_dir = os.path.join(a.out, "tiny-gemma4-assistant-centroid")
    ex_d = export_variant(sd, dense_dir, False, a.fixtures, name="tiny-gemma4-assistant")
    ex_c = export_variant(sd, cent_dir, True, a.fixtures, centroids=Wc, ordering=ordering,
                          name="tiny-gemma4-assistant-centroid")
    rl_d = reload_check(dense_dir, False, scal)
    rl_c = reload_check(cent_dir, True, scal)
    res = {"n_params": n_params, "steps": step, "planned_steps": N, "K_train": K, "step_weights": weights,
           "qpos_offset": a.qpos_offset, "parity_init": par0, "parity_trained": par1,
           "alpha_hat_heldout": ev_ho, "alpha_hat_selfgen": ev_sg, "centroid_fit": fit, "kmeans_iters": iters,
           "centroid_eval_heldout": ev_c, "centroid_eval_selfgen": ev_c_sg, "reparam_max_dlogit": d_reparam,
           "export_dense": ex_d, "export_centroid": ex_c, "reload_dense": rl_d, "reload_centroid": rl_c,
           "history": hist[-40:], "seconds": round(time.time() - t_start, 1), "args": vars(a)}
    ok = par0["pass"] and par1["pass"] and rl_d["pass"] and rl_c["pass"] and d_reparam < 1e-3
    res["pass"] = bool(ok)
    C.log("train_assistant:", json.dumps({k: v for k, v in res.items() if k not in ("history", "args")})[:4000])
    if a.report:
        C.update_report(a.report, "train_assistant", res)
    if not ok:
        C.log("train_assistant: FAIL"); sys.exit(1)


if __name__ == "__main__":
    main()
