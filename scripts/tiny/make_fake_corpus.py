#!/usr/bin/env python3
"""Synthetic stand-in corpus for --smoke runs (same layout as scripts/corpus/corpus_build.py's output):
per-source JSONL (one of them .jsonl.xz) with {id, source, split, text}, plus heldout_prompts.jsonl."""
from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her their one all we can has there been if more when will would who so no time river house "
         "water light night people world hand day man thing year way life mind state power land war law city voice "
         "word music garden stone paper window ocean storm small bright quiet ancient simple strong free open "
         "define answer question number letter color seven north winter").split()
DEFS = [("river", "noun", "a large natural stream of water"), ("quiet", "adjective", "making little or no noise"),
        ("garden", "noun", "a plot of ground where plants are grown"), ("bright", "adjective", "full of light"),
        ("storm", "noun", "a violent weather condition"), ("define", "verb", "to state the meaning of a word"),
        ("ancient", "adjective", "belonging to the very distant past"), ("letter", "noun", "a written message")]


def sentence(rng):
    w = [rng.choice(WORDS) for _ in range(rng.randint(5, 18))]
    s = " ".join(w).capitalize()
    if rng.random() < 0.2:
        s += f" {rng.randint(1, 2030)}"
    return s + rng.choice([".", ".", ".", "?", "!"])


def doc(rng, n_par):
    return "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(n_par))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    prose, chat, prompts = [], [], []
    size = 0
    i = 0
    while size < a.mb * 0.6e6:
        t = doc(rng, rng.randint(2, 8))
        split = "heldout" if i % 10 == 0 else "train"
        prose.append({"id": f"p{i}", "source": "fakeprose", "split": split, "text": t})
        if split == "heldout" and sum(1 for p in prompts if p["kind"] == "text") < 40:
            prompts.append({"id": f"p{i}", "kind": "text", "prompt": t[:300]})
        size += len(t)
        i += 1
    j = 0
    while size < a.mb * 1e6:
        think = rng.random() < 0.15
        if rng.random() < 0.5:
            w, pos, d = rng.choice(DEFS)
            q, ans, kind = f'What does "{w}" mean?', f'"{w}" ({pos}) means {d}.', "chat_wordnet"
            trace = ""
        else:
            x, y = rng.randint(0, 999), rng.randint(0, 999)
            q, ans, kind = f"What is {x} + {y}?", f"{x} + {y} = {x + y}.", "chat_arith"
            trace = f"{x}+{y}: add digit by digit. Result {x + y}."
        msgs = [{"role": "user", "content": q}]
        if rng.random() < 0.2:
            msgs.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        prompt = C.render_chat_local(msgs, think, True)
        text = prompt + (f"<|channel>thought\n{trace}<channel|>" if think else "") + ans + "<turn|>\n<eos>"
        split = "heldout" if j % 10 == 0 else "train"
        chat.append({"id": f"c{j}", "source": "fakechat", "split": split, "text": text})
        if split == "heldout":
            prompts.append({"id": f"c{j}", "kind": ("think_" if think else "") + kind, "prompt": prompt})
        size += len(text)
        j += 1
    with open(os.path.join(a.out, "fakeprose.jsonl"), "w") as f:
        for r in prose:
            f.write(json.dumps(r) + "\n")
    with lzma.open(os.path.join(a.out, "fakechat.jsonl.xz"), "wt") as f:
        for r in chat:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(a.out, "heldout_prompts.jsonl"), "w") as f:
        for r in prompts:
            f.write(json.dumps(r) + "\n")
    C.log(f"fake corpus: {len(prose)} prose + {len(chat)} chat docs, {len(prompts)} prompts, {size / 1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
