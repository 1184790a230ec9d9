#!/usr/bin/env python3
"""Stage H: verify the exported pair (training-tiny-models.md §8) and write the golden files.

loading + safetensors headers + sizes; perplexity per source (bf16 and fp32) vs the unigram baseline; greedy samples,
arithmetic probe and target greedy golden fixture; HF assisted generation with hooks (AL_hf, identity check); the
clean reference loop (acceptance_golden.json in both assistant dirs); the pass/fail gate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import mtp_reference as R  # noqa: E402
import tiny_models as TM  # noqa: E402


def check_loading(target_dir, dense_dir, cent_dir):
    import torch
    from transformers import AutoModelForCausalLM
    out = {}
    for name, d in (("target", target_dir), ("dense", dense_dir), ("centroid", cent_dir)):
        m, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, output_loading_info=True)
        bad = {k: sorted(map(str, info.get(k, []) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if name == "target":
            tm = m.model.language_model
            tied = m.lm_head.weight.data_ptr() == tm.embed_tokens.weight.data_ptr()
            ls = [float(l.layer_scalar.float()) for l in tm.layers]
            want = TM.TARGET_LAYER_SCALARS
        else:
            tied = m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
            ls = [float(l.layer_scalar.float()) for l in m.model.layers]
            want = TM.ASSISTANT_LAYER_SCALARS
        r = {"class": type(m).__name__, "loading": bad, "tied": tied, "layer_scalars": ls}
        ok = tied and all(not v for v in bad.values()) and ls == [float(x) for x in want]
        if name == "centroid":
            to = m.masked_embedding.token_ordering
            r["token_ordering_perm"] = bool((to.sort().values == torch.arange(to.numel())).all())
            ok = ok and r["token_ordering_perm"]
        r["pass"] = bool(ok)
        out[name] = r
    return out


def check_safetensors_dtypes(dirs):
    res, total, ok = {}, 0, True
    for d in dirs:
        hdr = TM.safetensors_header(os.path.join(d, "model.safetensors"))
        odd = {k: v["dtype"] for k, v in hdr.items() if k != "__metadata__" and v["dtype"] != "BF16"}
        good = all(k.endswith("token_ordering") and v == "I64" for k, v in odd.items())
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
        total += size
        res[os.path.basename(d.rstrip("/"))] = {"non_bf16": odd, "ok": good, "dir_bytes": size,
                                                "safetensors_bytes": os.path.getsize(os.path.join(d, "model.safetensors"))}
        ok &= good
    res["total_bytes"] = total
    res["pass"] = bool(ok and total <= 40 * 1024 * 1024)
    return res


def nll_rows(model, rows, batch=16):
    import torch
    outs = []
    with torch.no_grad():
        for s in range(0, rows.shape[0], batch):
            x = rows[s:s + batch]
            lg = model(input_ids=x, use_cache=False).logits.float()
            lp = torch.log_softmax(lg[:, :-1], -1)
            outs.append((-lp.gather(-1, x[:, 1:, None])[..., 0], lg[:, :-1].argmax(-1)))
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def perplexity_by_source(target_dir, data_dir, ckpt, max_rows):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, Gemma4ForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    rows_np, src_np = TM.heldout_rows(data_dir, 1024, max_rows=max_rows)
    meta = C.load_json(os.path.join(data_dir, "meta.json"), {})
    sources = meta.get("sources", [])
    rows = torch.from_numpy(rows_np).cuda()
    src = torch.from_numpy(src_np[:, 1:]).cuda()  # source of each predicted token
    res = {"rows": int(rows.shape[0]), "unigram_ppl": meta.get("unigram_heldout_ppl")}
    arg = {}
    for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        m = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dt).cuda().eval()
        if dt == torch.float32:
            with TM.fp32_exact():
                nll, am = nll_rows(m, rows)
        else:
            nll, am = nll_rows(m, rows)
        arg[name] = am
        per = {}
        for si in torch.unique(src).tolist():
            msk = src == si
            per[sources[si] if si < len(sources) else str(si)] = math.exp(float(nll[msk].mean()))
        res[name] = {"ppl": math.exp(float(nll.mean())), "per_source": per}
        del m
    res["bf16_fp32_ppl_rel"] = res["bf16"]["ppl"] / res["fp32"]["ppl"] - 1
    res["bf16_fp32_top1_agree"] = float((arg["bf16"] == arg["fp32"]).float().mean())
    if ckpt and os.path.exists(os.path.join(ckpt, "config.json")):
        m = Gemma4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).cuda().eval()
        with TM.fp32_exact():
            nll, _ = nll_rows(m, rows)
        res["train_fp32_ppl"] = math.exp(float(nll.mean()))
        res["export_fp32_vs_train_ppl_rel"] = res["fp32"]["ppl"] / res["train_fp32_ppl"] - 1
        del m
    return res


ARITH = re.compile(r"(-?\d+)\s*(\+|-|\*|x|×|times|plus|minus)\s*(-?\d+)")


def _arith_answer(prompt):
    user = prompt.split("<|turn>user\n")[-1].split("<turn|>")[0]
    m = ARITH.search(user)
    if not m:
        return None
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    if op in ("+", "plus"):
        return a + b, max(len(m.group(1)), len(m.group(3)))
    if op in ("-", "minus"):
        return a - b, max(len(m.group(1)), len(m.group(3)))
    return a * b, max(len(m.group(1)), len(m.group(3)))


def samples_and_probes(pair, tok, corpus, out_dir, fixtures):
    """Greedy samples (samples.txt), arithmetic exact-match probe, target greedy golden fixture (fp32)."""
    rows = C.load_prompt_rows(corpus)
    by = {}
    for r in rows:
        by.setdefault(r["kind"], []).append(r)
    picks = by.get("chat", [])[:3] + by.get("think", [])[:2] + by.get("text", [])[:3]
    # a multi-turn prompt and a training-style WordNet question rendered locally
    mt = C.render_chat_local([{"role": "user", "content": "What does \"river\" mean?"},
                              {"role": "assistant", "content": "\"river\" (noun) means a large natural stream of water."},
                              {"role": "user", "content": "What is 12 + 30?"}], False, True)
    picks.append({"text": mt, "kind": "chat", "raw_kind": "multiturn", "id": "multiturn"})
    prompts = [C.encode_prompt(tok, r["text"], r["kind"]) for r in picks]
    outs = R.plain_generate(pair, prompts, max_new=64)
    with open(os.path.join(out_dir, "samples.txt"), "w", encoding="utf-8") as f:
        for r, p, o in zip(picks, prompts, outs):
            f.write(f"=== {r['kind']} / {r['raw_kind']} / {r['id']}\n--- prompt\n{tok.decode(p, skip_special_tokens=False)}\n"
                    f"--- greedy (64)\n{tok.decode(o, skip_special_tokens=False)}\n\n")
    gold_prompts = prompts[:8]
    gold = R.plain_generate(pair, gold_prompts, max_new=32)
    fx = [{"prompt_ids": p, "greedy_ids": o, "kind": r["kind"], "id": r["id"]}
          for p, o, r in zip(gold_prompts, gold, picks)]
    os.makedirs(fixtures, exist_ok=True)
    C.dump_json(os.path.join(fixtures, "target_greedy_golden.json"),
                {"model": "models/tiny-gemma4", "dtype": "fp32", "max_new_tokens": 32,
                 "stop_ids": list(C.STOP_IDS), "note": "greedy, stops after the first stop id (included)",
                 "cases": fx}, indent=None)
    arith = [r for r in rows if r["kind"] == "chat" and _arith_answer(r["text"]) is not None][:200]
    res_ar = {}
    if arith:
        ps = [C.encode_prompt(tok, r["text"], "chat") for r in arith]
        outs = R.plain_generate(pair, ps, max_new=48)
        for r, o in zip(arith, outs):
            ans, nd = _arith_answer(r["text"])
            text = tok.decode(o, skip_special_tokens=True)
            got = re.findall(r"-?\d+", text.split("=")[-1]) if "=" in text else re.findall(r"-?\d+", text)
            hit = bool(got) and int(got[0]) == ans
            k = f"{nd}-digit"
            c = res_ar.setdefault(k, [0, 0])
            c[0] += int(hit)
            c[1] += 1
    return {"n_samples": len(picks), "arith_exact_match": {k: v[0] / v[1] for k, v in res_ar.items()},
            "arith_counts": res_ar}


def hf_assisted_acceptance(target, asst, prompts, K, max_new=128, plain_cache=None):
    import torch
    from transformers import GenerationConfig
    asst.generation_config.num_assistant_tokens = K
    asst.generation_config.num_assistant_tokens_schedule = "constant"
    gc = GenerationConfig(do_sample=False, max_new_tokens=max_new, eos_token_id=list(C.STOP_IDS), pad_token_id=C.PAD,
                          bos_token_id=C.BOS)
    stats, drafts = [], [0]

    def hook(mod, args, kwargs, out):
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0]
        if not stats:
            stats.append(None)
            return
        d = ids[0, 1:]
        a = out.logits[0, :-1].argmax(-1)
        stats.append(int((d == a).long().cumprod(0).sum()) if d.numel() else 0)

    def ahook(mod, args, out):
        drafts[0] += 1

    per, tot_new, tot_rounds, same = [], 0, 0, 0
    for p in prompts:
        stats.clear()
        x = torch.tensor([p], device="cuda")
        am = torch.ones_like(x)
        h1 = target.register_forward_hook(hook, with_kwargs=True)
        h2 = asst.register_forward_hook(ahook)
        try:
            with torch.no_grad():
                out = target.generate(input_ids=x, attention_mask=am, assistant_model=asst, generation_config=gc)
        finally:
            h1.remove(); h2.remove()
        key = tuple(p)
        if plain_cache is not None and key in plain_cache:
            plain = plain_cache[key]
        else:
            with torch.no_grad():
                plain = target.generate(input_ids=x, attention_mask=am, generation_config=gc)
            if plain_cache is not None:
                plain_cache[key] = plain
        new = out.shape[1] - x.shape[1]
        rounds = len(stats) - 1
        same += int(torch.equal(out, plain))
        tot_new += new - 1
        tot_rounds += max(rounds, 0)
        per.append({"new": new, "rounds": rounds, "n": stats[1:]})
    return {"K": K, "AL_hf": tot_new / max(1, tot_rounds), "prompts": len(prompts), "identical_to_plain": same,
            "drafts_proposed": drafts[0], "rounds": tot_rounds,
            "accepted": sum(sum(r["n"]) for r in per)}


def reference_acceptance(target_dir, dense_dir, cent_dir, sets, Ks, max_new, extra_bf16_K, smoke, log):
    """Reference-loop runs. Returns (summary, golden per variant)."""
    import torch
    summary, golden = {}, {"dense": [], "centroid": []}
    plain = {}
    for dtn in ("fp32", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = False
        tgt = None
        for variant, d in (("dense", dense_dir), ("centroid", cent_dir)):
            pair = R.Pair(target_dir, d, dtn, target_model=tgt)
            tgt = pair.tgt
            if dtn == "fp32" and variant == "dense":
                for name, ps in sets.items():
                    plain[name] = R.plain_generate(pair, [p["ids"] for p in ps], max_new)
            runs = []
            if dtn == "fp32":
                runs += [("greedy", K, 1, "post", 0.0) for K in Ks]
                runs += [("diag_offset0", 4, 0, "post", 0.0)]
                if variant == "dense":
                    runs += [("diag_prenorm_seed", 4, 1, "pre", 0.0), ("sampled_T1", 4, 1, "post", 1.0)]
            else:
                runs += [("greedy", K, 1, "post", 0.0) for K in extra_bf16_K]
            for tag, K, off, seed_mode, temp in runs:
                for name, ps in sets.items():
                    t0 = time.time()
                    rows = R.spec_generate(pair, [p["ids"] for p in ps], K, off, temp, seed_mode, max_new, seed=1234)
                    st = R.acceptance_stats(rows, K)
                    st["seconds"] = round(time.time() - t0, 1)
                    if tag == "greedy" and dtn == "fp32":
                        st["identical_to_plain"] = sum(int(r["emitted"] == q) for r, q in zip(rows, plain[name]))
                    key = f"{variant}/{dtn}/{tag}/K{K}/off{off:+d}/{name}"
                    summary[key] = st
                    log(f"ref {key}: AL {st['AL']:.3f} alpha {st['alpha']} ({st['seconds']}s)")
                    entry = {"run": key, "variant": variant, "dtype": dtn, "mode": tag, "K": K, "offset": off,
                             "seed": seed_mode, "temperature": temp, "prompt_set": name,
                             "stats": {k: v for k, v in st.items() if k != "seconds"}}
                    if tag == "greedy" and dtn == "fp32":
                        entry["per_prompt_n"] = [r["n"] for r in rows]
                    golden[variant].append(entry)
            del pair
    return summary, golden, plain


def write_golden(dir_, variant, golden, sets, plain, max_new, other_summary):
    obj = {
        "description": "Clean reference MTP loop (scripts/tiny/mtp_reference.py): target recomputed without cache, "
                       "assistant sees committed KV only (full [0,L-1], sliding [L-128,L-1]), query position "
                       "L-1+offset. Greedy fp32 per-round accept counts n must be reproduced exactly by the engine's "
                       "CPU backend; bf16 within ~2% AL. AL = tokens emitted after the prefill token / rounds.",
        "target": "models/tiny-gemma4", "assistant": os.path.basename(dir_.rstrip("/")), "variant": variant,
        "convention": TM.MTP_CONVENTION, "max_new_tokens": max_new, "stop_ids": list(C.STOP_IDS),
        "prompt_sets": {k: [{"id": p["id"], "raw_kind": p["raw_kind"], "ids": p["ids"]} for p in v]
                        for k, v in sets.items()},
        "plain_greedy_fp32": {k: v for k, v in plain.items()},
        "runs": golden[variant],
        "summary_all_variants": other_summary,
    }
    C.dump_json(os.path.join(dir_, "acceptance_golden.json"), obj, indent=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--assistants", required=True, help="dense_dir,centroid_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--corpus", required=True, help="for held-out prompts")
    ap.add_argument("--ckpt", default="", help="pre-reparameterisation fp32 target checkpoint (optional)")
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out-dir", required=True, help="where samples.txt goes")
    ap.add_argument("--report", required=True)
    ap.add_argument("--n-chat", type=int, default=100)
    ap.add_argument("--n-think", type=int, default=30)
    ap.add_argument("--n-text", type=int, default=100)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--K", default="1,2,3,4,6")
    ap.add_argument("--bf16-K", default="3,4")
    ap.add_argument("--hf-prompts", type=int, default=32)
    ap.add_argument("--hf-K", default="3")
    ap.add_argument("--ppl-rows", type=int, default=512)
    ap.add_argument("--no-gate", action="store_true")
    a = ap.parse_args()
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    dense_dir, cent_dir = a.assistants.split(",")
    tok = Tokenizer.from_file(os.path.join(a.target, "tokenizer.json"))
    res = {}
    res["loading"] = check_loading(a.target, dense_dir, cent_dir)
    res["safetensors"] = check_safetensors_dtypes([a.target, dense_dir, cent_dir])
    C.log("verify: loading", json.dumps(res["loading"])[:1500], "sizes", json.dumps(res["safetensors"]))
    res["perplexity"] = perplexity_by_source(a.target, a.data, a.ckpt, a.ppl_rows)
    C.log("verify: perplexity", json.dumps(res["perplexity"]))
    torch.backends.cuda.matmul.allow_tf32 = False
    pair = R.Pair(a.target, None, "fp32")
    res["samples"] = samples_and_probes(pair, tok, a.corpus, a.out_dir, a.fixtures)
    C.log("verify: samples/probes", json.dumps(res["samples"]))
    # HF assisted generation (fp32, batch 1), chat and text prompts mixed
    sets = R.load_prompt_sets(a.corpus, tok, a.n_chat, a.n_think, a.n_text)
    hf_ps = []
    kinds = [k for k in ("chat", "think", "text") if k in sets]
    i = 0
    while len(hf_ps) < a.hf_prompts and any(i < len(sets[k]) for k in kinds):
        for k in kinds:
            if i < len(sets[k]) and len(hf_ps) < a.hf_prompts:
                hf_ps.append(sets[k][i]["ids"])
        i += 1
    res["hf_assisted"] = {}
    tgt = pair.tgt
    plain_cache = {}
    for variant, d in (("dense", dense_dir), ("centroid", cent_dir)):
        asst = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).cuda().eval()
        for K in [int(k) for k in a.hf_K.split(",")]:
            t1 = time.time()
            with TM.fp32_exact():
                r = hf_assisted_acceptance(tgt, asst, hf_ps, K, a.max_new, plain_cache)
            r["seconds"] = round(time.time() - t1, 1)
            res["hf_assisted"][f"{variant}/K{K}"] = r
            C.log(f"verify: HF assisted {variant} K={K}: AL_hf {r['AL_hf']:.3f}, identical {r['identical_to_plain']}/"
                  f"{r['prompts']} ({r['seconds']}s)")
        del asst
    del pair, tgt
    torch.cuda.empty_cache()
    Ks = [int(k) for k in a.K.split(",")]
    bK = [int(k) for k in a.bf16_K.split(",") if k]
    summary, golden, plain = reference_acceptance(a.target, dense_dir, cent_dir, sets, Ks, a.max_new, bK, False, C.log)
    res["reference"] = summary
    write_golden(dense_dir, "dense", golden, sets, plain, a.max_new, summary)
    write_golden(cent_dir, "centroid", golden, sets, plain, a.max_new, summary)
    res["golden_bytes"] = {d: os.path.getsize(os.path.join(d, "acceptance_golden.json")) for d in (dense_dir, cent_dir)}
    res["safetensors_after_golden"] = check_safetensors_dtypes([a.target, dense_dir, cent_dir])
    # ---- gate
    rep = C.load_json(a.report, {}) or {}
    gates = {}
    gates["tokenizer"] = bool((rep.get("tokenizer_verify") or {}).get("pass", False))
    gates["loading"] = all(v["pass"] for v in res["loading"].values())
    gates["sizes_le_40MB"] = bool(res["safetensors_after_golden"]["pass"])
    pp = res["perplexity"]
    gates["bf16_fp32_ppl_within_1pct"] = abs(pp["bf16_fp32_ppl_rel"]) < 0.01
    if "export_fp32_vs_train_ppl_rel" in pp:
        gates["reparam_within_0.1pct"] = abs(pp["export_fp32_vs_train_ppl_rel"]) < 0.001
    gates["heldout_ppl_lt_60"] = pp["fp32"]["ppl"] < 60
    if pp.get("unigram_ppl"):
        gates["ppl_far_below_unigram"] = pp["fp32"]["ppl"] < 0.25 * pp["unigram_ppl"]
    ta = rep.get("train_assistant") or {}
    gates["parity_selftest"] = bool((ta.get("parity_init") or {}).get("pass")) and bool((ta.get("parity_trained") or {}).get("pass"))
    rec = ((ta.get("centroid_eval_heldout") or {}).get("recall_dense_argmax") or [0])
    gates["centroid_recall8_ge_95pct"] = bool(rec and rec[0] >= 0.95)
    gates["hf_assisted_lossless_fp32"] = all(r["identical_to_plain"] == r["prompts"] for r in res["hf_assisted"].values())
    ident = [(v["identical_to_plain"], v["prompts"]) for k, v in summary.items() if "/fp32/greedy/" in k]
    n_id, n_all = sum(x for x, _ in ident), sum(y for _, y in ident)
    gates["reference_lossless_fp32"] = n_id >= n_all - max(1, n_all // 100)
    gates["ref_AL_K4_chat_ge_2"] = summary.get("dense/fp32/greedy/K4/off+1/chat", {}).get("AL", 0) >= 2.0
    gates["ref_AL_K3_chat_ge_2"] = summary.get("dense/fp32/greedy/K3/off+1/chat", {}).get("AL", 0) >= 2.0
    res["headline"] = {
        "heldout_ppl_fp32": pp["fp32"]["ppl"], "unigram_ppl": pp.get("unigram_ppl"),
        "AL_ref_K3": {k.split("/")[-1] + "/" + k.split("/")[0]: round(v["AL"], 3) for k, v in summary.items()
                      if "/fp32/greedy/K3/off+1/" in k},
        "AL_ref_K4": {k.split("/")[-1] + "/" + k.split("/")[0]: round(v["AL"], 3) for k, v in summary.items()
                      if "/fp32/greedy/K4/off+1/" in k},
        "AL_hf": {k: round(v["AL_hf"], 3) for k, v in res["hf_assisted"].items()},
    }
    res["gates"] = gates
    res["pass"] = all(gates.values())
    res["seconds"] = round(time.time() - t0, 1)
    C.update_report(a.report, "verify", res)
    C.log("verify: headline", json.dumps(res["headline"]))
    C.log("verify: gates", json.dumps(gates), "PASS" if res["pass"] else "FAIL")
    if not res["pass"] and not a.no_gate:
        sys.exit(1)


if __name__ == "__main__":
    main()
