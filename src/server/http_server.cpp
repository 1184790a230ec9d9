#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>

#include "core/error.h"
#include "server/chat_template.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/output_processor.h"
#include "server/tokenizer.h"

namespace mtpserve {

using api::ApiError;
using api::ojson;
using Clock = std::chrono::steady_clock;

namespace {

void send_json(httplib::Response& res, int status, const ojson& j) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  send_json(res, e.status, api::error_body(e));
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The events of one HTTP request's engine requests, queued by the engine callbacks.
struct EventQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int, RequestOutput>> events;
};

struct ChoiceState {
  std::string engine_id;
  std::unique_ptr<OutputProcessor> proc;
  bool done = false;          // finished as the client sees it
  bool engine_final = false;  // the engine delivered its final output
  bool role_sent = false;
  std::string finish_reason, error;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  std::vector<int32_t> token_ids;
  RequestOutput last;  // latest totals
  size_t text_offset = 0;
};

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ServerOptions opts;
  Tokenizer tok;
  std::optional<ChatTemplate> chat_template;
  std::string model_name;
  Metrics metrics;
  httplib::Server svr;
  std::atomic<uint64_t> next_id{0};
  uint64_t id_salt;

  Impl(Engine& e, ServerOptions o) : engine(e), opts(std::move(o)), tok(Tokenizer::load(tokenizer_dir())) {
    try {
      chat_template = ChatTemplate::load(tokenizer_dir());
    } catch (const Error& err) {
      fmt::print(stderr, "warning: no chat template ({}); /v1/chat/completions will answer 400\n",
                 err.what());
    }
    model_name = opts.served_model_name;
    if (model_name.empty()) {
      auto p = std::filesystem::path(e.info().model_dir);
      model_name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
    }
    id_salt = std::random_device{}();
    setup_routes();
  }

  std::string tokenizer_dir() const {
    return opts.tokenizer_dir.empty() ? engine.info().model_dir : opts.tokenizer_dir;
  }
  std::string new_id(const char* prefix) {
    return fmt::format("{}-{:08x}{:08x}", prefix, uint32_t(id_salt), uint32_t(next_id.fetch_add(1)));
  }
  std::string token_text(int32_t id) const {
    int32_t one[1] = {id};
    return tok.decode(one, false);
  }

  void setup_routes();
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
};

namespace {

// One HTTP generation request: n engine requests, their choice states and the response being built.
struct Generation : std::enable_shared_from_this<Generation> {
  HttpServer::Impl* srv;
  api::ApiRequest req;
  std::string id, model;
  int64_t created;
  std::vector<int32_t> prompt;
  std::shared_ptr<EventQueue> q = std::make_shared<EventQueue>();
  std::vector<ChoiceState> choices;
  Clock::time_point start = Clock::now(), last_write = Clock::now();
  bool logged = false, final_sent = false, started = false;

  bool all_done() const {
    for (const auto& c : choices)
      if (!c.done) return false;
    return true;
  }

  // Cancels every engine request that has not delivered its final output (client gone, error, shutdown).
  void cancel_unfinished() {
    for (auto& c : choices)
      if (!c.engine_final) srv->engine.cancel(c.engine_id);
  }

  void submit() {
    int n = req.n;
    choices.resize(size_t(n));
    for (int i = 0; i < n; i++) {
      auto& c = choices[size_t(i)];
      c.engine_id = fmt::format("{}-{}", id, i);
      c.proc = std::make_unique<OutputProcessor>(srv->tok, req.stop, req.skip_special_tokens);
      GenerationRequest g = api::make_generation_request(req, c.engine_id, i, prompt);
      auto queue = q;
      bool ok;
      try {
        ok = srv->engine.submit(std::move(g), [queue, i](const RequestOutput& out) {
          {
            std::lock_guard<std::mutex> lk(queue->mu);
            queue->events.emplace_back(i, out);
          }
          queue->cv.notify_all();
        });
      } catch (const Error& e) {
        for (int k = 0; k < i; k++) srv->engine.cancel(choices[size_t(k)].engine_id);
        choices.clear();
        throw ApiError(400, e.what(), "invalid_request_error", req.chat ? "messages" : "prompt");
      }
      if (!ok) {
        for (int k = 0; k < i; k++) srv->engine.cancel(choices[size_t(k)].engine_id);
        choices.clear();
        throw ApiError(503, "The server is overloaded (the waiting queue is full); please retry later.",
                       "server_error", "", "server_overloaded");
      }
    }
  }

