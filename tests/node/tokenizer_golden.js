// Golden references for the C++ tokenizer (tests/e2e/tokenizer_golden.sh), from the official HF `tokenizers`
// bindings.
//   node tokenizer_golden.js prepare GEMMA3_TOKENIZER_JSON WORKDIR
//       writes WORKDIR/gemma4/tokenizer.json (Gemma 3 with Gemma 4's control-token names and no BOS in the
//       post-processor), WORKDIR/corpus.jsonl (deterministic test strings, one JSON string per line) and
//       WORKDIR/{gemma3,gemma4}/ref.jsonl (HF ids with and without special tokens, HF decode).
//   node tokenizer_golden.js compare WORKDIR
//       compares WORKDIR/{gemma3,gemma4}/ours.jsonl (from `mtpserve tokenize`) with ref.jsonl.
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("tokenizers");

// Gemma 4 reuses the Gemma 3 vocabulary with renamed control tokens (offline-resources.md §3).
const GEMMA4_RENAMES = {
  46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>", 50: "<|tool_response>",
  51: "<tool_response|>", 52: '<|"|>', 98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>",
  106: "<turn|>", 255999: "<|image>", 256000: "<|audio>", 258882: "<image|>", 258883: "<audio|>",
  258880: "<|image|>", 258881: "<|audio|>", 258884: "<|video|>",
};

function makeGemma4(gemma3Path, outDir) {
  const t = JSON.parse(fs.readFileSync(gemma3Path, "utf8"));
  const byId = new Map(t.added_tokens.map((a) => [a.id, a]));
  for (const [idText, name] of Object.entries(GEMMA4_RENAMES)) {
    const id = Number(idText);
    const added = byId.get(id);
    if (!added) throw new Error(`id ${id} is not an added token in ${gemma3Path}`);
    if (t.model.vocab[added.content] !== id) throw new Error(`vocab entry for ${added.content} is not ${id}`);
    delete t.model.vocab[added.content];
    t.model.vocab[name] = id;
    added.content = name;
    added.special = true;
  }
  // Gemma 4: tokenizer(text) adds no BOS; the chat template writes it (training-tiny-models.md §3.1).
  t.post_processor = {
    type: "TemplateProcessing",
    single: [{ Sequence: { id: "A", type_id: 0 } }],
    pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
    special_tokens: {},
  };
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, "tokenizer.json"), JSON.stringify(t));
  const config = {
    tokenizer_class: "GemmaTokenizer", bos_token: "<bos>", eos_token: "<eos>", pad_token: "<pad>",
    unk_token: "<unk>", sot_token: "<|turn>", eot_token: "<turn|>", soc_token: "<|channel>",
    eoc_token: "<channel|>", think_token: "<|think|>", std_token: "<|tool>", etd_token: "<tool|>",
    stc_token: "<|tool_call>", etc_token: "<tool_call|>", str_token: "<|tool_response>",
    etr_token: "<tool_response|>", escape_token: '<|"|>', boi_token: "<|image>", eoi_token: "<image|>",
    image_token: "<|image|>", boa_token: "<|audio>", eoa_token: "<audio|>", audio_token: "<|audio|>",
    padding_side: "left",
  };
  fs.writeFileSync(path.join(outDir, "tokenizer_config.json"), JSON.stringify(config, null, 1));
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic corpus

