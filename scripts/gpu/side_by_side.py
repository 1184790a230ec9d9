#!/usr/bin/env python3
"""Standard-library helpers of scripts/gpu/side_by_side.sh (no torch needed).

  prompts  pick N prompts from an acceptance_golden.json prompt set (or JSON lines with "ids")
  client   drive a running `mtpserve serve` over HTTP, one request at a time (batch 1), greedy, and time each
  report   merge the HF and mtpserve results into side_by_side.md / side_by_side.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def die(msg):
    print(f"side_by_side.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {path}: {e}")


def dump_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- prompts
def cmd_prompts(a):
    if a.golden.endswith(".json"):
        g = load_json(a.golden)
        sets = g.get("prompt_sets") or {}
        if a.set not in sets:
            die(f"{a.golden}: no prompt set '{a.set}' (has: {', '.join(sets) or 'none'})")
        rows = [{"id": str(p.get("id", i)), "ids": [int(t) for t in p["ids"]]} for i, p in enumerate(sets[a.set])]
    else:
        rows = []
        with open(a.golden, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    p = json.loads(line)
                    rows.append({"id": str(p.get("id", i)), "ids": [int(t) for t in p["ids"]]})
    if not rows:
        die(f"{a.golden}: no prompts")
    if a.n > len(rows):
        print(f"side_by_side.py: note: {a.golden} ({a.set}) has only {len(rows)} prompts, using all", file=sys.stderr)
    rows = rows[: a.n]
    dump_json(a.out, {"source": a.golden, "set": a.set, "prompts": rows})
    print(f"{len(rows)} prompts ({a.set}) from {a.golden}, lengths {min(len(r['ids']) for r in rows)}.."
          f"{max(len(r['ids']) for r in rows)} -> {a.out}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------- client
def post(url, body, timeout):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        die(f"POST {url}: HTTP {e.code}: {e.read()[:2000].decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as e:
        die(f"POST {url}: {e}")


def cmd_client(a):
    prompts = load_json(a.prompts)["prompts"]
    url = a.base.rstrip("/") + "/v1/completions"

    def body(ids):
        b = {"prompt": ids, "max_tokens": a.max_new, "temperature": 0, "return_token_ids": True,
             "ignore_eos": a.stop == "none"}
        if a.k >= 0:  # -1: leave speculation to the server's defaults (a --no-spec server)
            b["mtp"] = {"enabled": a.k > 0, "max_draft": a.k}
        return b

    # warm-up (untimed): first requests pay for lazy allocations, cuBLAS handles, graph capture, ...
    t0 = time.perf_counter()
    for i in range(a.warmup):
        post(url, body(prompts[i % len(prompts)]["ids"]), a.timeout)
    warm_s = time.perf_counter() - t0
    rows = []
    for p in prompts:
        t = time.perf_counter()
        r = post(url, body(p["ids"]), a.timeout)
        dt = time.perf_counter() - t
        ch = r["choices"][0]
        u = r.get("usage", {})
        m = u.get("mtp", {}) or {}
        toks = ch.get("token_ids")
        if toks is None:
            die("the server did not return token_ids (return_token_ids unsupported?)")
        rows.append({"id": p["id"], "prompt_len": len(p["ids"]), "tokens": toks, "seconds": dt,
                     "finish_reason": ch.get("finish_reason"),
                     "drafted": int(m.get("drafted_tokens", 0)), "accepted": int(m.get("accepted_tokens", 0)),
                     "verify_steps": int(m.get("verify_steps", 0))})
    out = summarize(rows)
    out.update({"mode": a.name, "engine": "mtpserve", "k": max(a.k, 0), "warmup_requests": a.warmup,
                "warmup_s": warm_s, "transport": "HTTP /v1/completions, sequential (1 in flight), client wall time",
                "server": a.server_info or None})
    if a.group:
        out["group"] = a.group
    dump_json(a.out, out)
    al = f", AL {out['AL']:.3f}" if a.k > 0 and out.get("AL") else ""
    print(f"  {a.name}: {out['n_tokens']} tokens in {out['seconds']:.3f} s = {out['tok_s']:.1f} tok/s{al}",
          file=sys.stderr)


def summarize(rows):
    n_tok = sum(len(r["tokens"]) for r in rows)
    secs = sum(r["seconds"] for r in rows)
    out = {"prompts": len(rows), "n_tokens": n_tok, "seconds": secs, "tok_s": n_tok / secs if secs > 0 else 0.0,
           "ms_per_token": 1000 * secs / n_tok if n_tok else 0.0, "rows": rows}
    ver = sum(r.get("verify_steps", 0) for r in rows)
    if ver:
        acc = sum(r.get("accepted", 0) for r in rows)
        dr = sum(r.get("drafted", 0) for r in rows)
        out.update({"AL": (acc + ver) / ver, "accept_rate": acc / dr if dr else 0.0, "verify_steps": ver,
                    "drafted": dr, "accepted": acc})
    return out


# ----------------------------------------------------------------------------------------------------- report
def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(rows, ref_rows):
    """identical prompts, mean common-prefix length (tokens) of rows vs ref_rows (matched by prompt id)."""
    ref = {r["id"]: r["tokens"] for r in ref_rows}
    same, pref, n = 0, 0, 0
    for r in rows:
        if r["id"] not in ref:
            continue
        n += 1
        same += int(r["tokens"] == ref[r["id"]])
        pref += common_prefix(r["tokens"], ref[r["id"]])
    return {"identical": same, "compared": n, "mean_common_prefix": pref / n if n else 0.0}


def fmt_ratio(x, y):
    return f"{x / y:.2f}x" if x and y else "–"


def table(title, modes, notes, lines):
    """modes: ordered list of result dicts (each with mode, engine, k, tok_s, ...)."""
    hf_plain = next((m for m in modes if m["mode"] == "hf_plain" and "error" not in m), None)
    hf_asst = {m["k"]: m for m in modes if m["mode"].startswith("hf_assisted") and "error" not in m}
    first_asst = hf_asst[min(hf_asst)] if hf_asst else None
    lines.append(f"### {title}\n")
    if notes:
        lines.extend(notes + [""])
    lines.append("| mode | tokens/s | ms/token | AL | accept | vs HF plain | vs HF assisted | = HF plain | prompts x mean new tokens |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for m in modes:
        if "error" in m:
            lines.append(f"| {m['label']} | failed: {m['error'][:120]} | | | | | | | |")
            continue
        asst = hf_asst.get(m.get("k")) or first_asst
        spec = bool(m.get("k")) and m.get("AL")
        al = f"{m['AL']:.2f}" if spec else "–"
        acc = f"{m['accept_rate']:.3f}" if spec else "–"
        eq = "–"
        if hf_plain is not None and m is not hf_plain:
            c = compare(m["rows"], hf_plain["rows"])
            m["vs_hf_plain_tokens"] = c
            eq = f"{c['identical']}/{c['compared']}"
        vs_asst = fmt_ratio(m["tok_s"], asst["tok_s"]) if asst else "–"
        if asst is not None and m is not asst and asst["k"] != m.get("k") and m.get("k"):
            vs_asst += f" (K={asst['k']})"
        lines.append(f"| {m['label']} | {m['tok_s']:.1f} | {m['ms_per_token']:.2f} | {al} | {acc} | "
                     f"{fmt_ratio(m['tok_s'], hf_plain['tok_s']) if hf_plain else '–'} | {vs_asst} | {eq} | "
                     f"{m['prompts']} x {m['n_tokens'] // max(1, m['prompts'])} |")
    lines.append("")
    # losslessness within each engine
    extra = []
    mtp_plain = next((m for m in modes if m["mode"] == "mtpserve_plain" and "error" not in m), None)
    for m in modes:
        if "error" in m or not m.get("k"):
            continue
        ref = hf_plain if m["engine"] == "hf" else mtp_plain
        if ref is not None:
            c = compare(m["rows"], ref["rows"])
            extra.append(f"{m['label']} = {ref['label']}: {c['identical']}/{c['compared']} prompts identical "
                         f"(mean common prefix {c['mean_common_prefix']:.1f} tokens); speed-up over it "
                         f"{fmt_ratio(m['tok_s'], ref['tok_s'])}")
    if hf_plain is not None and mtp_plain is not None:
        c = compare(mtp_plain["rows"], hf_plain["rows"])
        extra.append(f"mtpserve plain = HF plain: {c['identical']}/{c['compared']} prompts identical (mean common "
                     f"prefix {c['mean_common_prefix']:.1f} tokens; bf16 near-ties can flip a token and everything "
                     "after it)")
    extra += [f"{m['label']}: {m['note']}" for m in modes if m.get("note")]
    for e in extra:
        lines.append(f"- {e}")
    if extra:
        lines.append("")


def label(m):
    if m["engine"] == "hf":
        if m["mode"] == "hf_plain":
            return "HF generate (dynamic cache)"
        if m["mode"] == "hf_static":
            c = m.get("compiled")
            return f"HF generate (static cache{', torch.compile' if c else ', no compile' if c is False else ''})"
        return f"HF generate + assistant_model, K={m['k']}"
    return "mtpserve (no speculation)" if not m.get("k") else f"mtpserve MTP, K={m['k']}"


def cmd_report(a):
    hfs = [load_json(p) for p in a.hf if os.path.exists(p)]
    mtp = [load_json(p) for p in a.mtp if os.path.exists(p)]
    if not hfs and not mtp:
        die("nothing to report (no HF or mtpserve results)")
    lines = []
    meta = {}
    if hfs:
        meta = {k: hfs[0].get(k) for k in ("device", "torch", "transformers", "dtype", "attn", "max_new", "stop")}
    srv = next((m.get("server") for m in mtp if m.get("server")), None) or {}
    modes = []
    for hf in hfs:
        for m in hf.get("modes", []):
            m.setdefault("engine", "hf")
            modes.append(m)
    modes.extend(mtp)
    order = {"hf_plain": 0, "hf_static": 1, "hf_assisted": 2, "mtpserve_plain": 3, "mtpserve_mtp": 4}
    modes.sort(key=lambda m: (order.get(m["mode"].rsplit("_k", 1)[0], 9), m.get("k") or 0))
    for m in modes:
        m["label"] = label(m)
    lines.append(f"## HF transformers vs mtpserve, side by side{(' — ' + a.title) if a.title else ''}\n")
    if any(not m.get("group") for m in modes):
        lines.append(f"- target `{a.target}`" + (f", assistant `{a.assistant}`" if a.assistant else ""))
    lines.append(f"- GPU: {meta.get('device') or srv.get('device') or '?'}; mtpserve backend: "
                 f"{srv.get('backend', '?')}; torch {meta.get('torch', '?')}, transformers {meta.get('transformers', '?')}")
    lines.append(f"- batch 1 (one request at a time), greedy, bf16, {a.max_new} new tokens per prompt, "
                 + ("EOS ignored (every prompt generates exactly that many)" if a.stop == "none"
                    else "stop at EOS / <turn|>"))
    lines.append("- tokens/s = generated tokens / wall time summed over prompts, prefill included (HF: "
                 "`torch.cuda.synchronize()` around `generate`; mtpserve: client wall time of each HTTP request); "
                 "one untimed warm-up per mode first")
    lines.append("- AL = tokens committed per target verify step (bonus token included; the prefill token excluded); "
                 "HF's comes from counting target / assistant forward calls (HF reports no counters), mtpserve's from "
                 "`usage.mtp`")
    lines.append("")
    groups = [("default", [m for m in modes if not m.get("group")])]
    groups.append(("e2b", [m for m in modes if m.get("group") == "e2b"]))
    for g, ms in groups:
        if not ms:
            continue
        if g == "default":
            table(f"{os.path.basename(a.target.rstrip('/'))} + {os.path.basename((a.assistant or '').rstrip('/'))}",
                  ms, [], lines)
        else:
            rnd = next((h.get("random") for h in hfs if h.get("random")), None) or {}
            where = next((h.get("target") for h in hfs if h.get("random")), "?")
            table("Gemma 4 E2B shape, random weights (HF-initialised, saved by HF, loaded by both)", ms,
                  [f"Checkpoint `{where}`: {rnd.get('class', '?')} from `{rnd.get('from_config', '?')}`, "
                   f"{(rnd.get('params') or 0) / 1e9:.2f} B parameters, bf16.",
                   "Raw decode speed only: random weights give no meaningful draft acceptance, so no assistant runs "
                   "here; token equality is not expected either (random logits are full of near-ties)."], lines)
    md = "\n".join(lines).rstrip() + "\n"
    with open(a.md, "w", encoding="utf-8") as f:
        f.write(md)
    dump_json(a.json, {"meta": meta, "server": srv, "target": a.target, "assistant": a.assistant,
                       "max_new": a.max_new, "stop": a.stop, "modes": modes})
    print(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("--golden", required=True)
    p.add_argument("--set", default="chat")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    c = sub.add_parser("client")
    c.add_argument("--base", required=True)
    c.add_argument("--prompts", required=True)
    c.add_argument("--max-new", type=int, required=True)
    c.add_argument("--k", type=int, default=-1, help="max_draft per request; 0 = speculation off; -1 = omit")
    c.add_argument("--stop", choices=["none", "eos"], default="none")
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--timeout", type=float, default=600)
    c.add_argument("--name", required=True)
    c.add_argument("--server-info", type=json.loads, default=None)
    c.add_argument("--group", default="")
    c.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--hf", nargs="*", default=[])
    r.add_argument("--mtp", nargs="*", default=[])
    r.add_argument("--target", required=True)
    r.add_argument("--assistant", default="")
    r.add_argument("--max-new", type=int, required=True)
    r.add_argument("--stop", required=True)
    r.add_argument("--title", default="")
    r.add_argument("--md", required=True)
    r.add_argument("--json", required=True)
    a = ap.parse_args()
    {"prompts": cmd_prompts, "client": cmd_client, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