  // Waits up to `timeout` for engine outputs and applies them; returns the SSE text to send (streaming).
  std::string pump(std::chrono::milliseconds timeout) {
    std::deque<std::pair<int, RequestOutput>> evs;
    {
      std::unique_lock<std::mutex> lk(q->mu);
      q->cv.wait_for(lk, timeout, [&] { return !q->events.empty(); });
      evs.swap(q->events);
    }
    std::string out;
    for (auto& [i, o] : evs) apply(i, o, out);
    return out;
  }

  void apply(int i, const RequestOutput& o, std::string& sse) {
    auto& c = choices[size_t(i)];
    c.last.prompt_tokens = o.prompt_tokens;
    c.last.drafted_tokens = o.drafted_tokens;
    c.last.accepted_tokens = o.accepted_tokens;
    c.last.verify_steps = o.verify_steps;
    if (o.ttft_s > 0) c.last.ttft_s = o.ttft_s;
    if (o.finish != FinishReason::None) c.engine_final = true;
    if (c.done) return;
    auto d = c.proc->add(o.tokens);
    size_t used = d.tokens_used;
    c.token_ids.insert(c.token_ids.end(), o.tokens.begin(), o.tokens.begin() + long(used));
    size_t nlp = std::min(used, o.logprobs.size());
    std::vector<TokenLogprob> lps(o.logprobs.begin(), o.logprobs.begin() + long(nlp));
    if (d.stopped) {
      c.finish_reason = "stop";
      if (!c.engine_final) srv->engine.cancel(c.engine_id);
    } else if (o.finish != FinishReason::None) {
      auto f = c.proc->finish();
      d.text += f.text;
      c.finish_reason = f.stopped ? "stop" : finish_reason_name(o.finish);
      if (o.finish == FinishReason::Error) c.error = o.error.empty() ? "engine error" : o.error;
    }
    c.text += d.text;
    bool finished = d.stopped || o.finish != FinishReason::None;
    if (req.stream) emit_chunk(i, d.text, lps, finished ? std::optional(c.finish_reason) : std::nullopt, sse);
    c.logprobs.insert(c.logprobs.end(), lps.begin(), lps.end());
    if (finished) {
      c.done = true;
      int n = int(c.proc->tokens());
      double e2e = seconds_since(start);
      double ttft = c.last.ttft_s;
      srv->metrics.request_finished(c.finish_reason, ttft, n > 1 ? (e2e - ttft) / (n - 1) : 0.0, e2e, n);
    }
  }

  void emit_chunk(int i, const std::string& text, const std::vector<TokenLogprob>& lps,
                  const std::optional<std::string>& finish, std::string& sse) {
    auto& c = choices[size_t(i)];
    auto tt = [this](int32_t t) { return srv->token_text(t); };
    ojson lp = nullptr;
    if (req.logprobs && !lps.empty())
      lp =
          req.chat ? api::chat_logprobs_json(lps, tt) : api::completion_logprobs_json(lps, tt, c.text_offset);
    for (const auto& l : lps) c.text_offset += tt(l.token).size();
    if (!text.empty() || !lp.is_null()) {
      sse += api::sse_event(req.chat ? api::chat_chunk(id, created, model, i, text, std::nullopt, false, lp)
                                     : api::completion_chunk(id, created, model, i, text, std::nullopt, lp));
    }
    if (finish) {
      if (!c.error.empty())
        sse += api::sse_event(api::error_body(c.error, "server_error", "", "engine_error"));
      sse += api::sse_event(req.chat ? api::chat_chunk(id, created, model, i, std::nullopt, finish, false)
                                     : api::completion_chunk(id, created, model, i, "", finish));
    }
  }

  std::string role_chunks() {
    std::string s;
    if (!req.chat) return s;
    for (size_t i = 0; i < choices.size(); i++)
      s += api::sse_event(api::chat_chunk(id, created, model, int(i), std::string(), std::nullopt, true));
    return s;
  }

  api::Usage usage() const {
    api::Usage u;
    u.prompt_tokens = int(prompt.size());
    for (const auto& c : choices) {
      u.completion_tokens += int(c.proc ? c.proc->tokens() : 0);
      u.drafted_tokens += c.last.drafted_tokens;
      u.accepted_tokens += c.last.accepted_tokens;
      u.verify_steps += c.last.verify_steps;
    }
    return u;
  }

  std::string final_chunks() {
    std::string s;
    if (req.include_usage) s += api::sse_event(api::usage_chunk(req.chat, id, created, model, usage()));
    s += api::sse_done();
    return s;
  }

  ojson response() const {
    std::vector<api::ChoiceResult> rs;
    for (const auto& c : choices) rs.push_back({c.text, c.finish_reason, c.logprobs, c.token_ids});
    auto tt = [this](int32_t t) { return srv->token_text(t); };
    return req.chat
               ? api::chat_response(id, created, model, rs, usage(), req.logprobs, req.return_token_ids, tt)
               : api::completion_response(id, created, model, rs, usage(), req.logprobs, req.return_token_ids,
                                          tt);
  }

