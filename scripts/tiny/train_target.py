#!/usr/bin/env python3
"""Stage D: train the tiny Gemma 4 target (Gemma4ForCausalLM, HF labels) — training-tiny-models.md §5."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import tiny_models as TM  # noqa: E402


def make_text_config():
    return TM.text_config(TM.TARGET_TEXT_CONFIG, attn="sdpa")


def build_model(device):
    from transformers import Gemma4ForCausalLM
    cfg = make_text_config()
    model = Gemma4ForCausalLM(cfg).to(device)
    model.config._attn_implementation = "sdpa"
    custom_init(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "lm_head must be tied"
    return model


def custom_init(model):
    import torch
    H = model.config.hidden_size
    P = model.config.hidden_size_per_layer_input
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, H ** -0.5)
        model.model.embed_tokens.weight[0].zero_()
        model.model.embed_tokens_per_layer.weight.normal_(0, P ** -0.5)
        model.model.embed_tokens_per_layer.weight[0].zero_()
        for l in model.model.layers:
            l.layer_scalar.fill_(1.0)


class RowStream:
    """Documents in a seeded permutation per epoch, concatenated, cut into rows of seq_len (kept on the GPU)."""

    def __init__(self, data, offsets, seq_len, batch, seed, device):
        self.data, self.off, self.T, self.B, self.seed, self.dev = data, offsets, seq_len, batch, seed, device
        self.epoch, self.pos, self.rows = -1, 0, None
        self._new_epoch()

    def _new_epoch(self):
        import torch
        self.epoch += 1
        rng = np.random.default_rng(self.seed * 1000 + self.epoch)
        order = rng.permutation(len(self.off) - 1)
        stream = np.concatenate([self.data[self.off[i]:self.off[i + 1]] for i in order])
        n = len(stream) // self.T
        self.rows = torch.from_numpy(stream[: n * self.T].astype(np.int32)).view(n, self.T).to(self.dev)
        self.pos = 0

    def next(self):
        if self.pos + self.B > self.rows.shape[0]:
            self._new_epoch()
        x = self.rows[self.pos:self.pos + self.B].long()
        self.pos += self.B
        return x


def lr_at(step, N, peak, warmup, decay_frac):
    if step < warmup:
        return peak * (step + 1) / warmup
    if N is None:
        return peak
    d0 = int((1 - decay_frac) * N)
    if step < d0:
        return peak
    return peak * max(0.0, (N - step) / max(1, N - d0))


def evaluate(model, rows, batch=32, autocast=True):
    """Mean next-token NLL over rows [n, T] (int64 tensor on device)."""
    import torch
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, rows.shape[0], batch):
            x = rows[s:s + batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x, use_cache=False).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1)
            nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
            tot += float(nll.sum())
            n += nll.numel()
    model.train()
    return tot / max(1, n)


def save_fp32(model, path, extra):
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    C.dump_json(os.path.join(path, "train_log.json"), extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-frac", type=float, default=0.2)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--time-budget-s", type=float, default=400)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--compile", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--report")
    a = ap.parse_args()
    import torch
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = "cuda"
    t_start = time.time()
    data, off, _src = TM.load_stream(a.data, "train")
    stream = RowStream(data, off, a.seq_len, a.batch, a.seed, dev)
    ho_rows, _ = TM.heldout_rows(a.data, a.seq_len)
    ho = torch.from_numpy(ho_rows).to(dev)
    ho_small = ho[:32]
    C.log(f"train_target: {len(data)} train tokens ({len(off) - 1} docs), {ho.shape[0]} held-out rows of {a.seq_len}")

    model = build_model(dev)
    n_params = sum(p.numel() for p in model.parameters())
    C.log(f"train_target: {n_params} params (tied head counted once); geometry {json.dumps(TM.layer_geometry(model.model))}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim == 2 and "embed_tokens" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if a.compile else model
    model.train()
    N = None
    t_loop = time.time()
    t_rate0, step_rate0 = None, None
    hist, evals = [], []
    step = 0
    loss_v = float("nan")
    init_loss = None
    while True:
        el = time.time() - t_loop
        if el > a.time_budget_s or (N is not None and step >= N):
            break
        x = stream.next()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, N, a.lr, a.warmup, a.decay_frac)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 5:
            torch.cuda.synchronize()
            t_rate0, step_rate0 = time.time(), step
        # (re-)estimate the total step count from the measured rate while still in the stable phase
        if step_rate0 is not None and step >= max(a.warmup, 10) and step % 25 == 0 and \
                (N is None or step < (1 - a.decay_frac) * N):
            torch.cuda.synchronize()
            rate = (step - step_rate0) / max(1e-6, time.time() - t_rate0)
            N = int(step + rate * (a.time_budget_s - (time.time() - t_loop)))
        if step % 25 == 0 or step == 1:
            loss_v = float(loss.detach())
            if init_loss is None:
                init_loss = loss_v
            hist.append([step, round(time.time() - t_loop, 1), round(loss_v, 4), round(float(gn), 3),
                         opt.param_groups[0]["lr"]])
            if step % 100 == 0 or step == 1:
                tps = step * a.batch * a.seq_len / max(1e-6, time.time() - t_loop)
                C.log(f"step {step} loss {loss_v:.4f} gnorm {float(gn):.2f} lr {opt.param_groups[0]['lr']:.2e} "
                      f"N {N} tok/s {tps / 1e6:.3f}M elapsed {time.time() - t_loop:.0f}s")
        if step % a.eval_every == 0:
            ev = evaluate(model, ho_small)
            evals.append([step, round(ev, 4)])
            C.log(f"eval step {step}: held-out(32 rows) loss {ev:.4f} ppl {math.exp(ev):.2f}")
    train_s = time.time() - t_loop
    final_small = evaluate(model, ho_small)
    final_full = evaluate(model, ho)
    C.log(f"train_target: {step} steps in {train_s:.0f}s; held-out loss {final_full:.4f} ppl {math.exp(final_full):.2f}")
    extra = {"steps": step, "planned_steps": N, "train_seconds": round(train_s, 1),
             "tokens_seen": step * a.batch * a.seq_len, "epochs": step * a.batch * a.seq_len / max(1, len(data)),
             "final_train_loss": loss_v, "initial_loss": init_loss, "heldout_loss_small": final_small,
             "heldout_loss": final_full, "heldout_ppl": math.exp(final_full), "n_params": n_params,
             "evals": evals, "history": hist, "args": vars(a)}
    save_fp32(model, a.out, extra)
    if a.report:
        C.update_report(a.report, "train_target", {k: v for k, v in extra.items() if k != "history"})
    C.log(f"train_target: saved fp32 checkpoint to {a.out}; total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
