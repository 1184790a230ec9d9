// Client-side checks of `mtpserve serve` with the official OpenAI SDK (tests/e2e/serve_*.sh start the server).
// Usage: node serve_test.js <mode> <base-url> [args]
//   clients <base> <generate.json>   SDK chat/completions, streaming == non-streaming, greedy == `mtpserve
//                                    generate`, MTP on == off, n/seed, logprobs, stop strings, usage
//   concurrency <base>               32 simultaneous streaming clients with mixed lengths, then all KV pages free
//   disconnect <base>                a client aborts mid-stream: its pages are freed, other requests unaffected
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { OpenAI } = require('openai');

const [mode, base, arg] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.MTP_API_KEY || 'unused', maxRetries: 0 });
const log = (...a) => console.log(`[${mode}]`, ...a);
// Sanitizer builds run the model ~20x slower: the scripts set MTP_E2E_LIGHT=1 and the checks use fewer cases.
const LIGHT = process.env.MTP_E2E_LIGHT === '1';

async function modelName() {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  return models.data[0].id;
}

async function chatText(params) {
  const r = await client.chat.completions.create(params);
  return r;
}

async function streamChat(params) {
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  const texts = {}, finish = {};
  let usage = null, sawRole = false;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) sawRole = true;
      texts[c.index] = (texts[c.index] || '') + (c.delta.content || '');
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  assert.ok(sawRole, 'first chat chunk carries the role');
  return { texts, finish, usage };
}

async function streamCompletion(params) {
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  const texts = {}, finish = {};
  let usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      texts[c.index] = (texts[c.index] || '') + c.text;
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { texts, finish, usage, chunks };
}

async function metrics() {
  const t = await (await fetch(`${base}/metrics`)).text();
  const get = (name, pool) => {
    const re = pool ? new RegExp(`^${name}\\{[^}]*pool="${pool}"[^}]*\\} (\\S+)$`, 'm') : new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm');
    const m = t.match(re);
    assert.ok(m, `metric ${name} ${pool || ''} missing`);
    return Number(m[1]);
  };
  return {
    running: get('mtpserve_requests_running'),
    waiting: get('mtpserve_requests_waiting'),
    fullUsed: get('mtpserve_kv_pages_used', 'full'),
    slidingUsed: get('mtpserve_kv_pages_used', 'sliding'),
    fullFree: get('mtpserve_kv_pages_free', 'full'),
    fullTotal: get('mtpserve_kv_pages_total', 'full'),
  };
}

