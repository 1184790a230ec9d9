"""Shared helpers for the tiny Gemma 4 + MTP assistant pipeline (scripts/tiny/).

Pure python (stdlib only) so it can be imported by every stage and unit-checked anywhere.
Corpus layout accepted (``--corpus``): a directory holding ``*.jsonl`` / ``*.jsonl.xz`` / ``*.jsonl.gz`` files
(one per source, rows ``{id, source, split, text}``) and optionally ``heldout_prompts.jsonl[.xz]``; or a directory
holding ``corpus.tar.xz`` (same members); or the path of such a ``.tar.xz`` itself.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import sys
import tarfile
import time
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

VOCAB_SIZE = 8192
N_BYTE = 256
BYTE_BASE = 107
FIRST_TRAINED = BYTE_BASE + N_BYTE  # 363
MM_TOKENS = ["<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>", "<|video|>"]
MM_BASE = VOCAB_SIZE - len(MM_TOKENS)  # 8185
N_TRAINED = MM_BASE - FIRST_TRAINED  # 7822

PAD, EOS, BOS, UNK = 0, 1, 2, 3
TURN_OPEN, TURN_CLOSE, TOOL_RESPONSE = 105, 106, 50
STOP_IDS = (EOS, TURN_CLOSE, TOOL_RESPONSE)
W_SLIDING = 128


def control_tokens():
    """The §3.2 id layout: list of (id, string) for the 114 control tokens (ids 0..106 and 8185..8191)."""
    t = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 5: "[multimodal]"}
    for n in range(0, 40):
        t[6 + n] = f"<unused{n}>"
    for i, s in enumerate(["<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                           "<tool_response|>", '<|"|>']):
        t[46 + i] = s
    for n in range(47, 92):
        t[6 + n] = f"<unused{n}>"
    t[98] = "<|think|>"
    t[99] = "<unused93>"
    t[100] = "<|channel>"
    t[101] = "<channel|>"
    for n in range(96, 99):
        t[6 + n] = f"<unused{n}>"
    t[105] = "<|turn>"
    t[106] = "<turn|>"
    for i, s in enumerate(MM_TOKENS):
        t[MM_BASE + i] = s
    out = sorted(t.items())
    assert len(out) == 114, len(out)
    assert [i for i, _ in out[:107]] == list(range(107))
    return out


def byte_tokens():
    return [(BYTE_BASE + b, f"<0x{b:02X}>") for b in range(256)]


def control_regex():
    toks = sorted((s for _, s in control_tokens()), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in toks))


def h(x: str) -> int:
    return int(hashlib.sha1(x.encode("utf-8")).hexdigest()[:12], 16)


def sha256_file(path):
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            d.update(blk)
    return d.hexdigest()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def dump_json(path, obj, indent=1):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def load_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def update_report(path, section, obj):
    """Merge ``obj`` under ``section`` into the JSON report at ``path``."""
    rep = load_json(path, {}) or {}
    rep[section] = obj
    dump_json(path, rep)


# --------------------------------------------------------------------------------------------- corpus
_DOC_SUFFIXES = (".jsonl", ".jsonl.xz", ".jsonl.gz")


def _open_text(name, raw: io.BufferedIOBase):
    if name.endswith(".xz"):
        raw = lzma.open(raw)
    elif name.endswith(".gz"):
        raw = gzip.open(raw)
    return io.TextIOWrapper(raw, encoding="utf-8")


def _is_prompts(name):
    return os.path.basename(name).startswith("heldout_prompts")


def _iter_members(corpus):
    """Yield (member_name, text file object) for every jsonl-ish member of the corpus, in sorted order."""
    if os.path.isfile(corpus) and (corpus.endswith(".tar.xz") or corpus.endswith(".tar") or corpus.endswith(".tar.gz")):
        with tarfile.open(corpus, "r:*") as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
            for m in members:
                if m.name.endswith(_DOC_SUFFIXES):
                    yield m.name, _open_text(m.name, tf.extractfile(m))
        return
    if not os.path.isdir(corpus):
        raise FileNotFoundError(f"corpus not found: {corpus}")
    names = []
    for root, _dirs, files in os.walk(corpus):
        for fn in files:
            names.append(os.path.join(root, fn))
    names.sort()
    plain = [n for n in names if n.endswith(_DOC_SUFFIXES)]
    tars = [n for n in names if n.endswith((".tar.xz", ".tar.gz", ".tar"))]
    if plain:
        for n in plain:
            yield os.path.relpath(n, corpus), _open_text(n, open(n, "rb"))
    elif tars:
        for t in tars:
            yield from _iter_members(t)


def iter_rows(corpus, prompts=False):
    for name, f in _iter_members(corpus):
        if _is_prompts(name) != prompts:
            continue
        if os.path.basename(name).lower().startswith("manifest"):
            continue
        with f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    row.setdefault("_file", name)
                    yield row


def doc_split(row):
    s = row.get("split")
    if s in ("train", "heldout"):
        return s
    if s in ("test", "valid", "validation", "eval", "held_out", "held-out"):
        return "heldout"
    src = str(row.get("source", "")); rid = str(row.get("id", ""))
    return "heldout" if h(src + ":" + rid) % 100 == 0 else "train"


def doc_source(row):
    s = row.get("source")
    if s:
        return str(s)
    base = os.path.basename(row.get("_file", "unknown"))
    for suf in _DOC_SUFFIXES:
        if base.endswith(suf):
            return base[: -len(suf)]
    return base


def iter_docs(corpus, split=None):
    """Yield dicts {id, source, split, text} for corpus documents (optionally one split)."""
    for row in iter_rows(corpus):
        text = row.get("text")
        if not isinstance(text, str) or not text:
            continue
        sp = doc_split(row)
        if split is not None and sp != split:
            continue
        yield {"id": str(row.get("id", "")), "source": doc_source(row), "split": sp, "text": text}


def materialize(corpus, out_dir):
    """Decompress/unpack a corpus into plain jsonl files under out_dir (idempotent). Returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    stamp = os.path.join(out_dir, ".materialized")
    if os.path.exists(stamp):
        return out_dir
    n = 0
    for name, f in _iter_members(corpus):
        base = os.path.basename(name)
        for suf in (".xz", ".gz"):
            if base.endswith(suf):
                base = base[: -len(suf)]
        dst = os.path.join(out_dir, base)
        with f, open(dst + ".tmp", "w", encoding="utf-8") as g:
            for line in f:
                g.write(line)
        os.replace(dst + ".tmp", dst)
        n += 1
    if n == 0:
        raise SystemExit(f"no *.jsonl members found in corpus {corpus}")
    with open(stamp, "w") as g:
        g.write(str(n) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------- chat
def strip_thinking(text):
    out = ""
    for part in text.split("<channel|>"):
        out += part.split("<|channel>")[0]
    return out.strip()


def render_chat_local(messages, thinking=False, add_generation_prompt=True):
    """Python mirror of chat_template.jinja (training-tiny-models.md §3.5)."""
    out = "<bos>"
    msgs = list(messages)
    if thinking or (msgs and msgs[0]["role"] == "system"):
        out += "<|turn>system\n"
        if thinking:
            out += "<|think|>"
        if msgs and msgs[0]["role"] == "system":
            out += msgs[0]["content"].strip()
            msgs = msgs[1:]
        out += "<turn|>\n"
    for m in msgs:
        role = "model" if m["role"] == "assistant" else m["role"]
        out += "<|turn>" + role + "\n"
        out += strip_thinking(m["content"]) if role == "model" else m["content"].strip()
        out += "<turn|>\n"
    if add_generation_prompt:
        out += "<|turn>model\n"
        if not thinking:
            out += "<|channel>thought\n<channel|>"
    return out


def get_render_chat():
    """corpus_build.render_chat if importable, else the local mirror. Returns (fn, name)."""
    sys.path.insert(0, os.path.join(REPO, "scripts", "corpus"))
    try:
        import corpus_build  # type: ignore
        fn = getattr(corpus_build, "render_chat")

        def wrapped(messages, thinking=False, add_generation_prompt=True):
            try:
                return fn(messages, thinking, add_generation_prompt)
            except TypeError:
                return fn(messages, thinking=thinking, add_generation_prompt=add_generation_prompt)
        return wrapped, "corpus_build.render_chat"
    except Exception:  # noqa: BLE001 - any import problem -> local mirror
        return render_chat_local, "common.render_chat_local"
    finally:
        sys.path.pop(0)


CHAT_TEMPLATE = r"""{%- macro strip_thinking(text) -%}
  {%- set ns = namespace(out='') -%}
  {%- for part in text.split('<channel|>') -%}{%- set ns.out = ns.out + part.split('<|channel>')[0] -%}{%- endfor -%}
  {{- ns.out | trim -}}
{%- endmacro -%}
{{- bos_token -}}
{%- set thinking = enable_thinking | default(false) -%}
{%- set loop_messages = messages -%}
{%- if thinking or messages[0]['role'] == 'system' -%}
  {{- '<|turn>system\n' -}}
  {%- if thinking -%}{{- '<|think|>' -}}{%- endif -%}
  {%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] | trim -}}{%- set loop_messages = messages[1:] -%}{%- endif -%}
  {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{- '<|turn>' + role + '\n' -}}
  {%- if role == 'model' -%}{{- strip_thinking(message['content']) -}}{%- else -%}{{- message['content'] | trim -}}{%- endif -%}
  {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|turn>model\n' -}}
  {%- if not thinking -%}{{- '<|channel>thought\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""


# --------------------------------------------------------------------------------------------- prompts
def norm_kind(kind, text=""):
    k = (kind or "").lower()
    if "think" in k:
        return "think"
    if any(w in k for w in ("chat", "wordnet", "wn", "arith", "qa", "dialog")):
        return "chat"
    if "text" in k or "doc" in k or "cont" in k:
        return "text"
    if "<|think|>" in text:
        return "think"
    if "<|turn>" in text:
        return "chat"
    return "text"


def _prompt_text(row):
    for key in ("prompt", "prompt_text", "text", "rendered", "input"):
        v = row.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def load_prompt_rows(corpus, limit_per_kind=None):
    """Held-out prompts: rows {text, kind (chat|think|text), raw_kind, id}. Falls back to held-out documents."""
    rows = []
    for r in iter_rows(corpus, prompts=True):
        t = _prompt_text(r)
        if t is None:
            continue
        raw = str(r.get("kind") or r.get("type") or r.get("source") or "")
        rows.append({"text": t, "kind": norm_kind(raw, t), "raw_kind": raw or norm_kind(raw, t),
                     "id": str(r.get("id", len(rows)))})
    if not rows:
        for d in iter_docs(corpus, "heldout"):
            t = d["text"]
            if "<|turn>model\n" in t:
                cut = t.rfind("<|turn>model\n") + len("<|turn>model\n")
                think = "<|think|>" in t
                p = t[:cut] + ("" if think else "<|channel>thought\n<channel|>")
                rows.append({"text": p, "kind": "think" if think else "chat", "raw_kind": d["source"],
                             "id": d["id"]})
            else:
                rows.append({"text": t[:2000], "kind": "text", "raw_kind": d["source"], "id": d["id"]})
    rows.sort(key=lambda r: (r["kind"], h(r["id"] + r["text"][:64])))
    if limit_per_kind:
        out, cnt = [], {}
        for r in rows:
            c = cnt.get(r["kind"], 0)
            if c < limit_per_kind.get(r["kind"], 10 ** 9):
                out.append(r)
                cnt[r["kind"]] = c + 1
        rows = out
    return rows


def encode_prompt(tok, text, kind, text_tokens=48, max_tokens=384):
    """Token ids of a prompt, with exactly one leading <bos>. ``tok`` is a tokenizers.Tokenizer."""
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids or ids[0] != BOS:
        ids = [BOS] + ids
    if kind == "text":
        ids = ids[: 1 + text_tokens]
    return ids[:max_tokens]


def nfc(s):
    return unicodedata.normalize("NFC", s)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["materialize", "stats"])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.cmd == "materialize":
        t0 = time.time()
        materialize(a.corpus, a.out)
        log(f"materialized {a.corpus} -> {a.out} in {time.time() - t0:.1f}s")
    else:
        st = {}
        for d in iter_docs(a.corpus):
            k = (d["source"], d["split"])
            n, b = st.get(k, (0, 0))
            st[k] = (n + 1, b + len(d["text"].encode()))
        for k, v in sorted(st.items()):
            print(k, v)
