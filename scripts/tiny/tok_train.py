#!/usr/bin/env python3
"""Stage B: train the 8,192-token Gemma-style BPE tokenizer and write tokenizer.json, tokenizer_config.json,
chat_template.jinja (training-tiny-models.md §3.3-§3.5).

Training uses a *segmenting* pre-tokenizer (merges never cross `▁`-run / digit / newline boundaries); the shipped file
uses the Gemma pipeline (no-op pre-tokenizer), which encodes identically (tok_verify.py checks it).
"""
from __future__ import annotations

import argparse
import json
import os
import string
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

SEG_REGEX = r"▁*[^▁\d\n]+|▁+|\d|\n+"

TOKENIZER_CONFIG = {
    "backend": "tokenizers", "tokenizer_class": "GemmaTokenizer",
    "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
    "sot_token": "<|turn>", "eot_token": "<turn|>", "soc_token": "<|channel>", "eoc_token": "<channel|>",
    "think_token": "<|think|>", "std_token": "<|tool>", "etd_token": "<tool|>", "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>", "str_token": "<|tool_response>", "etr_token": "<tool_response|>",
    "escape_token": "<|\"|>",
    "boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
    "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>",
    "extra_special_tokens": ["<|video|>"], "model_max_length": 8192, "padding_side": "left",
}


def control_tokens():
    return C.control_tokens()


def sample_docs(corpus, sample_mb, seed):
    """Deterministic ~sample_mb MB sample of the training split, every source in proportion (by hash)."""
    sizes = {}
    for d in C.iter_docs(corpus, "train"):
        sizes[d["source"]] = sizes.get(d["source"], 0) + len(d["text"].encode("utf-8"))
    total = sum(sizes.values())
    frac = min(1.0, sample_mb * 1e6 / max(1, total))
    C.log(f"tok_train: train text {total / 1e6:.1f} MB over {len(sizes)} sources; sampling fraction {frac:.3f}")
    ctl = C.control_regex()
    thr = int(frac * 1_000_000)
    taken = 0
    for d in C.iter_docs(corpus, "train"):
        if C.h(f"{seed}:{d['source']}:{d['id']}") % 1_000_000 >= thr:
            continue
        taken += len(d["text"].encode("utf-8"))
        # control tokens are matched as added tokens before BPE: never let BPE see them
        for piece in ctl.split(d["text"]):
            if piece:
                yield piece
    C.log(f"tok_train: sampled {taken / 1e6:.1f} MB")


def train_bpe(corpus, sample_mb, limit_alphabet, seed, n_trained=C.N_TRAINED):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SEG_REGEX), behavior="isolated")
    alphabet = [c if c != " " else "▁" for c in string.printable if c not in "\r\x0b\x0c"]
    trainer = trainers.BpeTrainer(vocab_size=n_trained, min_frequency=2, special_tokens=[],
                                  initial_alphabet=alphabet, limit_alphabet=limit_alphabet,
                                  max_token_length=24, show_progress=False)
    tok.train_from_iterator(sample_docs(corpus, sample_mb, seed), trainer=trainer)
    return tok


def trained_vocab_merges(tok):
    m = json.loads(tok.to_str())["model"]
    vocab = m["vocab"]
    merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
    toks = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return toks, merges


def assemble_tokenizer_json(trained_tokens, merges, controls=None, allow_short=False):
    controls = controls or C.control_tokens()
    ctl_by_id = dict(controls)
    byte = dict(C.byte_tokens())
    reserved = set(ctl_by_id.values()) | set(byte.values())
    bad = [t for t in trained_tokens if t in reserved]
    if bad:
        raise SystemExit(f"trained tokens collide with control/byte tokens: {bad[:10]}")
    if len(trained_tokens) > C.N_TRAINED:
        raise SystemExit(f"{len(trained_tokens)} trained tokens > {C.N_TRAINED}")
    fill = []
    if len(trained_tokens) < C.N_TRAINED:
        if not allow_short:
            raise SystemExit(f"only {len(trained_tokens)} trained tokens (< {C.N_TRAINED}); corpus too small?")
        fill = [f"<tinyfill{i}>" for i in range(C.N_TRAINED - len(trained_tokens))]
        C.log(f"WARNING: padding vocab with {len(fill)} never-produced filler tokens (smoke corpus too small)")
    vocab = {}
    for i in range(C.VOCAB_SIZE):
        if i in ctl_by_id:
            vocab[ctl_by_id[i]] = i
        elif i in byte:
            vocab[byte[i]] = i
    for j, t in enumerate(list(trained_tokens) + fill):
        vocab[t] = C.FIRST_TRAINED + j
    assert len(vocab) == C.VOCAB_SIZE, len(vocab)
    assert sorted(vocab.values()) == list(range(C.VOCAB_SIZE))
    for a, b in merges:
        assert a in vocab and b in vocab and (a + b) in vocab, (a, b)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in controls]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


def write_tokenizer_files(out_dir, tj):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    C.dump_json(os.path.join(out_dir, "tokenizer_config.json"), TOKENIZER_CONFIG, indent=2)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(C.CHAT_TEMPLATE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=40)
    ap.add_argument("--limit-alphabet", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--allow-short", action="store_true", help="smoke: pad a short vocab with filler tokens")
    ap.add_argument("--report")
    a = ap.parse_args()
    assert a.vocab == C.VOCAB_SIZE, "the id layout is fixed at 8192"
    t0 = time.time()
    tok = train_bpe(a.corpus, a.sample_mb, a.limit_alphabet, a.seed)
    toks, merges = trained_vocab_merges(tok)
    C.log(f"tok_train: trained {len(toks)} tokens, {len(merges)} merges in {time.time() - t0:.1f}s")
    tj = assemble_tokenizer_json(toks, merges, allow_short=a.allow_short)
    write_tokenizer_files(a.out, tj)
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    assert t.get_vocab_size() == C.VOCAB_SIZE, t.get_vocab_size()
    probe = "<bos><|turn>user\nHello world 123<turn|>\n"
    ids = t.encode(probe).ids
    assert ids[:2] == [C.BOS, C.TURN_OPEN], ids[:8]
    sha = C.sha256_file(os.path.join(a.out, "tokenizer.json"))
    C.log(f"tok_train: wrote {a.out}/tokenizer.json sha256={sha}; probe ids {ids}")
    if a.report:
        C.update_report(a.report, "tokenizer_train", {
            "n_trained": len(toks), "n_merges": len(merges), "sample_mb": a.sample_mb, "sha256": sha,
            "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