  void log(const char* outcome) {
    if (logged || !srv->opts.log_requests) return;
    logged = true;
    auto u = usage();
    double ttft = 0;
    for (const auto& c : choices) ttft = std::max(ttft, c.last.ttft_s);
    double e2e = seconds_since(start);
    int per = choices.empty() ? 0 : u.completion_tokens / int(choices.size());
    double tpot = per > 1 ? (e2e - ttft) / (per - 1) : 0.0;
    double al = u.verify_steps ? double(u.accepted_tokens + u.verify_steps) / u.verify_steps : 0.0;
    std::string reasons;
    for (const auto& c : choices) reasons += (reasons.empty() ? "" : ",") + c.finish_reason;
    fmt::print(stderr,
               "request {} {} n={} in={} out={} ttft={:.1f}ms tpot={:.2f}ms e2e={:.3f}s accept_len={:.2f} "
               "finish={} {}\n",
               id, req.chat ? "chat" : "completion", choices.size(), u.prompt_tokens, u.completion_tokens,
               ttft * 1e3, tpot * 1e3, e2e, al, reasons.empty() ? "-" : reasons, outcome);
  }
};

}  // namespace

void HttpServer::Impl::handle_generate(const httplib::Request& hreq, httplib::Response& res, bool chat) {
  auto body = api::parse_body(hreq.body);
  auto g = std::make_shared<Generation>();
  g->srv = this;
  g->req = chat ? api::parse_chat_request(body) : api::parse_completion_request(body);
  auto& r = g->req;
  if (!r.model.empty() && r.model != model_name)
    throw ApiError(
        404, fmt::format("The model '{}' does not exist (this server serves '{}').", r.model, model_name),
        "invalid_request_error", "model", "model_not_found");
  const auto& info = engine.info();
  try {
    if (chat) {
      if (!chat_template) throw ApiError(400, "This model has no chat template; use /v1/completions.");
      std::string text =
          chat_template->render(r.messages, r.tools, r.add_generation_prompt, r.chat_template_kwargs);
      g->prompt = tok.encode(text, /*add_special_tokens=*/false);
    } else if (r.prompt_is_tokens) {
      g->prompt = r.prompt_tokens;
      for (int32_t t : g->prompt)
        if (t >= info.vocab_size)
          api::invalid("prompt",
                       fmt::format("Token id {} is outside the vocabulary [0, {}).", t, info.vocab_size));
    } else {
      g->prompt = tok.encode(r.prompt_text, /*add_special_tokens=*/true);
      if (g->prompt.empty() || g->prompt[0] != info.bos_token_id)
        g->prompt.insert(g->prompt.begin(), info.bos_token_id);
    }
  } catch (const Error& e) {
    api::invalid(chat ? "messages" : "prompt", e.what());
  }
  api::resolve_max_tokens(r, int(g->prompt.size()), info.max_model_len);
  g->id = new_id(chat ? "chatcmpl" : "cmpl");
  g->model = model_name;
  g->created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  g->submit();

  if (!r.stream) {
    while (!g->all_done()) g->pump(std::chrono::milliseconds(1000));
    for (const auto& c : g->choices)
      if (!c.error.empty()) {
        g->log("error");
        send_json(res, 500, api::error_body(c.error, "server_error", "", "engine_error"));
        return;
      }
    g->log("ok");
    send_json(res, 200, g->response());
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [g](size_t, httplib::DataSink& sink) {
        std::string out;
        if (!g->started) {
          out = g->role_chunks();
          g->started = true;
        }
        if (out.empty()) out = g->pump(std::chrono::milliseconds(250));
        if (g->all_done() && !g->final_sent) {
          out += g->final_chunks();
          g->final_sent = true;
        }
        // An SSE comment now and then while nothing is produced: finds clients that went away while queued.
        if (out.empty() && seconds_since(g->last_write) > 2.0) out = ": keep-alive\n\n";
        if (!out.empty()) {
          if (!sink.is_writable() || !sink.write(out.data(), out.size())) {
            g->cancel_unfinished();
            g->log("client disconnected");
            return false;
          }
          g->last_write = Clock::now();
        }
        if (g->final_sent) {
          sink.done();
          g->log("ok");
        }
        return true;
      },
      [g](bool success) {
        g->cancel_unfinished();
        if (!success || !g->final_sent) g->log("client disconnected");
      });
}

