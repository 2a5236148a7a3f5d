// The chat page: streams answers from POST /chat_stream (SSE read from a fetch
// body), keeps the conversation in the server session, renders Markdown safely.
//
// Safety rule: model text only ever reaches the page as Text nodes
// (textContent / append(string)). No innerHTML anywhere, so nothing the model
// writes can become markup, and the Content-Security-Policy backs that up.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag) => document.createElement(tag);

  const ui = {
    conversation: $("conversation"),
    empty: $("empty"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    regenerate: $("regenerate"),
    clear: $("clear"),
    notice: $("notice"),
    load: $("load"),
    announce: $("announce"),
    settings: $("settings"),
    settingsToggle: $("settings-toggle"),
    settingsStatus: $("settings-status"),
  };

  const PARAMS = ["temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty"];
  const LOAD_POLL_MS = 3000;
  const NETWORK_LOST = "Could not reach the server. Check the connection and try again; your message is still in the box.";

  let busy = false;
  // The conversation is drawn from the server: a turn sent before that would be wiped
  // by the drawing, so sending waits for it (the typed text stays in the box).
  let loaded = false;
  let controller = null;

  // --- Markdown: a small subset, built as DOM nodes ---------------------------------------

  // One alternative per inline construct; the first that matches at the
  // leftmost position wins, so `code` beats emphasis inside it.
  const INLINE = new RegExp(
    [
      "`([^`]+)`", // 1 code
      "\\[([^\\]]+)\\]\\(([^()\\s]+)\\)", // 2 label, 3 url
      "\\*\\*(\\S(?:.*?\\S)?)\\*\\*", // 4 bold
      "__(\\S(?:.*?\\S)?)__", // 5 bold
      "\\*(\\S(?:[^*]*?\\S)?)\\*", // 6 italic
      "(?<!\\w)_(\\S(?:[^_]*?\\S)?)_(?!\\w)", // 7 italic
    ].join("|"),
    "g",
  );

  function safeUrl(href) {
    let url;
    try {
      url = new URL(href); // relative links have no base here: they stay text
    } catch {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  function appendInline(parent, text) {
    const re = new RegExp(INLINE.source, "g");
    let last = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) parent.append(text.slice(last, m.index));
      if (m[1] !== undefined) {
        const code = el("code");
        code.textContent = m[1];
        parent.append(code);
      } else if (m[2] !== undefined) {
        const href = safeUrl(m[3]);
        if (href === null) {
          parent.append(m[0]);
        } else {
          const a = el("a");
          a.href = href;
          a.rel = "noopener noreferrer";
          a.target = "_blank";
          appendInline(a, m[2]);
          parent.append(a);
        }
      } else if (m[4] !== undefined || m[5] !== undefined) {
        const strong = el("strong");
        appendInline(strong, m[4] ?? m[5]);
        parent.append(strong);
      } else {
        const em = el("em");
        appendInline(em, m[6] ?? m[7]);
        parent.append(em);
      }
      last = re.lastIndex;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function isFenceEnd(line, fence) {
    const t = line.trim();
    return t.length >= fence.length && [...t].every((c) => c === fence[0]);
  }

  // Paragraphs (single newlines kept as line breaks), fenced code, headings,
  // flat lists. An unclosed fence runs to the end, which is what a code block
  // looks like while it is still streaming.
  function renderMarkdown(target, source) {
    const out = document.createDocumentFragment();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    let para = null;
    let list = null;
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = /^\s{0,3}(`{3,}|~{3,})/.exec(line);
      if (fence) {
        para = list = null;
        const body = [];
        for (i += 1; i < lines.length && !isFenceEnd(lines[i], fence[1]); i += 1) body.push(lines[i]);
        i += 1;
        const pre = el("pre");
        const code = el("code");
        code.textContent = body.join("\n");
        pre.append(code);
        out.append(pre);
        continue;
      }
      i += 1;
      if (!line.trim()) {
        para = list = null;
        continue;
      }
      const heading = /^\s{0,3}(#{1,6})\s+(.*?)[\s#]*$/.exec(line);
      if (heading) {
        para = list = null;
        const h = el(`h${Math.min(6, heading[1].length + 2)}`); // h1/h2 belong to the page
        appendInline(h, heading[2]);
        out.append(h);
        continue;
      }
      const item = /^\s{0,3}(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/.exec(line);
      if (item) {
        const tag = item[1] ? "UL" : "OL";
        if (!list || list.tagName !== tag) {
          list = el(tag);
          if (item[2] && item[2] !== "1") list.start = Number(item[2]);
          out.append(list);
        }
        para = null;
        const li = el("li");
        appendInline(li, item[3]);
        list.append(li);
        continue;
      }
      if (list && /^\s{2,}\S/.test(line)) {
        const li = list.lastElementChild;
        li.append(el("br"));
        appendInline(li, line.trim());
        continue;
      }
      list = null;
      if (para) {
        para.append(el("br"));
      } else {
        para = el("p");
        out.append(para);
      }
      appendInline(para, line);
    }
    target.replaceChildren(out);
  }

  // --- the conversation on the page ------------------------------------------------------

  function nearBottom() {
    const c = ui.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 96;
  }

  function scrollToEnd() {
    ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }

  function setBody(msg, text) {
    const body = msg.querySelector(".body");
    if (msg.dataset.role === "user") body.textContent = text;
    else renderMarkdown(body, text);
  }

  function setMeta(msg, text) {
    msg.querySelector(".meta").textContent = text;
  }

  function addMessage(role, text) {
    const msg = el("article");
    msg.className = `msg ${role}`;
    msg.dataset.role = role;
    const who = el("h2");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = el("div");
    body.className = "body";
    const meta = el("p");
    meta.className = "meta";
    msg.append(who, body, meta);
    setBody(msg, text);
    ui.conversation.append(msg);
    ui.empty.hidden = true;
    scrollToEnd();
    return msg;
  }

  function messages() {
    return [...ui.conversation.querySelectorAll("article.msg")];
  }

  function lastAnswer() {
    const all = messages();
    const last = all[all.length - 1];
    return last && last.dataset.role === "assistant" ? last : null;
  }

  function removeMessage(msg) {
    if (msg) msg.remove();
    ui.empty.hidden = messages().length > 0;
  }

  function clearMessages() {
    for (const msg of messages()) msg.remove();
    ui.empty.hidden = false;
  }

  function announce(text) {
    ui.announce.textContent = text;
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  function updateButtons() {
    ui.send.hidden = busy;
    ui.send.disabled = !loaded;
    ui.stop.hidden = !busy;
    ui.regenerate.disabled = busy || !loaded || lastAnswer() === null;
    ui.clear.disabled = busy || !loaded;
  }

  function setBusy(on) {
    busy = on;
    updateButtons();
    if (!on && document.activeElement === document.body) ui.input.focus();
  }

  // --- talking to the gateway ---------------------------------------------------------------

  function seconds(n) {
    return n === 1 ? "1 second" : `${n} seconds`;
  }

  async function refusalMessage(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = (body && body.error && body.error.message) || "";
    } catch {
      // not JSON (a proxy's error page): the status says enough
    }
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    const later = Number.isFinite(retry) ? `in ${seconds(retry)}` : "in a moment";
    switch (response.status) {
      case 429:
        return `The server is busy: all places are taken. Please try again ${later}; your message is still in the box.`;
      case 409:
        return "An answer is already being generated in this conversation (in another tab?). Wait for it to finish, then send again.";
      case 503:
        return `The model is not available right now${detail ? ` (${detail})` : ""}. Please try again ${later}.`;
      case 413:
        return "This message is too large for the server. Please shorten it.";
      default:
        return detail ? `The server refused this: ${detail}` : `The server refused this (HTTP ${response.status}).`;
    }
  }

  // One SSE event block -> {event, data} (data parsed as JSON), or null for
  // keep-alive comments.
  function parseEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return null;
    try {
      return { event, data: JSON.parse(data.join("\n")) };
    } catch {
      return null;
    }
  }

  async function readStream(response, answer, turn) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = blocks.pop();
      let grew = false;
      for (const block of blocks) {
        const ev = parseEvent(block);
        if (ev === null) continue;
        if (ev.event === "delta") {
          turn.text += ev.data.text;
          grew = true;
        } else if (ev.event === "done") {
          turn.ending = "done";
          turn.done = ev.data;
        } else if (ev.event === "error") {
          turn.ending = "error";
          turn.error = ev.data.error || {};
        }
      }
      // Several events in one read are drawn once.
      if (grew) {
        const follow = nearBottom();
        answer.dataset.state = "streaming";
        setMeta(answer, "");
        setBody(answer, turn.text);
        if (follow) scrollToEnd();
      }
      if (turn.ending) {
        reader.cancel().catch(() => {});
        return;
      }
    }
    turn.ending = "interrupted";
  }

  function finishAnswer(answer, turn) {
    answer.dataset.state = turn.ending;
    answer.removeAttribute("aria-busy");
    if (turn.ending === "done") {
      const usage = turn.done.usage || {};
      const limit = turn.done.finish_reason === "length" ? " · reached the token limit" : "";
      setMeta(answer, `${usage.completion_tokens ?? "?"} tokens${limit}`);
      announce("Answer finished.");
    } else if (turn.ending === "stopped") {
      setMeta(answer, "Stopped");
      announce("Answer stopped.");
    } else if (turn.ending === "error" && turn.error.type === "session_store_unavailable") {
      // The whole answer arrived; only the server's copy of the conversation may lack it.
      setMeta(answer, "Not saved on the server.");
      showNotice(`The server could not save this answer (${turn.error.message}); reloading the page may lose it.`);
    } else if (turn.ending === "error") {
      setMeta(answer, "The answer broke off because of a server error.");
      showNotice(`The answer broke off: ${turn.error.message || "server error"}.`);
    } else {
      setMeta(answer, "The connection was lost; this answer is incomplete.");
      showNotice("The connection to the server was lost while the answer was streaming.");
    }
  }

  async function send(regenerate) {
    if (busy || !loaded) return;
    const text = ui.input.value;
    if (!regenerate && !text.trim()) {
      ui.input.focus();
      return;
    }
    const previous = regenerate ? lastAnswer() : null;
    if (regenerate && previous === null) return;
    hideNotice();
    if (previous) previous.remove();
    const question = regenerate ? null : addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.dataset.state = "waiting";
    answer.setAttribute("aria-busy", "true");
    setMeta(answer, "Waiting for the model…");
    controller = new AbortController();
    setBusy(true);

    const turn = { accepted: false, text: "", ending: null, done: null, error: null };
    let refusal = null;
    try {
      const response = await fetch("/chat_stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ user_input: regenerate ? "" : text, regenerate }),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) {
        refusal = await refusalMessage(response);
      } else {
        // Accepted: only now is the typed text safe to drop from the box.
        turn.accepted = true;
        if (!regenerate && ui.input.value === text) ui.input.value = "";
        answer.dataset.messageId = response.headers.get("X-Message-Id") || "";
        await readStream(response, answer, turn);
      }
    } catch (err) {
      if (err && err.name === "AbortError") turn.ending = "stopped";
      else if (turn.accepted) turn.ending = "interrupted";
      else refusal = NETWORK_LOST;
    } finally {
      controller = null;
    }

    if (refusal !== null || !turn.text) {
      // The server keeps no turn that produced no text, so neither does the page:
      // the question goes back into the box and a regenerated answer comes back.
      removeMessage(answer);
      removeMessage(question);
      if (previous) ui.conversation.append(previous);
      ui.empty.hidden = messages().length > 0;
      if (!regenerate && !ui.input.value) ui.input.value = text;
      if (refusal !== null) showNotice(refusal);
      else if (turn.ending === "stopped") announce("Stopped before the answer began; your message is back in the box.");
      else if (turn.ending === "error") showNotice(`No answer: ${turn.error.message || "server error"}.`);
      else if (turn.ending === "done") showNotice("The model gave an empty answer; your message is back in the box.");
      else showNotice("The connection was lost before the answer began; your message is back in the box.");
    } else {
      finishAnswer(answer, turn);
    }
    setBusy(false);
    refreshLoad();
  }

  async function clearConversation() {
    if (busy) return;
    hideNotice();
    try {
      const response = await fetch("/clear_context", { method: "POST", cache: "no-store" });
      if (!response.ok) {
        showNotice(await refusalMessage(response));
        return;
      }
    } catch {
      showNotice("Could not reach the server to clear the conversation.");
      return;
    }
    clearMessages();
    updateButtons();
    announce("Conversation cleared.");
    ui.input.focus();
  }

  async function loadConversation() {
    ui.conversation.setAttribute("aria-busy", "true");
    try {
      const response = await fetch("/get_prompt", { cache: "no-store" });
      if (!response.ok) {
        showNotice(await refusalMessage(response));
        return;
      }
      const data = await response.json();
      clearMessages();
      for (const m of data.messages || []) {
        if (m.role !== "user" && m.role !== "assistant") continue;
        const msg = addMessage(m.role, m.content);
        if (m.role === "assistant") msg.dataset.state = "done";
      }
    } catch {
      showNotice("Could not reach the server to load the conversation.");
    } finally {
      loaded = true;
      ui.conversation.removeAttribute("aria-busy");
      ui.conversation.dataset.loaded = "true";
      updateButtons();
    }
  }

  // --- generation settings ---------------------------------------------------------------------

  function showParams(data) {
    for (const name of PARAMS) {
      const input = ui.settings.elements[name];
      const [low, high] = data.limits[name];
      input.min = String(low);
      input.max = String(high);
      input.value = String(data.params[name]);
      $(`r-${name}`).textContent = `from ${low} to ${high}`;
    }
  }

  async function loadParams() {
    try {
      const response = await fetch("/get_generation_params", { cache: "no-store" });
      if (response.ok) showParams(await response.json());
    } catch {
      ui.settingsStatus.textContent = "Could not load the settings.";
    }
  }

  async function saveParams(event) {
    event.preventDefault();
    const body = {};
    for (const name of PARAMS) {
      const input = ui.settings.elements[name];
      if (input.value.trim() === "") continue;
      const value = Number(input.value);
      if (!Number.isFinite(value)) {
        ui.settingsStatus.textContent = `${input.labels[0].textContent} must be a number.`;
        input.focus();
        return;
      }
      body[name] = value;
    }
    ui.settingsStatus.textContent = "Saving…";
    try {
      const response = await fetch("/set_generation_params", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      if (!response.ok) {
        ui.settingsStatus.textContent = `Not saved. ${await refusalMessage(response)}`;
        ui.settingsStatus.dataset.kind = "error";
        return;
      }
      showParams(await response.json());
      ui.settingsStatus.textContent = "Saved.";
      ui.settingsStatus.dataset.kind = "ok";
    } catch {
      ui.settingsStatus.textContent = "Not saved: could not reach the server.";
      ui.settingsStatus.dataset.kind = "error";
    }
  }

  // --- load indicator ------------------------------------------------------------------------------

  async function refreshLoad() {
    try {
      const response = await fetch("/get_load", { cache: "no-store" });
      if (!response.ok) throw new Error(String(response.status));
      const load = await response.json();
      ui.load.textContent = `Load: ${load.in_flight} of ${load.capacity} generating, ${load.queued} waiting`;
      const full = load.in_flight >= load.capacity;
      ui.load.dataset.level = full && load.queued >= load.queue_size ? "full" : full ? "busy" : "ok";
    } catch {
      ui.load.textContent = "Load: unknown (server unreachable)";
      ui.load.dataset.level = "unknown";
    }
  }

  function pollLoad() {
    if (!document.hidden) refreshLoad();
    window.setTimeout(pollLoad, LOAD_POLL_MS);
  }

  // --- wiring ------------------------------------------------------------------------------------------

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send(false);
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(false);
    } else if (event.key === "Escape" && controller) {
      controller.abort();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  ui.regenerate.addEventListener("click", () => send(true));
  ui.clear.addEventListener("click", clearConversation);
  ui.settings.addEventListener("submit", saveParams);
  ui.settingsToggle.addEventListener("click", () => {
    const open = ui.settings.hidden;
    ui.settings.hidden = !open;
    ui.settingsToggle.setAttribute("aria-expanded", String(open));
    if (open) ui.settings.elements.temperature.focus();
  });

  updateButtons();
  loadConversation();
  loadParams();
  pollLoad();
})();
