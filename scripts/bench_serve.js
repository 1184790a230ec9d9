#!/usr/bin/env node
// Serving benchmark for `mtpserve serve` (or any OpenAI-compatible server): replays a seeded random workload
// (prompt and output lengths drawn uniformly) at a fixed concurrency over streaming /v1/completions, and reports
// TTFT, TPOT, ITL (p50/p99), throughput and MTP acceptance (from the usage extension).
// Node 20+, no dependencies (fetch + a small SSE reader).
//
//   node scripts/bench_serve.js --base http://127.0.0.1:8000 --num-requests 64 --concurrency 8 \
//        --prompt-len 16:256 --output-len 16:128 --seed 0 [--no-mtp] [--temperature 0] [--json out.json]
'use strict';

function parseArgs(argv) {
  const o = { base: 'http://127.0.0.1:8000', numRequests: 64, concurrency: 8, promptLen: [16, 256], outputLen: [16, 128],
              seed: 0, mtp: true, temperature: 0, apiKey: process.env.OPENAI_API_KEY || '', json: '', model: '' };
  const range = (s) => { const [a, b] = s.split(':').map(Number); return [a, b ?? a]; };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => argv[++i];
    if (a === '--base') o.base = v();
    else if (a === '--num-requests') o.numRequests = Number(v());
    else if (a === '--concurrency') o.concurrency = Number(v());
    else if (a === '--prompt-len') o.promptLen = range(v());
    else if (a === '--output-len') o.outputLen = range(v());
    else if (a === '--seed') o.seed = Number(v());
    else if (a === '--no-mtp') o.mtp = false;
    else if (a === '--temperature') o.temperature = Number(v());
    else if (a === '--api-key') o.apiKey = v();
    else if (a === '--model') o.model = v();
    else if (a === '--json') o.json = v();
    else if (a === '-h' || a === '--help') {
      console.log(require('node:fs').readFileSync(__filename, 'utf8').split('\n').slice(1, 8).join('\n'));
      process.exit(0);
    } else throw new Error(`unknown argument ${a} (see --help)`);
  }
  return o;
}

// mulberry32: a small seeded PRNG, so a workload is reproducible.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ('the of and to in is was for on that with as by at from his her it an were which be this are '
  + 'history city river king war year people world time music water light house story village science church '
  + 'school book family road country island mountain north south ancient modern small great old new first').split(' ');

function workload(o) {
  const r = rng(o.seed);
  const uni = ([lo, hi]) => lo + Math.floor(r() * (hi - lo + 1));
  const reqs = [];
  for (let i = 0; i < o.numRequests; i++) {
    // About one token per word for this vocabulary; the server reports the exact prompt length.
    const n = uni(o.promptLen);
    const words = [];
    for (let k = 0; k < n; k++) words.push(WORDS[Math.floor(r() * WORDS.length)]);
    reqs.push({ prompt: words.join(' '), maxTokens: uni(o.outputLen), seed: i });
  }
  return reqs;
}

async function* sse(body) {
  const dec = new TextDecoder();
  let buf = '';
  for await (const chunk of body) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of ev.split('\n')) if (line.startsWith('data: ')) yield line.slice(6);
    }
  }
}

