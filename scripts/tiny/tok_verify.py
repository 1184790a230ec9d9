#!/usr/bin/env python3
"""Stage B check: the shipped tokenizer (training-tiny-models.md §3.6).

- tokenizers.Tokenizer.from_file ids == AutoTokenizer.from_pretrained ids (no BOS added by either);
- the training-time segmenting tokenizer gives the same ids as the shipped one;
- decode(encode(x)) == NFC(x);
- apply_chat_template == the corpus renderer on ~1k generated conversations, with exactly one leading id 2;
- writes golden (text, ids) fixtures (JSONL) for the engine's tokenizer tests.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
from tok_train import SEG_REGEX  # noqa: E402


def adversarial_strings():
    s = []
    for n in range(1, 9):
        s += [" " * n, "a" + " " * n + "b", " " * n + "lead", "trail" + " " * n, "x" + " " * n + "1"]
    s += ["\t", "a\tb", "\t\tindent", "\n", "\n\n", "\n\n\n", "a\n\n\nb", " \n ", "line1\nline2\n", "  \n\n  x"]
    s += ["0", "7", "42", "1234567890", "3.14159", "1,000,000", "12:30", "2024-01-05", "-17", "+3e-9",
          "$19.99", "100%", "v1.2.3", "0x7fff", "What is 347 + 589?", "347 + 589 = 936."]
    s += ["😀", "👍🏽 ok", "日本語のテキスト", "中文测试", "한국어", "Ελληνικά", "русский текст", "עברית",
          "العربية", "café naïve résumé", "Straße", "ﬁ ligature", "e\u0301", "\u00e9", "emoji🙂mid",
          "Ça va? Très bien.", "¿Qué tal?", "Zürich", "Łódź", "Ærø", "ℕ ⊂ ℝ", "→ ← ↑ ↓", "“quotes” ‘single’",
          "em—dash – en", "…", "\u200b zero width", "tab\tand  spaces", "mixed 12ab34cd"]
    s += ["<eos>", "<bos>", "<pad>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", "<unused12>",
          "[multimodal]", "<|tool_response>", "<|image|>", "<|video|>", "<0x41>", "<unk>", "<mask>",
          "text <eos> more", "a<|turn>b", "<turn|><turn|>", "<bos><|turn>user\nHi<turn|>\n<|turn>model\n",
          "< eos>", "<eos", "eos>", "<|turn", "turn|>", "<<bos>>"]
    s += ["def f(x):\n    return x ** 2\n", "    four spaces", "if (a && b) { c(); }", "#include <stdio.h>",
          "http://example.com/path?q=1&r=2", "user@example.com", "C:\\Windows\\path", "snake_case_name",
          "CamelCaseName", "ALLCAPS WORDS", "a.b.c.d", "((()))", "[1, 2, 3]", '{"k": "v"}', "--flag=value"]
    return s


def sample_heldout_lines(corpus, n, seed):
    lines = []
    for d in C.iter_docs(corpus, "heldout"):
        for ln in d["text"].split("\n"):
            if ln.strip():
                lines.append(ln)
    rng = random.Random(seed)
    rng.shuffle(lines)
    return lines[:n]


def seg_tokenizer(tok_json_path):
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    t = Tokenizer.from_file(tok_json_path)
    t.pre_tokenizer = pre_tokenizers.Split(Regex(SEG_REGEX), behavior="isolated")
    return t


def check_hf_vs_raw(raw, hf, texts):
    bad = []
    for x in texts:
        a = raw.encode(x).ids
        b = hf(x)["input_ids"]
        if a != b:
            bad.append({"text": x[:200], "raw": a[:40], "hf": b[:40]})
    return bad


def check_seg_vs_whole(raw, seg, texts):
    bad = []
    for x in texts:
        a = raw.encode(x).ids
        b = seg.encode(x).ids
        if a != b:
            bad.append({"text": x[:200], "whole": a[:40], "seg": b[:40]})
    return bad


def check_roundtrip(raw, texts):
    bad, skipped = [], 0
    for x in texts:
        if "▁" in x:  # a literal U+2581 decodes to a space by design
            skipped += 1
            continue
        y = raw.decode(raw.encode(x).ids, skip_special_tokens=False)
        if C.nfc(y) != C.nfc(x):
            bad.append({"text": x[:200], "decoded": y[:200]})
    return bad, skipped


WORDS = ("apple river quiet define ocean seven letter small music garden idea house storm number color "
         "bright fast question answer light stone paper window").split()


def random_conversations(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        def sent(k=6):
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k))).capitalize() + rng.choice(
                ["?", ".", "!", ""])
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": sent(8) + (" " if rng.random() < 0.2 else "")})
        for _t in range(rng.choice([1, 1, 1, 2, 3])):
            msgs.append({"role": "user", "content": sent() + ("\n" if rng.random() < 0.1 else "")})
            a = sent(10)
            if rng.random() < 0.2:
                a = "<|channel>thought\n" + sent(5) + "<channel|>" + a
            msgs.append({"role": "assistant", "content": a})
        msgs = msgs[:-1]  # end on a user turn: render the generation prompt
        if rng.random() < 0.5:
            msgs.append({"role": "user", "content": f"What is {rng.randint(0, 999)} + {rng.randint(0, 999)}?"})
        out.append((msgs, rng.random() < 0.15))
    return out


def check_chat_template(hf, raw, n, seed):
    render, name = C.get_render_chat()
    res = {"renderer": name, "n": 0, "mismatch_renderer": 0, "mismatch_local": 0, "bad_bos": 0, "examples": []}
    try:
        import jinja2  # noqa: F401
    except ImportError:
        res["skipped"] = "jinja2 not installed"
        return res
    for msgs, thinking in random_conversations(n, seed):
        s_hf = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
        s_r = render(msgs, thinking, True)
        s_l = C.render_chat_local(msgs, thinking, True)
        res["n"] += 1
        if s_hf != s_r:
            res["mismatch_renderer"] += 1
            if len(res["examples"]) < 5:
                res["examples"].append({"hf": s_hf, "renderer": s_r})
        if s_hf != s_l:
            res["mismatch_local"] += 1
        ids = raw.encode(s_hf).ids
        if not ids or ids[0] != C.BOS or C.BOS in ids[1:]:
            res["bad_bos"] += 1
    return res


def write_golden_fixtures(raw, out_dir, texts):
    os.makedirs(out_dir, exist_ok=True)
    p = os.path.join(out_dir, "tokenizer_golden.jsonl")
    with open(p, "w", encoding="utf-8") as f:
        for x in texts:
            f.write(json.dumps({"text": x, "ids": raw.encode(x).ids}, ensure_ascii=False) + "\n")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--golden-out", required=True)
    ap.add_argument("--n-lines", type=int, default=20000)
    ap.add_argument("--n-chat", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--report")
    a = ap.parse_args()
    t0 = time.time()
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    path = os.path.join(a.tokenizer, "tokenizer.json")
    raw = Tokenizer.from_file(path)
    hf = AutoTokenizer.from_pretrained(a.tokenizer)
    seg = seg_tokenizer(path)
    C.log(f"tok_verify: HF class {type(hf).__name__}, vocab {len(hf)}")
    lines = sample_heldout_lines(a.corpus, a.n_lines, a.seed)
    adv = adversarial_strings()
    prompts = [r["text"] for r in C.load_prompt_rows(a.corpus)][:200]
    texts = adv + lines + prompts
    # whole documents too (long spans, chat docs with literal control tokens)
    docs = []
    for i, d in enumerate(C.iter_docs(a.corpus, "heldout")):
        if i % 7 == 0:
            docs.append(d["text"][:20000])
        if len(docs) >= 200:
            break
    texts_all = texts + docs
    bad_hf = check_hf_vs_raw(raw, hf, texts_all)
    bad_seg = check_seg_vs_whole(raw, seg, texts_all)
    bad_rt, rt_skipped = check_roundtrip(raw, texts_all)
    chat = check_chat_template(hf, raw, a.n_chat, a.seed)
    # named ids
    vocab = raw.get_vocab()
    named_ok = all(vocab.get(s) == i for i, s in C.control_tokens()) and vocab.get("<0x00>") == 107 \
        and vocab.get("<0xFF>") == 362
    golden = adv + lines[:150] + prompts[:60]
    gp = write_golden_fixtures(raw, a.golden_out, golden[:320])
    n_tok = sum(len(raw.encode(x).ids) for x in lines[:5000])
    n_bytes = sum(len(x.encode()) for x in lines[:5000])
    res = {
        "n_texts": len(texts_all), "hf_vs_raw_mismatch": len(bad_hf), "seg_vs_whole_mismatch": len(bad_seg),
        "roundtrip_mismatch": len(bad_rt), "roundtrip_skipped_u2581": rt_skipped, "chat_template": chat,
        "control_ids_ok": named_ok, "bytes_per_token_heldout_lines": round(n_bytes / max(1, n_tok), 3),
        "golden_file": gp, "n_golden": min(320, len(golden)), "hf_class": type(hf).__name__,
        "examples": {"hf": bad_hf[:3], "seg": bad_seg[:3], "roundtrip": bad_rt[:3]},
        "seconds": round(time.time() - t0, 1),
    }
    ok = (not bad_hf and not bad_seg and not bad_rt and named_ok
          and chat.get("mismatch_local", 0) == 0 and chat.get("bad_bos", 0) == 0)
    if chat.get("mismatch_renderer", 0):
        C.log(f"tok_verify: WARNING corpus renderer != chat template on {chat['mismatch_renderer']}/{chat['n']}")
    res["pass"] = ok
    C.log("tok_verify:", json.dumps({k: v for k, v in res.items() if k != "examples"}, ensure_ascii=False))
    if not ok:
        C.log("tok_verify: FAIL examples:", json.dumps(res["examples"], ensure_ascii=False)[:3000])
    if a.report:
        C.update_report(a.report, "tokenizer_verify", res)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
