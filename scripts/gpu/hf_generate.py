#!/usr/bin/env python3
"""HF transformers half of scripts/gpu/side_by_side.sh: batch-1 greedy `generate` timings on the GPU.

Modes (each: one untimed warm-up, then every prompt timed with torch.cuda.synchronize() around generate):
  plain      model.generate(...), dynamic cache
  assisted   model.generate(..., assistant_model=<Gemma4AssistantForCausalLM>) with num_assistant_tokens=K
             (transformers routes a Gemma 4 assistant to SinglePositionMultiTokenCandidateGenerator: the MTP
             drafter reads the target's shared KV + last hidden state; assisted decoding needs a dynamic cache)
  static     model.generate(..., cache_implementation="static"); transformers auto-compiles the decode step
             with torch.compile when the model allows it (reported as "compiled")

AL / acceptance are counted with forward hooks (HF reports no counters): target forward calls = 1 prefill +
verify rounds, assistant forward calls = drafted tokens.

With --random-config, builds a random-weight Gemma4ForCausalLM from a config's text_config in bf16 on the GPU and
saves it (safetensors, model_type gemma4_text) to --model-dir first, or loads it from there when present.

Writes one JSON: meta + a "modes" list (tokens per prompt, seconds, tok/s, AL ...).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import time
import traceback


def log(*a):
    print("[hf]", *a, file=sys.stderr, flush=True)


def die(msg):
    print(f"hf_generate.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def as_list(x):
    if x is None:
        return None
    if isinstance(x, int):
        return [x]
    return [int(t) for t in x]


def greedy_config(model, max_new, stop):
    """A full copy of the model's generation config, made greedy; stop=none: no EOS at all (fixed length)."""
    g = model.generation_config
    eos = as_list(g.eos_token_id) if stop == "eos" else None
    pad = g.pad_token_id if g.pad_token_id is not None else 0
    # Edit the model's own config (then copy it): generate() fills fields left unset in a passed config from it.
    g.do_sample, g.temperature, g.top_k, g.top_p = False, None, None, None
    g.eos_token_id, g.pad_token_id = eos, pad
    gc = copy.deepcopy(g)
    gc.max_new_tokens = max_new
    gc.min_new_tokens = None
    return gc


def build_random(config_path, out_dir, attn):
    import torch
    from transformers import AutoModelForCausalLM, Gemma4TextConfig

    cfg_json = json.load(open(config_path, encoding="utf-8"))
    text = dict(cfg_json.get("text_config", cfg_json))
    for k in ("model_type", "dtype", "torch_dtype", "_comment", "architectures", "transformers_version"):
        text.pop(k, None)
    cfg = Gemma4TextConfig(**text)
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU: seconds instead of minutes for ~5 B parameters
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn)
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation=attn)
    model = model.to(torch.bfloat16).eval()
    n = sum(p.numel() for p in model.parameters())
    log(f"built random {type(model).__name__} from {config_path}: {n / 1e9:.2f} B parameters in {time.time() - t0:.1f} s")
    t0 = time.time()
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "side_by_side_random.json"), "w") as f:
        json.dump({"from_config": os.path.abspath(config_path), "params": n}, f)
    log(f"saved to {out_dir} in {time.time() - t0:.1f} s")
    return model


def load(path, attn):
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=attn)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation=attn)
    m = m.cuda().eval()
    log(f"loaded {type(m).__name__} from {path} in {time.time() - t0:.1f} s")
    return m


class Counter:
    def __init__(self, module):
        self.n = 0
        self.h = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def remove(self):
        self.h.remove()