void HttpServer::Impl::setup_routes() {
  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_json(res, 500,
                  api::error_body(fmt::format("Internal server error: {}", e.what()), "server_error"));
      }
    };
  };
  svr.Post("/v1/chat/completions", guarded([this](const auto& q, auto& s) { handle_generate(q, s, true); }));
  svr.Post("/v1/completions", guarded([this](const auto& q, auto& s) { handle_generate(q, s, false); }));
  auto model_obj = [this] {
    return ojson{{"id", model_name},
                 {"object", "model"},
                 {"created", 0},
                 {"owned_by", "mtpserve"},
                 {"root", engine.info().model_dir},
                 {"max_model_len", engine.info().max_model_len}};
  };
  svr.Get("/v1/models", guarded([model_obj](const auto&, auto& s) {
            send_json(s, 200, ojson{{"object", "list"}, {"data", ojson::array({model_obj()})}});
          }));
  svr.Get(R"(/v1/models/(.+))", guarded([this, model_obj](const auto& q, auto& s) {
            if (q.matches[1] != model_name)
              throw ApiError(404, fmt::format("The model '{}' does not exist.", std::string(q.matches[1])),
                             "invalid_request_error", "model", "model_not_found");
            send_json(s, 200, model_obj());
          }));
  svr.Get("/health", [](const auto&, auto& s) { send_json(s, 200, ojson{{"status", "ok"}}); });
  svr.Get("/metrics", [this](const auto&, auto& s) {
    s.set_content(metrics.render(engine.stats(), engine.info(), model_name), "text/plain; version=0.0.4");
  });
  // Wrong methods on known routes: 405 with Allow.
  auto not_allowed = [](const char* allow) {
    return [allow](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Allow", allow);
      send_json(res, 405,
                api::error_body(
                    fmt::format("Method {} is not allowed for {} (use {}).", req.method, req.path, allow),
                    "invalid_request_error", "", "method_not_allowed"));
    };
  };
  for (const char* p : {"/v1/chat/completions", "/v1/completions"}) {
    svr.Get(p, not_allowed("POST"));
    svr.Put(p, not_allowed("POST"));
    svr.Delete(p, not_allowed("POST"));
    svr.Patch(p, not_allowed("POST"));
  }
  for (const char* p : {"/v1/models", "/health", "/metrics"}) {
    svr.Post(p, not_allowed("GET"));
    svr.Put(p, not_allowed("GET"));
    svr.Delete(p, not_allowed("GET"));
    svr.Patch(p, not_allowed("GET"));
  }
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opts.api_key.empty() || req.path.rfind("/v1/", 0) != 0)
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + opts.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    send_json(res, 401,
              api::error_body("Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.",
                              "invalid_request_error", "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg, code;
    switch (res.status) {
      case 404:
        msg = fmt::format("Invalid URL ({} {}).", req.method, req.path), code = "not_found";
        break;
      case 413:
        msg = fmt::format("The request body is too large (the limit is {} bytes).", opts.max_body_bytes);
        code = "request_too_large";
        break;
      case 400:
        msg = fmt::format(
            "The request could not be read ({} {}; a POST needs a Content-Length or a chunked body).",
            req.method, req.path);
        break;
      default:
        msg = fmt::format("HTTP {} ({} {}).", res.status, req.method, req.path);
    }
    send_json(res, res.status, api::error_body(msg, "invalid_request_error", "", code));
  });
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_json(res, 500, api::error_body("Internal server error: " + what, "server_error"));
  });
  svr.set_logger(
      [this](const httplib::Request&, const httplib::Response& res) { metrics.http_response(res.status); });
  svr.set_payload_max_length(opts.max_body_bytes);
  int threads = opts.http_threads > 0 ? opts.http_threads : 128;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
}

HttpServer::HttpServer(Engine& engine, ServerOptions opts)
    : impl_(std::make_unique<Impl>(engine, std::move(opts))) {}
HttpServer::~HttpServer() { stop(); }

void HttpServer::run(const std::function<void(int)>& on_listening) {
  auto& s = impl_->svr;
  int port = impl_->opts.port;
  if (port == 0) {
    port = s.bind_to_any_port(impl_->opts.host);
    MTP_CHECK(port > 0, "serve: cannot bind to {} (any port)", impl_->opts.host);
  } else {
    MTP_CHECK(s.bind_to_port(impl_->opts.host, port), "serve: cannot bind to {}:{} (in use, or not allowed?)",
              impl_->opts.host, port);
  }
  if (on_listening) on_listening(port);
  s.listen_after_bind();
}

void HttpServer::stop() {
  if (impl_) impl_->svr.stop();
}

const std::string& HttpServer::model_name() const { return impl_->model_name; }

}  // namespace mtpserve
