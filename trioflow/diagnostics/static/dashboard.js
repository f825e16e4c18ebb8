/* trioflow live page.
 *
 * One websocket (<page base>/ws) brings JSON messages: first a "history"
 * (recent task stream), then a "snapshot" a few times a second (summary,
 * worker rows, per-prefix progress, the tasks finished since the previous
 * snapshot).  The page keeps the task stream of the last minute itself and
 * redraws canvases on animation frames.  When the socket closes it
 * reconnects by itself with exponential backoff (0.5 s doubling to 15 s,
 * with jitter); a silent socket is closed and reopened too.
 *
 * No dependencies, no network access beyond the page's own origin.
 */
(function () {
  "use strict";

  const PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
    "#499894", "#86bcb6", "#f1ce63", "#d37295", "#a0cbe8", "#ffbe7d", "#8cd17d", "#bab0ac",
  ];
  const WINDOWS = [5, 15, 60];
  const KEEP_SECONDS = 65;
  const MAX_STREAM = 40000;
  const RATE_SECONDS = 120;

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  const S = {
    snap: null,
    kind: null,
    serverId: null,
    stream: [], // [key, prefix, worker, thread, start, stop]
    transfers: [], // [worker, peer, nbytes, start, stop, nkeys]
    historySeq: -1,
    colors: new Map(),
    rate: [], // [time, tasks/s]
    offset: 0, // server clock - local clock, seconds
    window: 15,
    ws: null,
    attempt: 0,
    retryAt: 0,
    timer: null,
    lastMessage: 0,
    interval: 0.25,
    dirty: false,
    rows: [], // task stream rows of the last frame
  };
  window.__trioflow = S;

  // ---------------------------------------------------------------- formatting

  function fmtBytes(n) {
    if (n == null || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    n = Math.max(0, n);
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    const digits = i === 0 ? 0 : n < 10 ? 2 : n < 100 ? 1 : 0;
    return n.toFixed(digits) + " " + units[i];
  }
  function fmtInt(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
  function fmtRate(n) { return n >= 100 ? fmtInt(n) : n >= 10 ? n.toFixed(1) : n.toFixed(2); }
  function fmtDur(s) {
    if (s == null || !isFinite(s)) return "–";
    if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : s < 0.1 ? 1 : 0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    return fmtUptime(s);
  }
  function fmtUptime(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    return s + "s";
  }
  function color(prefix) {
    let c = S.colors.get(prefix);
    if (!c) {
      c = PALETTE[S.colors.size % PALETTE.length];
      S.colors.set(prefix, c);
    }
    return c;
  }
  function hostOf(address) {
    const rest = String(address).split("://").pop();
    const i = rest.lastIndexOf(":");
    let host = i > 0 ? rest.slice(0, i) : rest;
    if (host === "0.0.0.0" || host === "" || host === "[::]") host = window.location.hostname;
    return host;
  }
  function serverNow() { return Date.now() / 1000 + S.offset; }

  // ---------------------------------------------------------------- connection

  function wsUrl() {
    let base = window.location.pathname.replace(/(status|index\.html)$/, "");
    if (!base.endsWith("/")) base += "/";
    const u = new URL(base + "ws", window.location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.toString();
  }

  function setStatus(status, text) {
    document.body.dataset.status = status;
    $("conn-text").textContent = text;
    const banner = $("banner");
    if (status === "down") {
      banner.hidden = false;
      banner.textContent = "Lost the connection to the " + (S.kind || "server") + ". " + text.charAt(0).toUpperCase() + text.slice(1) + "; the page shows the last data it received.";
    } else {
      banner.hidden = true;
    }
  }

  function connect() {
    clearTimeout(S.timer);
    S.timer = null;
    setStatus(S.attempt ? "down" : "connecting", S.attempt ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      retry();
      return;
    }
    S.ws = ws;
    ws.onopen = () => { S.lastMessage = performance.now(); };
    ws.onmessage = (ev) => {
      S.lastMessage = performance.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "history") onHistory(msg);
      else if (msg.type === "snapshot") onSnapshot(msg);
    };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      retry();
    };
  }

  function retry() {
    const delay = Math.min(15000, 500 * Math.pow(2, S.attempt)) * (0.75 + 0.5 * Math.random());
    S.attempt++;
    S.retryAt = performance.now() + delay;
    showCountdown();
    S.timer = setTimeout(connect, delay);
  }

  function showCountdown() {
    if (!S.timer && S.retryAt === 0) return;
    const left = Math.max(0, S.retryAt - performance.now());
    setStatus("down", "reconnecting in " + Math.ceil(left / 1000) + " s");
  }

  setInterval(() => {
    if (S.timer) showCountdown();
    // A socket that says nothing for a long time is dead: reopen it.
    const limit = Math.max(6000, 20000 * S.interval);
    if (S.ws && S.ws.readyState === 1 && performance.now() - S.lastMessage > limit) {
      const ws = S.ws;
      S.ws = null;
      ws.close();
      retry();
    }
  }, 500);

  // ---------------------------------------------------------------- messages

  function onHistory(msg) {
    S.stream = msg.stream || [];
    S.transfers = msg.transfers || [];
    S.historySeq = msg.seq;
    S.rate = rateFromStream(S.stream);
  }

  // Tasks per second, one point a second, from a task stream (for a page
  // that just connected); the first second may be cut short, so it is left out.
  function rateFromStream(stream) {
    if (stream.length < 2) return [];
    const bins = new Map();
    let lo = Infinity, hi = -Infinity;
    for (const e of stream) {
      const b = Math.floor(e[5]);
      bins.set(b, (bins.get(b) || 0) + 1);
      if (b < lo) lo = b;
      if (b > hi) hi = b;
    }
    const out = [];
    for (let b = lo + 1; b < hi; b++) out.push([b + 0.5, bins.get(b) || 0]);
    return out.slice(-RATE_SECONDS);
  }

  function onSnapshot(msg) {
    const id = msg.summary && msg.summary.id;
    S.serverId = id;
    S.kind = msg.kind;
    S.interval = msg.interval || 0.25;
    S.offset = msg.time - Date.now() / 1000;
    if (msg.seq > S.historySeq) {
      for (const e of msg.stream) S.stream.push(e);
      for (const t of msg.transfers) S.transfers.push(t);
    }
    const cutoff = msg.time - KEEP_SECONDS;
    if (S.stream.length && (S.stream[0][5] < cutoff || S.stream.length > MAX_STREAM)) {
      S.stream = S.stream.filter((e) => e[5] >= cutoff).slice(-MAX_STREAM);
    }
    if (S.transfers.length && S.transfers[0][4] < cutoff) {
      S.transfers = S.transfers.filter((t) => t[4] >= cutoff).slice(-MAX_STREAM);
    }
    S.rate.push([msg.time, msg.summary.tasks_per_s || 0]);
    while (S.rate.length && S.rate[0][0] < msg.time - RATE_SECONDS) S.rate.shift();
    S.snap = msg;
    if (S.attempt || document.body.dataset.status !== "live") {
      S.attempt = 0;
      S.retryAt = 0;
      setStatus("live", "live");
    }
    S.dirty = true;
  }

  // ---------------------------------------------------------------- header & cards

  function renderHeader(m) {
    const s = m.summary;
    const kind = m.kind === "worker" ? "worker" : "scheduler";
    $("kind").textContent = kind;
    const addr = m.kind === "worker" ? (s.name && s.name !== s.address ? s.name + " · " : "") + s.address : s.address;
    $("address").textContent = addr;
    document.title = (m.kind === "worker" ? "Worker " + (s.name || s.address) : "Scheduler " + s.address) + " · trioflow";
    $("conn-text").textContent = "live · " + Math.round(1 / (m.interval || 0.25)) + "/s";
    const d = m.dashboard || {};
    $("footer-text").textContent =
      "trioflow " + s.version + " · snapshot #" + m.seq + " built in " + (d.build_ms != null ? d.build_ms.toFixed(2) : "–") + " ms · " +
      (d.viewers || 0) + (d.viewers === 1 ? " viewer" : " viewers");
  }

  const cardEls = new Map();
  function card(id, label, accent) {
    let c = cardEls.get(id);
    if (!c) {
      const root = el("div", "card");
      root.id = "card-" + id;
      root.style.setProperty("--card-accent", accent);
      const lab = el("div", "label", label);
      const value = el("div", "value");
      const sub = el("div", "sub");
      root.append(lab, value, sub);
      $("cards").appendChild(root);
      c = { root, value, sub, extra: null };
      cardEls.set(id, c);
    }
    return c;
  }
  function setValue(c, big, small) {
    c.value.textContent = big;
    if (small) c.value.appendChild(el("small", null, small));
  }
  function chips(c, items) {
    c.sub.textContent = "";
    c.sub.classList.add("chips");
    for (const [cls, text, col] of items) {
      const s = el("span", "chip " + cls);
      const i = el("i");
      i.style.background = col;
      s.append(i, document.createTextNode(text));
      c.sub.appendChild(s);
    }
  }
  function memoryBar(parent, mem) {
    let bar = parent.querySelector(".meter");
    if (!bar) {
      bar = meter(null, false);
      bar.classList.add("minibar");
      parent.appendChild(bar);
    }
    updateMeter(bar, mem, mem.limit || Math.max(mem.memory + mem.spilled, 1));
  }

  function renderCards(m) {
    const s = m.summary;
    const tc = s.task_counts || {};
    const mem = s.memory || {};
    if (m.kind === "worker") {
      const w = m.workers[0] || {};
      let c = card("status", "Worker", "#4e79a7");
      setValue(c, w.status || s.status);
      c.sub.textContent = fmtInt(s.threads) + (s.threads === 1 ? " thread" : " threads") + " · " + fmtInt(w.processing) + " processing";
      c = card("tasks", "Tasks here", "#f28e2b");
      setValue(c, fmtInt(s.tasks));
      chips(c, [
        ["", fmtInt(tc.executing || 0) + " executing", "var(--processing)"],
        ["", fmtInt((tc.ready || 0) + (tc.waiting || 0)) + " queued", "#c4ccd8"],
        ["", fmtInt(tc.memory || 0) + " in memory", "var(--memory)"],
      ]);
      c = card("rate", "Throughput", "#59a14f");
      setValue(c, fmtRate(s.tasks_per_s), "tasks/s");
      c.sub.textContent = fmtInt(s.executed) + " executed";
      c = card("memory", "Memory", "#76b7b2");
      setValue(c, fmtBytes(mem.memory), mem.limit ? "of " + fmtBytes(mem.limit) : "no limit");
      c.sub.textContent = fmtBytes(mem.managed) + " managed · " + fmtBytes(mem.spilled) + " spilled";
      c = card("cpu", "CPU", "#b07aa1");
      setValue(c, Math.round(w.cpu || 0) + "%");
      c.sub.textContent = fmtInt(w.held) + " keys held";
      c = card("transfer", "Transfers", "#edc948");
      setValue(c, fmtBytes(s.bytes_transferred));
      c.sub.textContent = "fetched from peers · " + fmtBytes(s.bandwidth) + "/s";
      return;
    }
    let c = card("workers", "Workers", "#4e79a7");
    const paused = m.workers.filter((w) => w.status === "paused").length;
    setValue(c, fmtInt(s.workers));
    c.sub.textContent = fmtInt(s.threads) + (s.threads === 1 ? " thread" : " threads") + (paused ? " · " + paused + " paused" : "") + " · " + fmtInt(s.clients) + (s.clients === 1 ? " client" : " clients");
    c = card("tasks", "Tasks", "#f28e2b");
    setValue(c, fmtInt(s.tasks));
    chips(c, [
      ["", fmtInt(tc.processing || 0) + " running", "var(--processing)"],
      ["", fmtInt((tc.waiting || 0) + (tc["no-worker"] || 0)) + " waiting", "#c4ccd8"],
      ["", fmtInt(tc.memory || 0) + " in memory", "var(--memory)"],
      ["", fmtInt(tc.erred || 0) + " erred", "var(--erred)"],
    ]);
    c = card("rate", "Throughput", "#59a14f");
    setValue(c, fmtRate(s.tasks_per_s), "tasks/s");
    c.sub.textContent = fmtInt(s.events) + " scheduler events";
    c = card("memory", "Cluster memory", "#76b7b2");
    setValue(c, fmtBytes(mem.memory), mem.limit ? "of " + fmtBytes(mem.limit) : "no limit set");
    memoryBar(c.sub, mem);
    c = card("cpu", "Worker CPU", "#b07aa1");
    const cpus = m.workers.map((w) => w.cpu || 0);
    const avg = cpus.length ? cpus.reduce((a, b) => a + b, 0) / cpus.length : 0;
    setValue(c, Math.round(avg) + "%", "avg");
    c.sub.textContent = "scheduler " + Math.round((s.process || {}).cpu || 0) + "% · " + fmtBytes((s.process || {}).memory);
    c = card("uptime", "Uptime", "#9c755f");
    setValue(c, fmtUptime(s.uptime));
    c.sub.textContent = "bandwidth " + fmtBytes(s.bandwidth) + "/s";
  }

  // ---------------------------------------------------------------- meters

  function meter(extraClass, withText) {
    const root = el("div", "meter" + (extraClass ? " " + extraClass : ""));
    root.appendChild(el("div", "bar"));
    if (withText !== false) root.appendChild(el("span", "txt"));
    return root;
  }
  function updateMeter(root, w, scale) {
    const bar = root.firstChild;
    if (!bar.childNodes.length) {
      for (const cls of ["seg-managed", "seg-unmanaged", "seg-spilled"]) bar.appendChild(el("span", cls));
    }
    const pct = (x) => Math.max(0, Math.min(100, (100 * x) / scale));
    const a = pct(w.managed), b = Math.min(100 - a, pct(w.unmanaged)), c = Math.min(100 - a - b, pct(w.spilled));
    bar.childNodes[0].style.width = a + "%";
    bar.childNodes[1].style.width = b + "%";
    bar.childNodes[2].style.width = c + "%";
    const frac = w.memory_limit || w.limit ? (w.memory || 0) / (w.memory_limit || w.limit) : 0;
    root.classList.toggle("high", frac >= 0.8 && frac < 0.95);
    root.classList.toggle("critical", frac >= 0.95);
    const txt = root.querySelector(".txt");
    if (txt) txt.textContent = fmtBytes(w.memory) + (w.memory_limit ? " / " + fmtBytes(w.memory_limit) : "");
    root.title =
      "managed " + fmtBytes(w.managed) + "\nunmanaged " + fmtBytes(w.unmanaged) + "\nspilled " + fmtBytes(w.spilled) +
      ((w.memory_limit || w.limit) ? "\nlimit " + fmtBytes(w.memory_limit || w.limit) : "\nno limit");
  }

  // ---------------------------------------------------------------- workers table

  const workerRows = new Map();
  function renderWorkers(m) {
    const body = $("workers-body");
    const workers = m.workers || [];
    $("workers-count").textContent = "(" + fmtInt(m.summary.workers) + ")" + (m.summary.truncated_workers ? " — first " + workers.length + " shown" : "");
    const empty = body.querySelector(".empty-row");
    if (empty && workers.length) empty.remove();
    if (!workers.length && !empty) {
      const tr = el("tr", "empty-row");
      const td = el("td", "empty", "No workers yet");
      td.colSpan = 9;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    let scale = 0;
    for (const w of workers) if (!w.memory_limit) scale = Math.max(scale, (w.memory || 0) + (w.spilled || 0));
    const seen = new Set();
    let prev = null;
    for (const w of workers) {
      seen.add(w.address);
      let r = workerRows.get(w.address);
      if (!r) {
        r = makeWorkerRow();
        workerRows.set(w.address, r);
      }
      updateWorkerRow(r, w, scale);
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== r.tr) body.insertBefore(r.tr, want);
      prev = r.tr;
    }
    for (const [addr, r] of workerRows) {
      if (!seen.has(addr)) {
        r.tr.remove();
        workerRows.delete(addr);
      }
    }
  }
  function makeWorkerRow() {
    const tr = el("tr", "wrow");
    const cells = {};
    for (const name of ["name", "addr", "threads", "mem", "cpu", "processing", "held", "bw", "status"]) {
      const td = el("td", name);
      if (["threads", "processing", "held", "bw"].includes(name)) td.classList.add("num");
      cells[name] = td;
      tr.appendChild(td);
    }
    cells.memMeter = meter();
    cells.mem.appendChild(cells.memMeter);
    cells.cpuMeter = meter("cpu");
    cells.cpuMeter.firstChild.appendChild(el("span", "cpu-fill"));
    cells.cpu.appendChild(cells.cpuMeter);
    cells.pill = el("span", "pill");
    cells.status.appendChild(cells.pill);
    return { tr, cells };
  }
  function updateWorkerRow(r, w, scale) {
    const c = r.cells;
    c.name.textContent = "";
    if (w.dashboard && S.kind !== "worker") {
      const a = el("a", null, w.name);
      a.href = window.location.protocol + "//" + hostOf(w.address) + ":" + w.dashboard + "/status";
      a.title = "this worker's own page";
      c.name.appendChild(a);
    } else {
      c.name.textContent = w.name;
    }
    c.addr.textContent = w.address;
    c.threads.textContent = w.nthreads;
    updateMeter(c.memMeter, w, w.memory_limit || scale || 1);
    const cpu = w.cpu || 0;
    c.cpuMeter.firstChild.firstChild.style.width = Math.min(100, cpu / Math.max(1, w.nthreads)) + "%";
    c.cpuMeter.classList.toggle("hot", cpu / Math.max(1, w.nthreads) > 85);
    c.cpuMeter.lastChild.textContent = Math.round(cpu) + "%";
    c.processing.textContent = fmtInt(w.processing);
    c.processing.title = fmtInt(w.executing) + " executing, " + fmtInt(w.ready) + " ready on the worker";
    c.held.textContent = "";
    c.held.append(document.createTextNode(fmtInt(w.held) + " "), el("small", null, fmtBytes(w.nbytes)));
    c.held.classList.add("held");
    c.bw.textContent = fmtBytes(w.bandwidth) + "/s";
    c.pill.textContent = w.status;
    c.pill.className = "pill " + w.status;
    r.tr.dataset.address = w.address;
  }

  // ---------------------------------------------------------------- progress

  const progRows = new Map();
  function renderProgress(m) {
    const box = $("progress");
    const prefixes = m.prefixes || [];
    const empty = box.querySelector(".empty");
    if (prefixes.length && empty) empty.remove();
    if (!prefixes.length && !empty) box.appendChild(el("div", "empty", "No tasks right now"));
    const seen = new Set();
    let prev = null;
    for (const p of prefixes) {
      seen.add(p.name);
      let r = progRows.get(p.name);
      if (!r) {
        r = makeProgRow(p.name);
        progRows.set(p.name, r);
      }
      updateProgRow(r, p);
      const want = prev ? prev.nextSibling : box.firstChild;
      if (want !== r.root) box.insertBefore(r.root, want);
      prev = r.root;
    }
    for (const [name, r] of progRows) {
      if (!seen.has(name)) {
        r.root.remove();
        progRows.delete(name);
      }
    }
  }
  function makeProgRow(name) {
    const root = el("div", "prow");
    root.dataset.prefix = name;
    const pname = el("div", "pname");
    const n = el("div", "n");
    const sw = el("i", "sw");
    sw.style.background = color(name);
    n.append(sw, el("span", null, name));
    n.title = name;
    const d = el("div", "d");
    pname.append(n, d);
    const bar = el("div", "pbar");
    const segs = {};
    for (const k of ["done", "memory", "processing", "waiting", "erred"]) {
      segs[k] = el("span", "s-" + k);
      bar.appendChild(segs[k]);
    }
    segs.done.style.background = color(name);
    segs.memory.style.background = color(name);
    segs.processing.style.backgroundColor = color(name);
    const count = el("div", "pcount");
    root.append(pname, bar, count);
    return { root, segs, d, count, bar };
  }
  function updateProgRow(r, p) {
    const total = Math.max(1, p.total);
    const pct = (x) => (100 * x) / total + "%";
    r.segs.done.style.width = pct(p.released);
    r.segs.memory.style.width = pct(p.memory);
    r.segs.processing.style.width = pct(p.processing);
    r.segs.waiting.style.width = pct(p.waiting);
    r.segs.erred.style.width = pct(p.erred);
    const started = p.processing || p.memory || p.released || p.erred;
    r.d.textContent = p.duration != null ? "avg " + fmtDur(p.duration) : started ? "" : "not started";
    const done = p.released + p.memory + p.erred;
    r.count.textContent = "";
    const top = el("div", "ptot");
    top.append(el("b", null, fmtInt(done)), document.createTextNode(" / " + fmtInt(p.total)));
    const bits = el("div", "pbits");
    const parts = [];
    if (p.processing) parts.push(fmtInt(p.processing) + " running");
    if (p.waiting) parts.push(fmtInt(p.waiting) + " waiting");
    if (p.memory) parts.push(fmtInt(p.memory) + " in memory");
    bits.textContent = parts.length ? parts.join(" · ") : "done";
    if (p.erred) bits.append(document.createTextNode(" · "), el("span", "err", fmtInt(p.erred) + " erred"));
    r.count.append(top, bits);
    r.bar.title =
      p.name + "\n" + fmtInt(p.released) + " done (released)\n" + fmtInt(p.memory) + " in memory\n" +
      fmtInt(p.processing) + " processing\n" + fmtInt(p.waiting) + " waiting" + (p.no_worker ? " (" + p.no_worker + " with no worker)" : "") +
      "\n" + fmtInt(p.erred) + " erred";
  }

  // ---------------------------------------------------------------- bandwidth

  const bwRows = new Map();
  function renderBandwidth(m) {
    const box = $("bandwidth");
    const workers = (m.workers || []).slice(0, 50);
    let max = 1;
    for (const w of workers) max = Math.max(max, w.bandwidth || 0);
    const seen = new Set();
    for (const w of workers) {
      seen.add(w.address);
      let r = bwRows.get(w.address);
      if (!r) {
        const root = el("div", "bwrow");
        const nm = el("div", "nm");
        const bar = el("div", "bwbar");
        bar.appendChild(el("span"));
        const v = el("div", "v");
        root.append(nm, bar, v);
        box.appendChild(root);
        r = { root, nm, bar, v };
        bwRows.set(w.address, r);
      }
      r.nm.textContent = w.name;
      r.nm.title = w.address;
      r.bar.firstChild.style.width = (100 * (w.bandwidth || 0)) / max + "%";
      r.v.textContent = fmtBytes(w.bandwidth) + "/s";
    }
    for (const [addr, r] of bwRows) {
      if (!seen.has(addr)) {
        r.root.remove();
        bwRows.delete(addr);
      }
    }
    const s = m.summary;
    $("bw-total").textContent = (m.kind === "worker" ? fmtBytes(s.bytes_transferred) + " fetched · " : "") + "estimate per worker";
    $("rate-now").textContent = fmtRate(s.tasks_per_s) + " tasks/s now";
  }

  // ---------------------------------------------------------------- canvases

  function sizeCanvas(canvas, cssHeight) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.parentElement.clientWidth;
    canvas.style.height = cssHeight + "px";
    const W = Math.round(w * dpr), H = Math.round(cssHeight * dpr);
    if (canvas.width !== W || canvas.height !== H) {
      canvas.width = W;
      canvas.height = H;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, cssHeight);
    return [ctx, w];
  }

  function streamRows(m) {
    const rows = [];
    const index = new Map();
    const workers = m.workers || [];
    const extraThreads = new Map();
    for (const e of S.stream) {
      const n = extraThreads.get(e[2]) || 0;
      if (e[3] + 1 > n) extraThreads.set(e[2], e[3] + 1);
    }
    const transferWorkers = new Set(S.transfers.map((t) => t[0]));
    // With very many threads, one row per worker keeps the chart readable.
    let threads = 0;
    for (const w of workers) threads += Math.max(w.nthreads, extraThreads.get(w.address) || 0);
    const collapse = threads > 160;
    workers.forEach((w, wi) => {
      if (collapse) {
        index.set(w.address + "|*", rows.length);
        rows.push({ worker: w.address, name: w.name, thread: "*", wi, first: true });
        return;
      }
      const n = Math.max(w.nthreads, extraThreads.get(w.address) || 0);
      for (let t = 0; t < n; t++) {
        index.set(w.address + "|" + t, rows.length);
        rows.push({ worker: w.address, name: w.name, thread: t, wi, first: t === 0 });
      }
      if (transferWorkers.has(w.address)) {
        index.set(w.address + "|transfer", rows.length);
        rows.push({ worker: w.address, name: w.name, thread: -1, wi, transfer: true });
      }
    });
    return [rows, index];
  }

  const GUTTER = 150;
  const AXIS = 20;
  function drawStream() {
    const m = S.snap;
    const canvas = $("stream");
    const [rows, index] = streamRows(m);
    const n = rows.length;
    // Rows share about 260 px, between 4 and 26 px each.
    const rowH = Math.max(4, Math.min(26, Math.floor(260 / Math.max(1, n))));
    const transferH = Math.max(4, Math.round(rowH * 0.5));
    let height = AXIS + 6;
    const ys = [];
    for (const r of rows) {
      ys.push(height - AXIS - 6 + 4);
      height += r.transfer ? transferH : rowH;
    }
    height = Math.max(height, 90);
    const [ctx, width] = sizeCanvas(canvas, height);
    const plotW = width - GUTTER - 8;
    const now = serverNow();
    const win = S.window;
    const t0 = now - win;
    const xOf = (t) => GUTTER + ((t - t0) / win) * plotW;

    // Worker bands and labels.
    ctx.font = "11px " + getComputedStyle(document.body).fontFamily;
    ctx.textBaseline = "middle";
    for (let i = 0; i < n; i++) {
      const r = rows[i];
      const h = r.transfer ? transferH : rowH;
      if (r.wi % 2 === 0) {
        ctx.fillStyle = "#f6f8fb";
        ctx.fillRect(0, ys[i], width, h);
      }
      let label = null;
      if (r.transfer) label = rowH >= 8 ? "⇄ transfers" : null;
      else if (r.first) label = r.thread === "*" ? r.name : r.name + " · " + r.thread;
      else if (rowH >= 14) label = "      · " + r.thread;
      if (label) {
        ctx.fillStyle = r.transfer ? "#c0504d" : "#4b5565";
        ctx.fillText(fitText(ctx, label, GUTTER - 12), 6, ys[i] + h / 2);
      }
    }
    // Time grid.
    const step = win <= 5 ? 1 : win <= 15 ? 2 : 10;
    ctx.strokeStyle = "#e6e9ef";
    ctx.fillStyle = "#7b8494";
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    const top = ys.length ? ys[0] : 4;
    for (let k = 0; k <= win; k += step) {
      const x = Math.round(GUTTER + plotW - (k / win) * plotW) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, height - AXIS + 2);
      ctx.stroke();
      ctx.textAlign = k === 0 ? "right" : "center";
      ctx.fillText(k === 0 ? "now" : "−" + k + " s", k === 0 ? x + 0.5 : x, height - AXIS / 2 + 2);
    }
    ctx.textAlign = "left";

    // Bars.
    let drawn = 0;
    for (const e of S.stream) {
      if (e[5] < t0) continue;
      let i = index.get(e[2] + "|" + e[3]);
      if (i === undefined) i = index.get(e[2] + "|*");
      if (i === undefined) continue;
      const x0 = Math.max(GUTTER, xOf(e[4]));
      const x1 = Math.min(GUTTER + plotW, xOf(e[5]));
      if (x1 < GUTTER) continue;
      ctx.fillStyle = color(e[1]);
      ctx.fillRect(x0, ys[i] + 1, Math.max(1, x1 - x0 - 0.5), rowH - 2);
      drawn++;
    }
    ctx.fillStyle = "rgba(214, 69, 65, 0.8)";
    for (const t of S.transfers) {
      if (t[4] < t0) continue;
      const i = index.get(t[0] + "|transfer");
      if (i === undefined) continue;
      const x0 = Math.max(GUTTER, xOf(t[3]));
      const x1 = Math.min(GUTTER + plotW, xOf(t[4]));
      ctx.fillRect(x0, ys[i] + 1, Math.max(1, x1 - x0), transferH - 2);
      drawn++;
    }
    if (!n) {
      ctx.fillStyle = "#7b8494";
      ctx.fillText("No workers connected", GUTTER, 30);
    } else if (!drawn) {
      ctx.fillStyle = "#9aa3b2";
      ctx.fillText("idle — no task finished in the last " + win + " s", GUTTER + 8, ys[0] + rowH / 2);
    }
    canvas.dataset.bars = String(drawn);
    S.rows = { rows, ys, rowH, transferH, t0, win, plotW };
    renderLegend();
  }

  function fitText(ctx, text, max) {
    if (ctx.measureText(text).width <= max) return text;
    while (text.length > 2 && ctx.measureText(text + "…").width > max) text = text.slice(0, -1);
    return text + "…";
  }

  let legendKey = "";
  function renderLegend() {
    const t0 = serverNow() - S.window;
    const names = [];
    const seen = new Set();
    for (let i = S.stream.length - 1; i >= 0 && names.length < 14; i--) {
      const e = S.stream[i];
      if (e[5] < t0) break;
      if (!seen.has(e[1])) {
        seen.add(e[1]);
        names.push(e[1]);
      }
    }
    names.sort();
    const key = names.join("\u0000") + (S.transfers.length ? "|t" : "");
    if (key === legendKey) return;
    legendKey = key;
    const box = $("legend");
    box.textContent = "";
    for (const name of names) {
      const s = el("span");
      const i = el("i", "sw");
      i.style.background = color(name);
      s.append(i, document.createTextNode(name));
      box.appendChild(s);
    }
    if (S.transfers.length) {
      const s = el("span");
      const i = el("i", "sw");
      i.style.background = "rgba(214, 69, 65, 0.8)";
      s.append(i, document.createTextNode("transfer"));
      box.appendChild(s);
    }
  }

  function drawRate() {
    const canvas = $("rate");
    const [ctx, width] = sizeCanvas(canvas, 120);
    const now = serverNow();
    const left = 36, right = 8, top = 10, bottom = 18;
    const plotW = width - left - right, plotH = 120 - top - bottom;
    let max = 1;
    for (const [, v] of S.rate) max = Math.max(max, v);
    max = niceCeil(max * 1.1);
    // The time axis grows with the data, from 30 s up to two minutes.
    const span = S.rate.length ? Math.min(RATE_SECONDS, Math.max(30, Math.ceil((now - S.rate[0][0]) / 30) * 30)) : 30;
    const xOf = (t) => left + ((t - (now - span)) / span) * plotW;
    const yOf = (v) => top + plotH - (v / max) * plotH;
    ctx.font = "10.5px " + getComputedStyle(document.body).fontFamily;
    ctx.fillStyle = "#7b8494";
    ctx.strokeStyle = "#e6e9ef";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(yOf(max * f)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillText(fmtShort(max * f), left - 5, y);
    }
    ctx.textAlign = "center";
    const tick = span <= 30 ? 10 : span <= 60 ? 15 : 30;
    for (let k = span; k >= 0; k -= tick) {
      ctx.textAlign = k === span ? "left" : k === 0 ? "right" : "center";
      ctx.fillText(k ? "−" + k + " s" : "now", xOf(now - k), 120 - bottom / 2 + 2);
    }
    if (S.rate.length > 1) {
      ctx.beginPath();
      ctx.moveTo(xOf(S.rate[0][0]), yOf(0));
      for (const [t, v] of S.rate) ctx.lineTo(xOf(t), yOf(v));
      ctx.lineTo(xOf(S.rate[S.rate.length - 1][0]), yOf(0));
      ctx.closePath();
      ctx.fillStyle = "rgba(89, 161, 79, 0.16)";
      ctx.fill();
      ctx.beginPath();
      S.rate.forEach(([t, v], i) => (i ? ctx.lineTo(xOf(t), yOf(v)) : ctx.moveTo(xOf(t), yOf(v))));
      ctx.strokeStyle = "#59a14f";
      ctx.lineWidth = 1.6;
      ctx.stroke();
      ctx.lineWidth = 1;
    }
  }
  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function fmtShort(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + "k";
    return v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
  }

  // ---------------------------------------------------------------- tooltip

  function onStreamMove(ev) {
    const tip = $("tooltip");
    const info = S.rows;
    if (!info || !info.rows) return;
    const rect = ev.target.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    let row = -1;
    for (let i = 0; i < info.rows.length; i++) {
      const h = info.rows[i].transfer ? info.transferH : info.rowH;
      if (y >= info.ys[i] && y < info.ys[i] + h) { row = i; break; }
    }
    if (row < 0 || x < GUTTER) { tip.hidden = true; return; }
    const r = info.rows[row];
    const t = info.t0 + ((x - GUTTER) / info.plotW) * info.win;
    const slack = (3 / info.plotW) * info.win;
    let hit = null;
    if (r.transfer) {
      for (const e of S.transfers) if (e[0] === r.worker && e[3] - slack <= t && t <= e[4] + slack) hit = e;
    } else {
      for (const e of S.stream) if (e[2] === r.worker && (r.thread === "*" || e[3] === r.thread) && e[4] - slack <= t && t <= e[5] + slack) hit = e;
    }
    if (!hit) { tip.hidden = true; return; }
    tip.textContent = "";
    if (r.transfer) {
      tip.append(el("b", null, "transfer from " + hit[1]), el("br"), document.createTextNode(fmtBytes(hit[2]) + " · " + hit[5] + " keys · " + fmtDur(hit[4] - hit[3])));
    } else {
      tip.append(el("b", null, hit[1]), document.createTextNode(" · " + fmtDur(hit[5] - hit[4])), el("br"), el("span", "k", hit[0]), el("br"),
        document.createTextNode(r.name + ", thread " + r.thread));
    }
    tip.hidden = false;
    const tw = tip.offsetWidth;
    tip.style.left = Math.min(x + 14, rect.width - tw - 4) + "px";
    tip.style.top = y + 14 + "px";
  }

  // ---------------------------------------------------------------- frame loop

  function render() {
    const m = S.snap;
    if (!m) return;
    if (S.dirty) {
      S.dirty = false;
      renderHeader(m);
      renderCards(m);
      renderProgress(m);
      renderWorkers(m);
      renderBandwidth(m);
      document.body.dataset.seq = String(m.seq);
      document.body.dataset.kind = m.kind;
    }
    drawStream();
    drawRate();
  }

  let lastFrame = 0;
  function frame(ts) {
    // About 20 frames a second is smooth enough for a moving timeline.
    if (ts - lastFrame >= 48 && document.visibilityState !== "hidden") {
      lastFrame = ts;
      try { render(); } catch (e) { console.error(e); }
    }
    window.requestAnimationFrame(frame);
  }

  function setupWindowButtons() {
    const box = $("window-buttons");
    for (const w of WINDOWS) {
      const b = el("button", w === S.window ? "on" : null, w + " s");
      b.type = "button";
      b.addEventListener("click", () => {
        S.window = w;
        for (const o of box.children) o.classList.toggle("on", o === b);
      });
      box.appendChild(b);
    }
  }

  setupWindowButtons();
  $("stream").addEventListener("mousemove", onStreamMove);
  $("stream").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  window.requestAnimationFrame(frame);
  connect();
})();
