// The gateway playground. Plain JavaScript under a strict CSP: no inline code, no other origin.
// The API key lives in this page's memory (and in sessionStorage only if asked), and is sent
// only to this page's own origin, by relative URLs.
"use strict";

(() => {
  const KEY_STORE = "gateway-playground-key";
  const DEFAULT_PATH = "/api/chat";
  const RAW_CAP_CHARS = 200000;
  const MODEL_DEBOUNCE_MS = 500;
  const SHOWN_HEADERS = ["content-type", "retry-after", "allow"];
  // HTTP/1.1 servers may send no reason phrase, and HTTP/2 never does.
  const REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    config: null,
    endpoint: null,
    key: "",
    revealed: false,
    running: null, // the AbortController of the call in flight
    bodies: new Map(), // what the user wrote for each endpoint, kept across switches
    models: [],
    modelsSeq: 0,
    modelsTimer: 0,
  };

  // ---- small DOM helpers (text only: nothing from an answer is ever parsed as HTML) ----

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function withCode(text) {
    // `quoted` parts of a summary become <code>; everything stays text.
    const fragment = document.createDocumentFragment();
    text.split("`").forEach((part, i) => {
      fragment.append(i % 2 ? el("code", "", part) : document.createTextNode(part));
    });
    return fragment;
  }

  function definition(list, term, value, id) {
    const dt = el("dt", "", term);
    const dd = el("dd", "", value);
    if (id) dd.id = id;
    list.append(dt, dd);
  }

  // ---- the key ----

  function maskedKey(key) {
    const cut = key.indexOf("_");
    const head = cut >= 0 && cut < 17 ? key.slice(0, cut + 5) : key.slice(0, 4);
    return head + "********";
  }

  function setKey(value) {
    state.key = value.trim();
    if ($("remember").checked && state.key) {
      sessionStorage.setItem(KEY_STORE, state.key);
    } else {
      sessionStorage.removeItem(KEY_STORE);
    }
    refresh();
    clearTimeout(state.modelsTimer);
    state.modelsTimer = setTimeout(loadModels, MODEL_DEBOUNCE_MS);
  }

  // ---- endpoints and their About cards ----

  function fillEndpoints() {
    const select = $("endpoint");
    const groups = { ollama: "Ollama (native)", openai: "OpenAI-compatible" };
    for (const [protocol, label] of Object.entries(groups)) {
      const group = el("optgroup");
      group.label = label;
      for (const endpoint of state.config.endpoints) {
        if (endpoint.protocol !== protocol) continue;
        const option = el("option", "", `${endpoint.method} ${endpoint.path}`);
        option.value = endpoint.path;
        group.append(option);
      }
      select.append(group);
    }
  }

  function showAbout(endpoint) {
    $("about-method").textContent = endpoint.method;
    $("about-method").className = `method ${endpoint.method.toLowerCase()}`;
    $("about-path").textContent = endpoint.path;
    const badges = $("about-badges");
    badges.replaceChildren(
      el("span", "badge", endpoint.protocol === "openai" ? "OpenAI" : "Ollama"),
      el("span", "badge auth", `auth: ${endpoint.auth}`),
      el("span", `badge stream-${endpoint.streams.replace(" ", "-")}`, streamsLabel(endpoint)),
    );
    if (endpoint.local) badges.append(el("span", "badge local", "answered by the gateway"));
    $("about-summary").replaceChildren(withCode(endpoint.summary));
    $("about-request").textContent = endpoint.sample_request
      ? `${endpoint.method} ${endpoint.path}\n${JSON.stringify(endpoint.sample_request, null, 2)}`
      : `${endpoint.method} ${endpoint.path}\n(no body)`;
    $("about-response").textContent = endpoint.sample_response;
  }

  function streamsLabel(endpoint) {
    if (endpoint.streams === "default") return "streams by default (NDJSON)";
    if (endpoint.streams === "on request") {
      return endpoint.protocol === "openai" ? "streams on request (SSE)" : "streams on request";
    }
    return "no streaming";
  }

  function selectEndpoint(path) {
    const endpoint = state.config.endpoints.find((item) => item.path === path);
    if (!endpoint) return;
    if (state.endpoint) state.bodies.set(state.endpoint.path, $("body").value);
    state.endpoint = endpoint;
    $("endpoint").value = path;
    showAbout(endpoint);
    const body = $("body");
    if (endpoint.sample_request) {
      body.disabled = false;
      body.value = state.bodies.get(path) ?? sampleBody(endpoint);
    } else {
      body.disabled = true;
      body.value = "";
    }
    $("stream-row").hidden = endpoint.streams === "never";
    syncStreamBox();
    refresh();
  }

  function sampleBody(endpoint) {
    const sample = structuredClone(endpoint.sample_request);
    if ("model" in sample && $("model").value) sample.model = $("model").value;
    return JSON.stringify(sample, null, 2);
  }

  // ---- editing the body through the controls ----

  function parsedBody() {
    try {
      const value = JSON.parse($("body").value);
      return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch {
      return null;
    }
  }

  function editBody(change) {
    const body = parsedBody();
    if (!body) return;
    change(body);
    $("body").value = JSON.stringify(body, null, 2);
    refresh();
  }

  function syncStreamBox() {
    const endpoint = state.endpoint;
    const body = parsedBody();
    const box = $("stream");
    box.disabled = !body;
    if (body) box.checked = "stream" in body ? body.stream === true : endpoint.streams === "default";
  }

  function setStream(on) {
    const openai = state.endpoint.protocol === "openai";
    editBody((body) => {
      body.stream = on;
      // Usage in the last chunk, so the token counts can be shown at the end.
      if (openai && on) body.stream_options = { include_usage: true };
      if (openai && !on) delete body.stream_options;
    });
  }

  // ---- models, from /v1/models with the key ----

  async function loadModels() {
    const seq = ++state.modelsSeq;
    const select = $("model");
    const status = $("model-status");
    if (!state.key) {
      select.replaceChildren();
      select.disabled = true;
      $("models-reload").disabled = true;
      status.textContent = "(enter a key to list its models)";
      return;
    }
    status.textContent = "(loading…)";
    $("models-reload").disabled = false;
    let answer;
    try {
      const response = await fetch("/v1/models", {
        headers: { Authorization: `Bearer ${state.key}` },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      answer = { response, text: await response.text() };
    } catch (error) {
      if (seq === state.modelsSeq) status.textContent = `(could not reach the gateway: ${error})`;
      return;
    }
    if (seq !== state.modelsSeq) return; // the key changed while this was loading
    const { response, text } = answer;
    if (!response.ok) {
      const id = response.headers.get(state.config.request_id_header) || "none";
      select.replaceChildren();
      select.disabled = true;
      status.textContent = `(${response.status}: ${errorMessage(text)}; request id ${id})`;
      return;
    }
    const previous = select.value;
    state.models = (JSON.parse(text).data || []).map((model) => model.id);
    select.replaceChildren(...state.models.map((id) => {
      const option = el("option", "", id);
      option.value = id;
      return option;
    }));
    select.disabled = state.models.length === 0;
    status.textContent = state.models.length
      ? `(${state.models.length} available to this key)`
      : "(this key may use no model)";
    const current = parsedBody();
    const wanted = [previous, current && current.model].find((id) => state.models.includes(id));
    select.value = wanted || state.models[0] || "";
    if (select.value) editBody((body) => { if ("model" in body) body.model = select.value; });
  }

  function errorMessage(text) {
    try {
      const error = JSON.parse(text).error;
      return typeof error === "string" ? error : error.message;
    } catch {
      return "no error message";
    }
  }

  // ---- the request Run sends, and the curl line that mirrors it ----

  function buildRequest() {
    const endpoint = state.endpoint;
    const headers = [["Authorization", `Bearer ${state.key}`]];
    let body = null;
    if (endpoint.method === "POST") {
      headers.push(["Content-Type", "application/json"]);
      body = $("body").value;
    }
    return { method: endpoint.method, path: endpoint.path, headers, body };
  }

  function shellQuote(text) {
    return `'${text.replaceAll("'", "'\\''")}'`;
  }

  function curlLine(request, reveal) {
    const streaming = request.body !== null && parsedBody() && isStreaming(parsedBody());
    const parts = [`curl -i${streaming ? " -N" : ""} -X ${request.method} ${shellQuote(
      location.origin + request.path,
    )}`];
    for (const [name, value] of request.headers) {
      const shown = name === "Authorization" && !reveal ? `Bearer ${maskedKey(state.key)}` : value;
      parts.push(`-H ${shellQuote(`${name}: ${shown}`)}`);
    }
    if (request.body !== null) parts.push(`--data-raw ${shellQuote(request.body)}`);
    return parts.join(" \\\n  ");
  }

  function isStreaming(body) {
    return "stream" in body ? body.stream === true : state.endpoint.streams === "default";
  }

  // ---- refresh: what is enabled, the curl box ----

  function refresh() {
    if (!state.endpoint) return;
    const running = state.running !== null;
    const bodyBad = state.endpoint.method === "POST" && !parsedBody();
    $("run").disabled = !state.key || running || bodyBad;
    $("stop").disabled = !running;
    $("key-toggle").textContent = $("key").type === "password" ? "Show" : "Hide";
    $("body-error").hidden = !bodyBad;
    $("body-error").textContent = bodyBad ? "The body must be a JSON object." : "";
    $("run-hint").textContent = !state.key
      ? "Enter an API key to run."
      : running ? "Running…" : "Ctrl+Enter in the body runs too.";
    $("curl-reveal").textContent = state.revealed ? "Mask key" : "Reveal key";
    $("curl-reveal").disabled = !state.key;
    $("curl").textContent = state.key
      ? curlLine(buildRequest(), state.revealed)
      : "(enter an API key)";
    $("curl").dataset.masked = String(!state.revealed);
  }

  // ---- running a call ----

  function setStatus(kind, text, requestId) {
    const status = $("status");
    status.dataset.state = kind;
    status.replaceChildren(el("span", "", text));
    if (requestId !== undefined) {
      status.append(document.createTextNode(" · request id "), el("code", "", requestId));
      status.lastChild.id = "request-id";
    }
  }

  function statusLine(response) {
    return `${response.status} ${response.statusText || REASONS[response.status] || ""}`.trim();
  }

  function showHeaders(response) {
    const list = $("headers");
    list.replaceChildren();
    const idHeader = state.config.request_id_header.toLowerCase();
    definition(list, "status", statusLine(response));
    const names = [];
    response.headers.forEach((_, name) => names.push(name));
    names.sort();
    for (const name of names) {
      if (name === idHeader || name.startsWith("x-ratelimit-") || SHOWN_HEADERS.includes(name)) {
        definition(list, name, response.headers.get(name));
      }
    }
  }

  function showMetrics(metrics) {
    const list = $("metrics");
    list.replaceChildren();
    const ms = (value) => (value === null ? "–" : `${Math.round(value)} ms`);
    definition(list, "time to first token", ms(metrics.ttftMs), "metric-ttft");
    definition(list, "duration", ms(metrics.durationMs), "metric-duration");
    const counted = (value) => (value === null ? "not reported" : String(value));
    definition(list, "prompt tokens", counted(metrics.promptTokens), "metric-prompt");
    definition(list, "completion tokens", counted(metrics.completionTokens), "metric-completion");
    definition(list, "chunks received", String(metrics.chunks), "metric-chunks");
    const later = metrics.durationMs - metrics.ttftMs;
    if (metrics.completionTokens > 1 && metrics.ttftMs !== null && later > 0) {
      const rate = ((metrics.completionTokens - 1) * 1000) / later;
      definition(list, "tokens/s after the first", rate.toFixed(1), "metric-rate");
    }
  }

  // One decoded line of a stream → text to append, counts, an error frame, or the end.
  function ndjsonFrame(line) {
    const frame = JSON.parse(line);
    if (frame.error !== undefined) return { error: frame };
    const text = (frame.message && frame.message.content) || frame.response || "";
    if (!frame.done) return { text };
    return {
      text,
      promptTokens: frame.prompt_eval_count ?? null,
      completionTokens: frame.eval_count ?? null,
    };
  }

  function sseFrame(line) {
    if (!line.startsWith("data:")) return {};
    const data = line.slice(5).trim();
    if (data === "[DONE]") return {};
    const frame = JSON.parse(data);
    if (frame.error !== undefined) return { error: frame };
    const choice = (frame.choices || [])[0];
    const text = choice ? (choice.delta ? choice.delta.content : choice.text) || "" : "";
    if (!frame.usage) return { text };
    return {
      text,
      promptTokens: frame.usage.prompt_tokens ?? null,
      completionTokens: frame.usage.completion_tokens ?? null,
    };
  }

  async function readStream(response, parse, sink) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      sink.raw(text);
      buffer += text;
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, "");
        buffer = buffer.slice(cut + 1);
        if (line.trim()) sink.frame(parse(line));
      }
      if (done) break;
    }
    if (buffer.trim()) sink.frame(parse(buffer));
  }

  async function run() {
    if ($("run").disabled) return;
    const request = buildRequest();
    const controller = new AbortController();
    state.running = controller;
    refresh();
    const output = $("output");
    const raw = $("raw");
    const text = document.createTextNode("");
    output.replaceChildren(text);
    output.className = "output";
    raw.textContent = "";
    $("headers").replaceChildren();
    $("metrics").replaceChildren();
    setStatus("running", `${request.method} ${request.path} …`);
    const started = performance.now();
    const metrics = {
      ttftMs: null, durationMs: null, promptTokens: null, completionTokens: null, chunks: 0,
    };
    let response;
    let requestId = "none";
    try {
      response = await fetch(request.path, {
        method: request.method,
        headers: request.headers,
        body: request.body,
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
        signal: controller.signal,
      });
      requestId = response.headers.get(state.config.request_id_header) || "none";
      showHeaders(response);
      const type = response.headers.get("content-type") || "";
      const framed = type.startsWith("application/x-ndjson") ? ndjsonFrame
        : type.startsWith("text/event-stream") ? sseFrame : null;
      if (!response.ok) {
        const body = await response.text();
        raw.textContent = body;
        showError(response, body, requestId);
        return;
      }
      if (framed === null) {
        const body = await response.text();
        metrics.durationMs = performance.now() - started;
        raw.textContent = body.slice(0, RAW_CAP_CHARS);
        text.data = pretty(body);
        const usage = (safeJson(body) || {}).usage;
        if (usage) {
          metrics.promptTokens = usage.prompt_tokens ?? null;
          metrics.completionTokens = usage.completion_tokens ?? null;
        }
        showMetrics(metrics);
        setStatus("done", statusLine(response), requestId);
        return;
      }
      let streamError = null;
      await readStream(response, framed, {
        raw(chunk) {
          if (raw.textContent.length < RAW_CAP_CHARS) raw.append(chunk);
        },
        frame(frame) {
          if (frame.error) streamError = frame.error;
          if (frame.text) {
            metrics.ttftMs ??= performance.now() - started;
            metrics.chunks += 1;
            text.appendData(frame.text);
          }
          if (frame.promptTokens !== undefined) metrics.promptTokens = frame.promptTokens;
          if (frame.completionTokens !== undefined) {
            metrics.completionTokens = frame.completionTokens;
          }
        },
      });
      metrics.durationMs = performance.now() - started;
      showMetrics(metrics);
      if (streamError) {
        output.append(el("span", "stream-error", `\n${JSON.stringify(streamError, null, 2)}`));
        setStatus("error", "stream ended with an error frame", requestId);
      } else {
        setStatus("done", statusLine(response), requestId);
      }
    } catch (error) {
      metrics.durationMs = performance.now() - started;
      showMetrics(metrics);
      if (error.name === "AbortError") {
        setStatus("stopped", "stopped by you", requestId);
      } else {
        setStatus("error", `no answer from the gateway (${error.message})`, requestId);
      }
    } finally {
      state.running = null;
      refresh();
    }
  }

  function showError(response, body, requestId) {
    // The gateway's own error body, in its OpenAI or Ollama shape, exactly as it came.
    const output = $("output");
    output.className = "output error";
    output.textContent = pretty(body);
    setStatus("error", statusLine(response), requestId);
  }

  function safeJson(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function pretty(text) {
    const value = safeJson(text);
    return value === null ? text : JSON.stringify(value, null, 2);
  }

  // ---- copying ----

  async function copyCurl() {
    const text = $("curl").textContent;
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      // Plain http on another host is not a secure context: fall back to selecting the text.
      const range = document.createRange();
      range.selectNodeContents($("curl"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copied = document.execCommand("copy");
    }
    $("curl-copied").textContent = !copied ? "select the text and copy it"
      : state.revealed ? "copied" : "copied (key masked: reveal it for a runnable command)";
  }

  // ---- start ----

  async function start() {
    const key = $("key");
    const remembered = sessionStorage.getItem(KEY_STORE);
    if (remembered) {
      key.value = remembered;
      $("remember").checked = true;
    }
    key.addEventListener("input", () => setKey(key.value));
    $("remember").addEventListener("change", () => setKey(key.value));
    $("key-toggle").addEventListener("click", () => {
      key.type = key.type === "password" ? "text" : "password";
      refresh();
    });
    $("endpoint").addEventListener("change", (event) => selectEndpoint(event.target.value));
    $("model").addEventListener("change", (event) => {
      editBody((body) => { if ("model" in body) body.model = event.target.value; });
    });
    $("models-reload").addEventListener("click", loadModels);
    $("stream").addEventListener("change", (event) => setStream(event.target.checked));
    $("body").addEventListener("input", () => {
      syncStreamBox();
      refresh();
    });
    $("body").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        run();
      }
    });
    $("run").addEventListener("click", run);
    $("stop").addEventListener("click", () => state.running && state.running.abort());
    $("curl-reveal").addEventListener("click", () => {
      state.revealed = !state.revealed;
      refresh();
    });
    $("curl-copy").addEventListener("click", copyCurl);

    const response = await fetch("/playground/endpoints.json", { cache: "no-cache" });
    state.config = await response.json();
    fillEndpoints();
    selectEndpoint(DEFAULT_PATH);
    state.key = key.value.trim();
    refresh();
    await loadModels();
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((error) => setStatus("error", `the playground failed to start: ${error}`));
  });
})();