function rng(seed) {  // mulberry32
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const PROSE = [
  "The quick brown fox jumps over the lazy dog.",
  "Hello, my dog is cute.",
  "It was the best of times, it was the worst of times, it was the age of wisdom.",
  "In 1492, Columbus sailed the ocean blue; in 1969, Apollo 11 landed on the Moon.",
  "Don't stop believing! Isn't it ironic? We'll see... maybe.",
  "She said, \"Let's meet at 3:45 p.m. on Tuesday\" - and then left.",
  "Transformers process tokens in parallel, using self-attention over the whole context window.",
  "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic.",
  "e-mail: john.doe@example.com, URL: https://www.example.org/path?query=1&x=y#frag",
  "Café, naïve, résumé, coöperate, Zürich, São Paulo, Kraków, Ærøskøbing.",
  "Speculative decoding drafts several tokens cheaply and verifies them with one target pass.",
  "UPPER CASE WORDS, lower case words, MiXeD cAsE wOrDs, and CamelCaseIdentifiers.",
];
const CODE = [
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v[0] == 1 ? 0 : 1;\n}\n",
  '{"name": "mtpserve", "version": "0.1.0", "tags": ["llm", "gemma"], "ok": true, "n": null}',
  "<html><body><div class=\"x\">Hi &amp; bye</div></body></html>",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
  "for (let i = 0; i < arr.length; i++) { sum += arr[i] ** 2; } // comment",
  "fn main() -> Result<(), Box<dyn Error>> {\n    println!(\"{:?}\", x);\n    Ok(())\n}",
  "x = [i**2 for i in range(10) if i % 2 == 0]\r\nprint(f\"{x!r:>20}\")",
  "    indented with four spaces\n        and eight\n\t\ttabs too\n",
  "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
];
const SCRIPTS = [
  "你好，世界！今天天气很好。我们去公园散步吧。",
  "日本語のテキストです。ひらがな、カタカナ、漢字を含みます。",
  "한국어 텍스트입니다. 안녕하세요!",
  "مرحبا بالعالم. هذه جملة باللغة العربية.",
  "नमस्ते दुनिया। यह हिंदी में एक वाक्य है।",
  "Привет, мир! Это предложение на русском языке.",
  "Γειά σου Κόσμε! Αυτή είναι μια πρόταση.",
  "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
  "שלום עולם! זה משפט בעברית.",
  "Xin chào thế giới! Đây là một câu tiếng Việt.",
  "ᚠᛇᚻ᛫ᛒᛦᚦ ሰላም ዓለም ⠓⠑⠇⠇⠕ 𐌰𐌱𐌲 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
];
const EMOJI = [
  "👨‍👩‍👧‍👦", "🏳️‍🌈", "👋🏽", "🇯🇵🇺🇸🇩🇪", "❤️‍🔥", "🧑🏿‍💻", "😀😃😄😁", "👩‍❤️‍💋‍👨", "🫠🫡🫶", "⭐️✨🌟",
  "1️⃣#️⃣*️⃣", "🐈‍⬛", "🤷🏻‍♀️",
];
const SPECIAL_TEXT = [
  "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>",
  "<start_of_image>", "<end_of_image>", "<unused0>", "<unused40>", "<unused6241>", "<|turn>", "<turn|>",
  "<|turn>user\n", "<|turn>model\n", "<|channel>thought\n<channel|>", "<|think|>", '<|"|>', "<|tool>",
  "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|image>", "<image|>",
  "<|image|>", "<|audio|>", "<|video|>", "<0x41>", "<0xE4>", "<|tur", "<<bos>>", "<bos", "bos>", "< bos >",
];
const WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2581", "\u200b",
  "\ufeff", "\u2028", "                                ", "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n"];

function randomCodePoint(r) {
  const ranges = [[0x20, 0x7e], [0x00, 0x1f], [0xa0, 0x24f], [0x370, 0x52f], [0x590, 0x6ff], [0x900, 0x97f],
    [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x2bff], [0x3000, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3],
    [0xe000, 0xf8ff], [0xfe00, 0xffff], [0x10000, 0x1ffff], [0x1f300, 0x1faff], [0x20000, 0x2fa1f],
    [0xe0000, 0x10ffff]];
  const [lo, hi] = ranges[Math.floor(r() * ranges.length)];
  return lo + Math.floor(r() * (hi - lo + 1));
}