def run_mode(name, model, prompts, gen_kwargs, warm, k=0, asst=None, extra=None):
    """Time generate() on every prompt. Returns the mode's result dict."""
    import torch

    # hooks only where counted (assisted): a hook inside a torch.compile'd forward is best avoided
    tc = Counter(model) if asst is not None else None
    ac = Counter(asst) if asst is not None else None
    rows = []
    try:
        t0 = time.time()
        with torch.no_grad():
            for i in warm:
                x = torch.tensor([prompts[i]["ids"]], device="cuda")
                model.generate(input_ids=x, attention_mask=torch.ones_like(x), **gen_kwargs)
            torch.cuda.synchronize()
            warm_s = time.time() - t0
            for p in prompts:
                x = torch.tensor([p["ids"]], device="cuda")
                am = torch.ones_like(x)
                if ac is not None:
                    tc.n = ac.n = 0
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model.generate(input_ids=x, attention_mask=am, **gen_kwargs)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t
                toks = out[0, x.shape[1]:].tolist()
                r = {"id": p["id"], "prompt_len": len(p["ids"]), "tokens": toks, "seconds": dt}
                if asst is not None:
                    rounds = max(tc.n - 1, 0)  # the first target call is the prefill
                    r.update({"verify_steps": rounds, "drafted": ac.n, "accepted": max(len(toks) - 1 - rounds, 0)})
                rows.append(r)
    finally:
        if ac is not None:
            tc.remove()
            ac.remove()
    n_tok = sum(len(r["tokens"]) for r in rows)
    secs = sum(r["seconds"] for r in rows)
    res = {"mode": name, "engine": "hf", "k": k, "prompts": len(rows), "n_tokens": n_tok, "seconds": secs,
           "tok_s": n_tok / secs, "ms_per_token": 1000 * secs / n_tok, "warmup_s": warm_s, "warmup_prompts": len(warm),
           "rows": rows}
    if asst is not None:
        ver = sum(r["verify_steps"] for r in rows)
        acc = sum(r["accepted"] for r in rows)
        dr = sum(r["drafted"] for r in rows)
        res.update({"AL": (acc + ver) / ver if ver else 0.0, "accept_rate": acc / dr if dr else 0.0,
                    "verify_steps": ver, "drafted": dr, "accepted": acc})
    if extra:
        res.update(extra)
    al = f", AL {res['AL']:.3f}" if asst is not None else ""
    log(f"{name}: {n_tok} tokens in {secs:.2f} s = {res['tok_s']:.1f} tok/s{al} (warm-up {warm_s:.1f} s)")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="target checkpoint directory (HF layout)")
    ap.add_argument("--assistant", default="", help="Gemma 4 assistant directory ('' = no assisted mode)")
    ap.add_argument("--random-config", default="", help="build a random-weight model from this config.json")
    ap.add_argument("--model-dir", default="", help="with --random-config: where the checkpoint is saved / reused")
    ap.add_argument("--prompts", required=True, help="JSON from `side_by_side.py prompts`")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--k", default="3", help="draft lengths for assisted mode, comma-separated")
    ap.add_argument("--modes", default="plain,assisted,static")
    ap.add_argument("--stop", choices=["none", "eos"], default="none")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--static-timeout", type=int, default=240,
                    help="give up on the static-cache mode (compile included) after this many seconds")
    ap.add_argument("--group", default="", help="tag stored with every mode (report grouping)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import transformers

    if not torch.cuda.is_available():
        die("CUDA is not available to torch")
    prompts = json.load(open(a.prompts, encoding="utf-8"))["prompts"]
    if not prompts:
        die(f"{a.prompts}: no prompts")
    modes = [m for m in a.modes.split(",") if m]
    bad = set(modes) - {"plain", "assisted", "static"}
    if bad:
        die(f"unknown mode(s) {sorted(bad)} (plain, assisted, static)")
    t_all = time.time()

    if a.random_config:
        if not a.model_dir:
            die("--random-config needs --model-dir")
        marker = os.path.join(a.model_dir, "side_by_side_random.json")
        if os.path.exists(marker) and os.path.exists(os.path.join(a.model_dir, "config.json")):
            made_from = json.load(open(marker)).get("from_config")
            if made_from != os.path.abspath(a.random_config):
                die(f"{a.model_dir} was made from {made_from}, not {os.path.abspath(a.random_config)}: remove it or "
                    "pass another directory")
            model = load(a.model_dir, a.attn)
        else:
            if os.path.isdir(a.model_dir) and os.listdir(a.model_dir):
                die(f"{a.model_dir} exists but holds no complete random checkpoint from this script "
                    "(no side_by_side_random.json): remove it or pass another directory")
            os.makedirs(a.model_dir, exist_ok=True)
            model = build_random(a.random_config, a.model_dir, a.attn)
        target = a.model_dir
        random_info = {"from_config": a.random_config, "params": sum(p.numel() for p in model.parameters()),
                       "class": type(model).__name__}
    else:
        if not a.target:
            die("--target or --random-config is required")
        model = load(a.target, a.attn)
        target = a.target
        random_info = None
    gc = greedy_config(model, a.max_new, a.stop)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]["ids"]))
    shortest = min(range(len(prompts)), key=lambda i: len(prompts[i]["ids"]))
    results, errors = [], []

    if "plain" in modes:
        results.append(run_mode("hf_plain", model, prompts, {"generation_config": gc}, [0]))

    if "assisted" in modes:
        if not a.assistant:
            die("mode 'assisted' needs --assistant")
        asst = load(a.assistant, a.attn)
        ag = asst.generation_config
        ag.num_assistant_tokens_schedule = "constant"
        ag.eos_token_id = gc.eos_token_id
        ag.do_sample, ag.temperature, ag.top_k, ag.top_p = False, None, None, None
        for k in [int(x) for x in a.k.split(",") if x]:
            # the candidate generator reads the assistant's config; set the main one too, in case it is merged in
            ag.num_assistant_tokens = k
            gk = copy.deepcopy(gc)
            gk.num_assistant_tokens, gk.num_assistant_tokens_schedule = k, "constant"
            r = run_mode(f"hf_assisted_k{k}", model, prompts, {"generation_config": gk, "assistant_model": asst}, [0],
                         k=k, asst=asst)
            per_round = r["drafted"] / max(1, r["verify_steps"])
            if per_round > k + 1e-6 or r["AL"] > k + 1 + 1e-6:
                log(f"warning: {r['mode']}: {per_round:.2f} drafts per verify step, AL {r['AL']:.2f} exceed K={k}: "
                    "num_assistant_tokens not honoured?")
                r["note"] = f"drafted {per_round:.2f} tokens per verify step (K={k} requested)"
            results.append(r)
        del asst
        torch.cuda.empty_cache()

    if "static" in modes:
        # Last: it leaves a static cache and maybe a compiled forward on the model. Warm up with the longest
        # prompt first (the static cache it sizes is reused by shorter ones), then the shortest (a shape change).
        def on_alarm(*_):
            raise TimeoutError(f"static-cache mode still running after {a.static_timeout} s (--static-timeout)")

        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(a.static_timeout)
        try:
            gs = copy.deepcopy(gc)
            gs.cache_implementation = "static"
            r = run_mode("hf_static", model, prompts, {"generation_config": gs}, [longest, shortest])
            signal.alarm(0)
            compiled = hasattr(model, "_compiled_call") or any(
                hasattr(m, "_compiled_call") for m in model.modules())
            r["compiled"] = bool(compiled)
            r["note"] = (f"cache_implementation='static'; transformers {'compiled' if compiled else 'did not compile'}"
                         f" the decode step (warm-up incl. compile {r['warmup_s']:.0f} s)")
            results.append(r)
        except Exception as e:  # optional mode: report, do not fail the run
            traceback.print_exc()
            errors.append({"mode": "hf_static", "error": f"{type(e).__name__}: {e}"})
            results.append({"mode": "hf_static", "engine": "hf", "k": 0, "error": f"{type(e).__name__}: {e}"})
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old_handler)

    if a.stop == "none":
        short = [(r["mode"], x["id"], len(x["tokens"])) for r in results if "rows" in r for x in r["rows"]
                 if len(x["tokens"]) != a.max_new]
        if short:
            log(f"warning: {len(short)} generations did not produce exactly {a.max_new} tokens, e.g. {short[:3]}")
    for r in results:
        if a.group:
            r["group"] = a.group
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
           "dtype": "bfloat16", "attn": a.attn, "max_new": a.max_new, "stop": a.stop, "target": target,
           "assistant": a.assistant, "group": a.group, "random": random_info, "seconds": time.time() - t_all, "modes": results,
           "errors": errors}
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
        f.write("\n")
    log(f"wrote {a.out} ({time.time() - t_all:.0f} s)")


if __name__ == "__main__":
    main()