async function runOne(o, model, req) {
  const headers = { 'Content-Type': 'application/json' };
  if (o.apiKey) headers.Authorization = `Bearer ${o.apiKey}`;
  const body = { model, prompt: req.prompt, max_tokens: req.maxTokens, temperature: o.temperature, seed: req.seed,
                 ignore_eos: true, stream: true, stream_options: { include_usage: true } };
  if (!o.mtp) body.mtp = { enabled: false };
  const t0 = performance.now();
  const res = await fetch(`${o.base}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = null, last = null, usage = null;
  const itl = [];
  for await (const data of sse(res.body)) {
    if (data === '[DONE]') break;
    const j = JSON.parse(data);
    if (j.error) throw new Error(j.error.message);
    if (j.usage) usage = j.usage;
    if (j.choices?.length && j.choices[0].text) {
      const now = performance.now();
      if (ttft === null) ttft = now - t0;
      else itl.push(now - last);
      last = now;
    }
  }
  const e2e = performance.now() - t0;
  const out = usage?.completion_tokens ?? 0;
  return { ttft, e2e, itl, out, prompt: usage?.prompt_tokens ?? 0, tpot: out > 1 ? (e2e - ttft) / (out - 1) : null,
           mtp: usage?.mtp ?? null };
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function main() {
  const o = parseArgs(process.argv.slice(2));
  let model = o.model;
  if (!model) {
    const headers = o.apiKey ? { Authorization: `Bearer ${o.apiKey}` } : {};
    model = (await (await fetch(`${o.base}/v1/models`, { headers })).json()).data[0].id;
  }
  const reqs = workload(o);
  const results = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(o.concurrency, reqs.length) }, async () => {
    while (next < reqs.length) results.push(await runOne(o, model, reqs[next++]));
  }));
  const wall = (performance.now() - t0) / 1000;
  const out = results.reduce((a, r) => a + r.out, 0), inp = results.reduce((a, r) => a + r.prompt, 0);
  const ttft = results.map((r) => r.ttft), tpot = results.filter((r) => r.tpot !== null).map((r) => r.tpot);
  const itl = results.flatMap((r) => r.itl);
  const m = results.reduce((a, r) => (r.mtp ? { d: a.d + r.mtp.drafted_tokens, acc: a.acc + r.mtp.accepted_tokens,
                                                v: a.v + r.mtp.verify_steps } : a), { d: 0, acc: 0, v: 0 });
  const summary = {
    model, requests: results.length, concurrency: o.concurrency, prompt_len: o.promptLen, output_len: o.outputLen,
    seed: o.seed, mtp: o.mtp, wall_s: wall, prompt_tokens: inp, output_tokens: out,
    request_throughput: results.length / wall, output_throughput: out / wall, total_throughput: (inp + out) / wall,
    ttft_ms: { mean: mean(ttft), p50: pct(ttft, 50), p99: pct(ttft, 99) },
    tpot_ms: { mean: mean(tpot), p50: pct(tpot, 50), p99: pct(tpot, 99) },
    itl_ms: { mean: mean(itl), p50: pct(itl, 50), p99: pct(itl, 99) },
    mtp_drafted: m.d, mtp_accepted: m.acc, mtp_verify_steps: m.v,
    acceptance_rate: m.d ? m.acc / m.d : null, acceptance_length: m.v ? (m.acc + m.v) / m.v : null,
  };
  const f = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
  console.log(`model ${model}; ${summary.requests} requests, concurrency ${o.concurrency}, prompt ${o.promptLen.join('-')} `
    + `words, output ${o.outputLen.join('-')} tokens, seed ${o.seed}, MTP ${o.mtp ? 'on' : 'off'}`);
  console.log(`  wall ${f(wall)} s; ${inp} prompt + ${out} output tokens`);
  console.log(`  throughput: ${f(summary.request_throughput)} req/s, ${f(summary.output_throughput)} output tok/s, `
    + `${f(summary.total_throughput)} total tok/s`);
  for (const [k, v] of [['TTFT', summary.ttft_ms], ['TPOT', summary.tpot_ms], ['ITL', summary.itl_ms]])
    console.log(`  ${k.padEnd(4)} ms: mean ${f(v.mean)}  p50 ${f(v.p50)}  p99 ${f(v.p99)}`);
  if (m.d) console.log(`  MTP: ${m.acc}/${m.d} drafted tokens accepted (${f(100 * summary.acceptance_rate)}%), `
    + `acceptance length ${f(summary.acceptance_length)} tokens per verify step`);
  if (o.json) require('node:fs').writeFileSync(o.json, JSON.stringify(summary, null, 2) + '\n');
}

main().catch((e) => {
  console.error('bench_serve:', e.message || e);
  process.exit(1);
});