// Pages are freed at the next engine step boundary: poll briefly.
async function expectAllPagesFree(what) {
  let m;
  for (let i = 0; i < 100; i++) {
    m = await metrics();
    if (m.running === 0 && m.waiting === 0 && m.fullUsed === 0 && m.slidingUsed === 0) {
      assert.equal(m.fullFree, m.fullTotal);
      log(`${what}: all KV pages free (${m.fullTotal} full-attention pages)`);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what}: KV pages still in use: ${JSON.stringify(m)}`);
}

const PROMPTS = ['The history of', 'Once upon a time', 'The capital of France is', 'In the beginning',
                 'Water boils at', 'My favourite book', 'The old man said', 'Science is'];

async function clients() {
  const model = await modelName();
  const gen = JSON.parse(fs.readFileSync(arg, 'utf8'));  // {prompt_tokens, max_tokens, tokens}
  const messages = [{ role: 'user', content: 'Tell me about the history of Rome.' }];

  // Greedy completions on the same prompt tokens == `mtpserve generate`.
  const g = await client.completions.create({ model, prompt: gen.prompt_tokens, max_tokens: gen.max_tokens,
                                              temperature: 0, return_token_ids: true });
  assert.deepEqual(g.choices[0].token_ids, gen.tokens, 'greedy tokens == mtpserve generate');
  log(`greedy == mtpserve generate (${gen.tokens.length} tokens)`);

  // Greedy text with MTP on == off (per-request extension), chat and completions; speculation really ran.
  for (const p of PROMPTS.slice(0, LIGHT ? 1 : 3)) {
    const on = await client.completions.create({ model, prompt: p, max_tokens: 40, temperature: 0 });
    const off = await client.completions.create({ model, prompt: p, max_tokens: 40, temperature: 0, mtp: { enabled: false } });
    const d1 = await client.completions.create({ model, prompt: p, max_tokens: 40, temperature: 0, mtp: { max_draft: 1 } });
    assert.equal(on.choices[0].text, off.choices[0].text, `MTP on/off differ for '${p}'`);
    assert.equal(on.choices[0].text, d1.choices[0].text, `max_draft 1 differs for '${p}'`);
    assert.equal(off.usage.mtp.drafted_tokens, 0);
    assert.ok(on.usage.mtp.drafted_tokens > 0, 'speculation ran');
    assert.equal(on.usage.completion_tokens_details.accepted_prediction_tokens, on.usage.mtp.accepted_tokens);
  }
  const cOn = await chatText({ model, messages, max_tokens: 48, temperature: 0 });
  const cOff = await chatText({ model, messages, max_tokens: 48, temperature: 0, mtp: { enabled: false } });
  assert.equal(cOn.choices[0].message.content, cOff.choices[0].message.content);
  log('greedy MTP on == off');

  // Streamed == non-streamed: greedy and seeded sampling, chat and completions.
  const samplings = [{ temperature: 0 }, { temperature: 0.9, seed: 1234, top_p: 0.95 }, { temperature: 1.0, seed: 7, top_k: 20, min_p: 0.05 }];
  for (const s of LIGHT ? samplings.slice(1, 2) : samplings) {
    const ns = await chatText({ model, messages, max_tokens: 40, ...s });
    const st = await streamChat({ model, messages, max_tokens: 40, ...s });
    assert.equal(st.texts[0], ns.choices[0].message.content, `chat stream != non-stream ${JSON.stringify(s)}`);
    assert.equal(st.finish[0], ns.choices[0].finish_reason);
    assert.equal(st.usage.completion_tokens, ns.usage.completion_tokens);
    assert.equal(st.usage.prompt_tokens, ns.usage.prompt_tokens);
    const nc = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, ...s });
    const sc = await streamCompletion({ model, prompt: 'Once upon a time', max_tokens: 40, ...s });
    assert.equal(sc.texts[0], nc.choices[0].text, `completion stream != non-stream ${JSON.stringify(s)}`);
    assert.equal(sc.usage.completion_tokens, nc.usage.completion_tokens);
  }
  log('streamed == non-streamed (greedy and seeded)');

  // n with a seed: choice i == a single request with seed + i.
  const n3 = await client.completions.create({ model, prompt: 'Science is', max_tokens: 24, temperature: 1.0, seed: 99, n: 3 });
  assert.equal(n3.choices.length, 3);
  for (let i = 0; i < 3; i++) {
    const one = await client.completions.create({ model, prompt: 'Science is', max_tokens: 24, temperature: 1.0, seed: 99 + i });
    assert.equal(n3.choices[i].text, one.choices[0].text, `n=3 choice ${i} != seed+${i}`);
  }
  const n2s = await streamChat({ model, messages, max_tokens: 16, temperature: 1.0, seed: 5, n: 2 });
  const n2 = await chatText({ model, messages, max_tokens: 16, temperature: 1.0, seed: 5, n: 2 });
  assert.deepEqual([n2s.texts[0], n2s.texts[1]], n2.choices.map((c) => c.message.content));
  log('n + seed');

  // Logprobs: one entry per completion token, top alternatives sorted, the sampled token's logprob <= 0.
  const lp = await chatText({ model, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = lp.choices[0].logprobs.content;
  assert.equal(content.length, lp.usage.completion_tokens);
  for (const e of content) {
    assert.ok(e.logprob <= 0 && e.top_logprobs.length === 3);
    assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob);
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4, 'greedy token is the top alternative');
  }
  const lpc = await client.completions.create({ model, prompt: 'Water boils at', max_tokens: 10, temperature: 0, logprobs: 2 });
  assert.equal(lpc.choices[0].logprobs.tokens.length, lpc.usage.completion_tokens);
  // Token texts include special tokens (EOS) that the text skips.
  assert.ok(lpc.choices[0].logprobs.tokens.join('').startsWith(lpc.choices[0].text));
  log('logprobs');

  // Stop strings: truncated before the stop string, finish_reason stop, streaming and not.
  const full = (await client.completions.create({ model, prompt: 'The history of', max_tokens: 40, temperature: 0 })).choices[0].text;
  for (const [from, len] of LIGHT ? [[10, 4]] : [[10, 4], [3, 7], [20, 1]]) {
    const stop = full.slice(from, from + len);
    const want = full.slice(0, full.indexOf(stop));
    const r = await client.completions.create({ model, prompt: 'The history of', max_tokens: 40, temperature: 0, stop: [stop, 'never-there'] });
    assert.equal(r.choices[0].text, want, `stop ${JSON.stringify(stop)}`);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await streamCompletion({ model, prompt: 'The history of', max_tokens: 40, temperature: 0, stop });
    assert.equal(s.texts[0], want, `stream stop ${JSON.stringify(stop)}`);
    assert.equal(s.finish[0], 'stop');
    const rcn = await chatText({ model, messages, max_tokens: 40, temperature: 0, stop });
    const rc = await streamChat({ model, messages, max_tokens: 40, temperature: 0, stop, mtp: { enabled: false } });
    assert.equal(rc.texts[0], rcn.choices[0].message.content);
    assert.equal(rc.finish[0], rcn.choices[0].finish_reason);
  }
  log('stop strings');

  // max_completion_tokens -> finish_reason length with that many tokens.
  const ml = await chatText({ model, messages, max_completion_tokens: 5, temperature: 0, ignore_eos: true });
  assert.equal(ml.usage.completion_tokens, 5);
  assert.equal(ml.choices[0].finish_reason, 'length');
  log('all client checks passed');
}

async function concurrency() {
  const model = await modelName();
  const N = 32;
  // Sequential greedy references, one per prompt, at the longest length used.
  const maxLen = LIGHT ? 24 : 64;
  const refs = {};
  for (const p of PROMPTS) {
    refs[p] = (await client.completions.create({ model, prompt: p, max_tokens: maxLen, temperature: 0, ignore_eos: true, return_token_ids: true })).choices[0];
  }
  const t0 = Date.now();
  const jobs = [];
  for (let i = 0; i < N; i++) {
    const p = PROMPTS[i % PROMPTS.length];
    const maxTokens = 4 + ((i * 37) % (maxLen - 3));
    const chat = i % 4 === 3;
    jobs.push((async () => {
      if (chat) {
        const r = await streamChat({ model, messages: [{ role: 'user', content: p }], max_tokens: maxTokens, temperature: 0.7, seed: i });
        assert.ok(['stop', 'length'].includes(r.finish[0]));
        assert.ok(r.usage.completion_tokens <= maxTokens);
        return;
      }
      const r = await streamCompletion({ model, prompt: p, max_tokens: maxTokens, temperature: 0, ignore_eos: true, return_token_ids: true });
      assert.equal(r.finish[0], 'length', `client ${i}`);
      assert.equal(r.usage.completion_tokens, maxTokens, `client ${i}`);
      // Greedy under batching == the sequential reference (a prefix of it).
      const ref = refs[p].text;
      assert.ok(ref.startsWith(r.texts[0]) && r.texts[0].length > 0, `client ${i} ('${p}', ${maxTokens} tokens): ${JSON.stringify(r.texts[0])} is not a prefix of ${JSON.stringify(ref)}`);
    })());
  }
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((r) => r.status === 'rejected');
  for (const f of failed) console.error(f.reason);
  assert.equal(failed.length, 0, `${failed.length} of ${N} concurrent clients failed`);
  log(`${N} concurrent streaming clients completed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await expectAllPagesFree('after the concurrent clients');
}

async function disconnect() {
  const model = await modelName();
  const before = (await metrics()).fullTotal;
  // A long stream that the client abandons after a few chunks, while other requests run.
  const others = [];
  const ref = (await client.completions.create({ model, prompt: 'The old man said', max_tokens: 48, temperature: 0, ignore_eos: true })).choices[0].text;
  const stream = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true });
  for (let i = 0; i < 4; i++) others.push(client.completions.create({ model, prompt: 'The old man said', max_tokens: 48, temperature: 0, ignore_eos: true }));
  let chunks = 0;
  for await (const chunk of stream) {
    void chunk;
    if (++chunks === 5) break;  // leaving the loop aborts the HTTP request
  }
  stream.controller.abort();
  const mid = await metrics();
  log(`aborted after ${chunks} chunks; running now ${mid.running}, full pages used ${mid.fullUsed}`);
  // A second abandoned stream: chat, aborted by closing the socket via AbortController.
  const ac = new AbortController();
  const s2 = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4000, ignore_eos: true, stream: true }, { signal: ac.signal });
  let n2 = 0;
  try {
    for await (const chunk of s2) {
      void chunk;
      if (++n2 === 3) ac.abort();
    }
  } catch (e) {
    if (!String(e.name).includes('Abort') && !String(e).includes('abort')) throw e;
  }
  const rs = await Promise.all(others);
  for (const r of rs) assert.equal(r.choices[0].text, ref, 'a concurrent request was affected by the disconnect');
  await expectAllPagesFree('after the disconnects');
  assert.equal((await metrics()).fullTotal, before);
  // The server still serves.
  const after = await client.completions.create({ model, prompt: 'The old man said', max_tokens: 48, temperature: 0, ignore_eos: true });
  assert.equal(after.choices[0].text, ref);
  log('disconnect checks passed');
}

const modes = { clients, concurrency, disconnect };
if (!modes[mode]) {
  console.error('usage: node serve_test.js clients|concurrency|disconnect <base-url> [generate.json]');
  process.exit(2);
}
modes[mode]().catch((e) => {
  console.error(`[${mode}] FAILED:`, e);
  process.exit(1);
});
