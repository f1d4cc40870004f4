// ringbus dashboard: polls api/queues once per interval and draws the table and SVG charts.
// Every text that comes from the bus (queue names, errors) goes in through textContent or an attribute value,
// never as markup, so a queue named like an HTML tag shows as its name.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES = ["depth", "in_flight", "dead_lettered", "send_rate", "ack_rate", "queue_wait_p99", "end_to_end_p99"];
  const CHART = { width: 560, height: 190, left: 52, right: 12, top: 12, bottom: 26 };
  const state = {
    intervalMs: 1000,   // from the server's snapshot
    points: 300,        // history kept per queue, from the server
    history: new Map(), // queue name -> {t: [...], depth: [...], ...}
    selected: null,     // the queue the charts show
    pinned: false,      // true once a row was clicked: the charts stop following the busiest queue
    doc: null,          // the latest snapshot
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, props, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "–");
  const fmtRate = (v) => (isNum(v) ? (v >= 100 ? v.toFixed(0) : v.toFixed(1)) : "–");
  const fmtMs = (v) => (isNum(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : "–");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    try {
      return await response.json();
    } catch (err) {
      throw new Error(`${path} answered HTTP ${response.status} without JSON`);
    }
  }

  // -- history ---------------------------------------------------------------------------------------------------
  function seriesOf(name) {
    let s = state.history.get(name);
    if (!s) {
      s = { t: [] };
      for (const key of SERIES) s[key] = [];
      state.history.set(name, s);
    }
    return s;
  }

  function pointOf(q) {
    const lat = q.latency_ms || {};
    const p99 = (kind) => (lat[kind] && isNum(lat[kind].p99) ? lat[kind].p99 : null);
    return {
      depth: q.depth, in_flight: q.in_flight, dead_lettered: q.dead_lettered,
      send_rate: q.rates ? q.rates.sent : null, ack_rate: q.rates ? q.rates.acked : null,
      queue_wait_p99: p99("queue_wait"), end_to_end_p99: p99("end_to_end"),
    };
  }

  function append(name, t, point) {
    const s = seriesOf(name);
    if (s.t.length && s.t[s.t.length - 1] >= t) return; // this snapshot is in already
    s.t.push(t);
    for (const key of SERIES) s[key].push(isNum(point[key]) ? point[key] : null);
    const extra = s.t.length - state.points;
    if (extra > 0) for (const key of ["t", ...SERIES]) s[key].splice(0, extra);
  }

  function loadHistory(doc) {
    if (!doc || !doc.queues) return;
    for (const [name, cols] of Object.entries(doc.queues)) {
      const s = seriesOf(name);
      if (s.t.length) continue;
      s.t = (cols.t || []).slice();
      for (const key of SERIES) s[key] = (cols[key] || []).slice();
    }
  }

  function ingest(doc) {
    if (isNum(doc.interval)) state.intervalMs = Math.max(250, doc.interval * 1000);
    if (isNum(doc.history_points)) state.points = doc.history_points;
    if (doc.status !== "ok" || !isNum(doc.updated)) return;
    const present = new Set();
    for (const q of doc.queues) {
      present.add(q.name);
      append(q.name, doc.updated, pointOf(q));
    }
    for (const name of [...state.history.keys()]) if (!present.has(name)) state.history.delete(name);
  }

  // -- rendering -------------------------------------------------------------------------------------------------
  function renderStatus(doc, failure) {
    const status = $("status");
    const kind = failure ? "error" : doc.status;
    status.className = `status ${kind}`;
    document.body.classList.toggle("stale", kind === "error"); // what shows is the last snapshot read
    status.textContent = { ok: "live", connecting: "connecting…", error: "not reading" }[kind] || kind;
    if (doc) $("bus-url").textContent = doc.url;
    $("updated").textContent = doc && isNum(doc.updated) ? `updated ${clock(doc.updated)}` : "";
    const banner = $("error");
    let message = failure || (doc.status === "error" ? doc.error : null);
    if (message && doc && doc.queues && doc.queues.length && isNum(doc.updated)) {
      message += `\nShowing the last snapshot read, from ${clock(doc.updated)}.`;
    }
    banner.hidden = !message;
    banner.textContent = message || "";
  }

  function renderTotals(queues) {
    const sum = (f) => queues.reduce((acc, q) => acc + (isNum(f(q)) ? f(q) : 0), 0);
    $("total-queues").textContent = fmtInt(queues.length);
    $("total-depth").textContent = fmtInt(sum((q) => q.depth));
    $("total-in-flight").textContent = fmtInt(sum((q) => q.in_flight));
    $("total-dead").textContent = fmtInt(sum((q) => q.dead_lettered));
    $("total-sent-rate").textContent = fmtRate(sum((q) => q.rates && q.rates.sent));
    $("total-acked-rate").textContent = fmtRate(sum((q) => q.rates && q.rates.acked));
  }

  function sparkline(values) {
    const svg = svgEl("svg", { class: "spark", viewBox: "0 0 100 22", "aria-hidden": "true" });
    const recent = values.slice(-60);
    const top = Math.max(1, ...recent.filter(isNum));
    const step = recent.length > 1 ? 100 / (recent.length - 1) : 0;
    const pts = recent.map((v, i) => (isNum(v) ? `${(i * step).toFixed(1)},${(21 - (v / top) * 20).toFixed(1)}` : null))
      .filter((p) => p !== null);
    if (pts.length > 1) svg.appendChild(svgEl("polyline", { points: pts.join(" ") }));
    return svg;
  }

  function select(name) {
    state.selected = name;
    state.pinned = true;
    render();
  }

  function renderTable(queues) {
    const rows = [];
    for (const q of queues) {
      const row = el("tr", { "data-queue": q.name, tabindex: "0" });
      if (q.name === state.selected) row.classList.add("selected");
      row.setAttribute("aria-selected", q.name === state.selected ? "true" : "false");
      const cell = (field, text, cls) => {
        const td = el("td", { "data-field": field }, text);
        if (cls) td.className = cls;
        row.appendChild(td);
      };
      const e2e = q.latency_ms && q.latency_ms.end_to_end ? q.latency_ms.end_to_end.p99 : null;
      cell("name", q.name, "name");
      cell("depth", fmtInt(q.depth));
      cell("ready", fmtInt(q.ready));
      cell("delayed", fmtInt(q.delayed));
      cell("in_flight", fmtInt(q.in_flight));
      cell("consumers", fmtInt(q.consumers));
      cell("dead_lettered", fmtInt(q.dead_lettered), q.dead_lettered > 0 ? "warn" : "");
      cell("send_rate", fmtRate(q.rates && q.rates.sent));
      cell("ack_rate", fmtRate(q.rates && q.rates.acked));
      cell("end_to_end_p99", isNum(e2e) ? `${fmtMs(e2e)} ms` : "–");
      const trend = el("td", { "data-field": "trend", class: "trend" });
      trend.appendChild(sparkline(seriesOf(q.name).depth));
      row.appendChild(trend);
      row.addEventListener("click", () => select(q.name));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") select(q.name); });
      rows.push(row);
    }
    $("queue-rows").replaceChildren(...rows);
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    for (const f of [1, 2, 2.5, 5, 10]) if (value <= f * magnitude) return f * magnitude;
    return 10 * magnitude;
  }

  function axisValue(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return `${+v.toFixed(2)}`;
  }

  // A line chart of `lines` ([{label, values}]) against `times` (epoch seconds) over the history window.
  function lineChart(svg, legend, times, lines, emptyText) {
    const { width, height, left, right, top, bottom } = CHART;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const nodes = [];
    // The window grows with the history, from a minute up to all the points kept.
    const end = times.length ? times[times.length - 1] : Date.now() / 1000;
    const kept = Math.max(10, (state.points * state.intervalMs) / 1000);
    const windowS = Math.min(kept, Math.max(60, times.length ? end - times[0] : 0));
    const start = end - windowS;
    const all = lines.flatMap((line) => line.values.filter(isNum));
    const ymax = niceMax(Math.max(0, ...all));
    const x = (t) => left + ((t - start) / windowS) * plotW;
    const y = (v) => top + plotH - (v / ymax) * plotH;

    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      nodes.push(svgEl("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
      nodes.push(svgEl("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, axisValue(v)));
    }
    const steps = [10, 30, 60, 120, 300, 600, 1800, 3600];
    const tick = steps.find((s) => windowS / s <= 6) || 3600;
    for (let ago = 0; ago <= windowS; ago += tick) {
      const label = ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60}m` : `-${ago}s`;
      nodes.push(svgEl("text", { class: "axis", x: x(end - ago), y: height - 8, "text-anchor": "middle" }, label));
    }
    if (!all.length) {
      nodes.push(svgEl("text", { class: "empty", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" },
        emptyText));
    }
    lines.forEach((line, index) => {
      // A null (no figure for that snapshot) breaks the line instead of drawing it to zero.
      let run = [];
      const flush = () => {
        if (run.length > 1) nodes.push(svgEl("polyline", { class: `line s${index}`, points: run.join(" ") }));
        else if (run.length === 1) {
          const [cx, cy] = run[0].split(",");
          nodes.push(svgEl("circle", { class: `line s${index}`, cx, cy, r: 1.5 }));
        }
        run = [];
      };
      line.values.forEach((v, i) => {
        if (isNum(v) && times[i] >= start) run.push(`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`);
        else flush();
      });
      flush();
    });
    svg.replaceChildren(...nodes);
    legend.replaceChildren(...lines.map((line, index) => {
      const item = el("span");
      item.appendChild(el("span", { class: `swatch s${index}` }));
      item.appendChild(document.createTextNode(line.label));
      return item;
    }));
  }

  function renderLatencyTable(q) {
    const lat = q && q.latency_ms;
    const rows = [];
    for (const kind of ["queue_wait", "processing", "end_to_end"]) {
      if (!lat || !lat[kind]) continue;
      const row = el("tr", { "data-latency": kind });
      row.appendChild(el("td", {}, kind.replace(/_/g, " ")));
      row.appendChild(el("td", {}, fmtInt(lat[kind].count)));
      for (const f of ["p50", "p90", "p99", "max"]) row.appendChild(el("td", {}, fmtMs(lat[kind][f])));
      rows.push(row);
    }
    $("latency-rows").replaceChildren(...rows);
    $("latency-table").hidden = rows.length === 0;
    return rows.length > 0;
  }

  function renderCharts(queues) {
    const q = queues.find((item) => item.name === state.selected) || null;
    $("selected-name").textContent = q ? q.name : "–";
    const s = q ? seriesOf(q.name) : { t: [], depth: [], in_flight: [], send_rate: [], ack_rate: [],
      queue_wait_p99: [], end_to_end_p99: [] };
    const none = q ? "waiting for snapshots…" : "no queue selected";
    lineChart($("chart-depth"), $("legend-depth"), s.t,
      [{ label: "depth", values: s.depth }, { label: "in flight", values: s.in_flight }], none);
    lineChart($("chart-rates"), $("legend-rates"), s.t,
      [{ label: "sent / s", values: s.send_rate }, { label: "acked / s", values: s.ack_rate }],
      q ? "rates show from the second snapshot" : none);
    const hasLatency = renderLatencyTable(q) || s.end_to_end_p99.some(isNum) || s.queue_wait_p99.some(isNum);
    lineChart($("chart-latency"), $("legend-latency"), s.t,
      [{ label: "queue wait p99", values: s.queue_wait_p99 }, { label: "end to end p99", values: s.end_to_end_p99 }],
      q ? "no latency figures from this bus" : none);
    $("latency-note").hidden = !q || hasLatency;
  }

  function render() {
    const doc = state.doc;
    if (!doc) return;
    const queues = doc.queues || [];
    if (!state.pinned || !queues.some((q) => q.name === state.selected)) {
      // Until a row is clicked, chart the busiest queue: the most messages sent.
      const busiest = queues.reduce((best, q) => (!best || (q.sent || 0) > (best.sent || 0) ? q : best), null);
      state.selected = busiest ? busiest.name : null;
    }
    renderTotals(queues);
    renderTable(queues);
    $("empty").hidden = queues.length > 0 || doc.status !== "ok";
    const truncated = $("truncated");
    truncated.hidden = !(doc.total_queues > queues.length);
    truncated.textContent = truncated.hidden ? "" : `Showing the first ${queues.length} of ${doc.total_queues} queues.`;
    renderCharts(queues);
  }

  // -- the loop --------------------------------------------------------------------------------------------------
  async function tick() {
    try {
      const doc = await getJSON("api/queues");
      state.doc = doc;
      ingest(doc);
      renderStatus(doc, null);
      render();
    } catch (err) {
      renderStatus(state.doc, `The dashboard server does not answer (${err.message}); retrying.`);
    } finally {
      setTimeout(tick, state.intervalMs);
    }
  }

  async function start() {
    try {
      loadHistory(await getJSON("api/history"));
    } catch (err) {
      // no history: the charts fill from the next snapshots
    }
    tick();
  }

  start();
})();