function makeCorpus() {
  const r = rng(20240614);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const out = [""];
  for (const list of [PROSE, CODE, SCRIPTS, EMOJI, SPECIAL_TEXT, WS]) out.push(...list);
  for (const s of SPECIAL_TEXT) out.push(`Hi ${s} there`, `${s}${s}`, ` ${s} `, `x${s}y`, `\n${s}\n`);
  out.push("<bos><|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>");
  out.push("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
  for (let c = 0; c < 0x80; c++) out.push(String.fromCodePoint(c), `a${String.fromCodePoint(c)}b`);
  for (let n = 1; n <= 40; n++) out.push(" ".repeat(n) + "x", "\n".repeat(n), "\t".repeat(n) + "y", "x" + " ".repeat(n));
  const numbers = () => {
    const k = Math.floor(r() * 5);
    if (k === 0) return String(Math.floor(r() * 1e9));
    if (k === 1) return (r() * 1e4).toFixed(Math.floor(r() * 6));
    if (k === 2) return Math.floor(r() * 1e7).toLocaleString("en-US");
    if (k === 3) return `+1 (${Math.floor(r() * 900 + 100)}) 555-${Math.floor(r() * 9000 + 1000)}`;
    return `${Math.floor(r() * 31 + 1)}/${Math.floor(r() * 12 + 1)}/${Math.floor(r() * 200 + 1900)}`;
  };
  const randomText = (len) => {
    let s = "";
    for (let i = 0; i < len; i++) s += String.fromCodePoint(randomCodePoint(r));
    return s;
  };
  const generators = [
    () => pick(PROSE),
    () => pick(CODE),
    () => pick(SCRIPTS),
    () => pick(EMOJI),
    () => pick(SPECIAL_TEXT),
    () => pick(WS),
    numbers,
    () => randomText(1 + Math.floor(r() * 40)),
    () => String.fromCodePoint(Math.floor(r() * 0x20)) + pick(PROSE).slice(0, 10),
  ];
  while (out.length < 2300) {
    const parts = 1 + Math.floor(r() * 6);
    let s = "";
    for (let i = 0; i < parts; i++) s += pick(generators)() + (r() < 0.5 ? pick(WS) : "");
    out.push(s);
  }
  for (let i = 0; i < 100; i++) out.push(randomText(1 + Math.floor(r() * 200)));
  // A few long paragraphs: Gemma has no pre-tokenizer, so each is one BPE word.
  for (let i = 0; i < 8; i++) {
    let s = "";
    while (s.length < 4000 + i * 2000) s += pick(generators)() + " ";
    out.push(s);
  }
  return out;
}

function readJsonl(file) {
  return fs.readFileSync(file, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
}

async function prepare(gemma3Path, work) {
  makeGemma4(gemma3Path, path.join(work, "gemma4"));
  const corpus = makeCorpus();
  fs.writeFileSync(path.join(work, "corpus.jsonl"), corpus.map((s) => JSON.stringify(s)).join("\n") + "\n");
  const files = { gemma3: gemma3Path, gemma4: path.join(work, "gemma4", "tokenizer.json") };
  for (const [name, file] of Object.entries(files)) {
    const tok = Tokenizer.fromFile(file);
    const withSpecial = await tok.encodeBatch(corpus, { addSpecialTokens: true });
    const plain = await tok.encodeBatch(corpus, { addSpecialTokens: false });
    const plainIds = plain.map((e) => e.getIds());
    const decoded = await tok.decodeBatch(plainIds, false);
    const lines = corpus.map((_, i) =>
      JSON.stringify({ ids: withSpecial[i].getIds(), ids_nospecial: plainIds[i], decoded: decoded[i] }));
    fs.mkdirSync(path.join(work, name), { recursive: true });
    fs.writeFileSync(path.join(work, name, "ref.jsonl"), lines.join("\n") + "\n");
  }
  console.log(`tokenizer golden: corpus of ${corpus.length} strings`);
}

function compare(work) {
  const corpus = readJsonl(path.join(work, "corpus.jsonl"));
  let passed = 0, failed = 0, roundTrips = 0;
  const shown = [];
  for (const name of ["gemma3", "gemma4"]) {
    const ref = readJsonl(path.join(work, name, "ref.jsonl"));
    const ours = readJsonl(path.join(work, name, "ours.jsonl"));
    if (ours.length !== corpus.length) throw new Error(`${name}: ${ours.length} results for ${corpus.length} strings`);
    for (let i = 0; i < corpus.length; i++) {
      const problems = [];
      for (const key of ["ids", "ids_nospecial"]) {
        if (JSON.stringify(ours[i][key]) !== JSON.stringify(ref[i][key])) {
          problems.push(`${key}: ours ${JSON.stringify(ours[i][key]).slice(0, 300)} hf ${JSON.stringify(ref[i][key]).slice(0, 300)}`);
        }
      }
      // decode(encode(s)) must equal s wherever HF round-trips, and must equal HF's decode everywhere.
      if (ref[i].decoded === corpus[i]) roundTrips++;
      if (ours[i].decoded !== ref[i].decoded) {
        problems.push(`decoded: ours ${JSON.stringify(ours[i].decoded).slice(0, 200)} hf ${JSON.stringify(ref[i].decoded).slice(0, 200)}`);
      }
      if (problems.length === 0) {
        passed++;
      } else {
        failed++;
        if (shown.length < 10) shown.push(`[${name} #${i}] ${JSON.stringify(corpus[i]).slice(0, 200)}\n  ${problems.join("\n  ")}`);
      }
    }
  }
  for (const s of shown) console.log(s);
  console.log(`tokenizer golden: ${passed} passed, ${failed} failed (${roundTrips} HF round-trips)`);
  process.exit(failed === 0 ? 0 : 1);
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "prepare") {
  prepare(args[0], args[1]).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else if (mode === "compare") {
  compare(args[0]);
} else {
  console.error("usage: node tokenizer_golden.js prepare GEMMA3_JSON WORKDIR | compare WORKDIR");
  process.exit(2);
}
