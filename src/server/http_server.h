// The OpenAI-compatible HTTP server (cpp-httplib): /v1/chat/completions, /v1/completions (SSE streaming and
// not), /v1/models, /health, /metrics. Each HTTP request becomes n engine requests; their outputs are
// detokenized and checked for stop strings on the HTTP worker thread (the engine callback only queues them).
// A client that disconnects mid-stream has its engine requests cancelled, so their KV pages are freed.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "engine/engine.h"

namespace mtpserve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                // 0: any free port (the one bound is passed to on_listening)
  std::string api_key;            // non-empty: /v1/* requires "Authorization: Bearer <key>"
  std::string served_model_name;  // empty: the model directory's name
  std::string tokenizer_dir;      // tokenizer.json and chat_template.jinja; empty: the model directory
  size_t max_body_bytes = size_t(8) << 20;
  int http_threads = 0;      // worker threads (one per open connection); 0: 128
  bool log_requests = true;  // one stderr line per finished request
};

class HttpServer {
 public:
  // Loads the tokenizer and chat template from opts.tokenizer_dir, or engine.info().model_dir. Throws Error.
  HttpServer(Engine& engine, ServerOptions opts);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, calls on_listening(port), then serves until stop(). Throws Error when it cannot bind.
  void run(const std::function<void(int port)>& on_listening);
  void stop();  // thread-safe; run() returns soon after
  const std::string& model_name() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mtpserve
