// mcpd's dashboard: polls ./stats (same origin, same access rule) and draws it. No libraries.
"use strict";
(function () {
  const params = new URLSearchParams(window.location.search);
  const interval = Math.max(250, Number(params.get("interval")) || 2000);
  const history = [];
  let previous = null;

  const $ = (id) => document.getElementById(id);
  const ms = (seconds) => (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1);
  const text = (id, value) => { $(id).textContent = String(value); };

  function duration(seconds) {
    const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }

  function row(cells, classes) {
    const tr = document.createElement("tr");
    cells.forEach((cell, i) => {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      if (classes && classes[i]) td.className = classes[i];
      tr.appendChild(td);
    });
    return tr;
  }

  function fill(tableId, rows) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren(...rows);
  }

  function drawChart() {
    const canvas = $("rate-chart"), ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (history.length < 2) return;
    const max = Math.max(1, ...history);
    ctx.strokeStyle = "#58a6ff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((value, i) => {
      const x = (i / (history.length - 1)) * w, y = h - 2 - (value / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  function render(stats, now) {
    let rate = 0, errorRate = 0;
    if (previous) {
      const seconds = Math.max(0.001, (now - previous.at) / 1000);
      rate = Math.max(0, stats.total_requests - previous.total) / seconds;
      errorRate = Math.max(0, stats.failed_requests - previous.failed) / seconds;
    }
    previous = { at: now, total: stats.total_requests, failed: stats.failed_requests };
    history.push(rate);
    if (history.length > 60) history.shift();

    text("rate", rate.toFixed(1));
    text("uptime", duration(stats.uptime_seconds));
    text("updated", new Date(now).toLocaleTimeString());
    text("p50", ms(stats.latency.p50) + " ms");
    text("p95", ms(stats.latency.p95) + " ms");
    text("p99", ms(stats.latency.p99) + " ms");
    text("avg", ms(stats.avg_response_time) + " ms");
    text("total", stats.total_requests);
    text("failed", stats.failed_requests);
    text("success-rate", (stats.success_rate * 100).toFixed(2) + " %");
    text("error-rate", errorRate.toFixed(2));
    text("connections", stats.active_connections);
    text("in-flight", stats.in_flight);
    text("sse", stats.sse_streams);
    text("websockets", stats.websockets);

    const tools = Object.entries(stats.tools).sort((a, b) => b[1].requests - a[1].requests);
    const most = Math.max(1, ...tools.map(([, t]) => t.requests));
    fill("tools", tools.map(([name, t]) => {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = ((t.requests / most) * 100).toFixed(1) + "%";
      return row([name, t.requests, t.failed, ms(t.avg_response_time), bar], [null, null, t.failed ? "bad" : null]);
    }));
    fill("transports", Object.entries(stats.transports).map(([name, t]) =>
      row([name, t.requests, t.failed, ms(t.avg_response_time)], [null, null, t.failed ? "bad" : null])));
    fill("recent", stats.recent_requests.slice(0, 25).map((r) =>
      row([new Date(r.time * 1000).toLocaleTimeString(), r.method, r.tool, r.transport, r.key, r.outcome, ms(r.duration), r.x_request_id],
          [null, null, null, null, null, r.outcome === "ok" ? "ok" : "bad"])));
    drawChart();
  }

  function status(ok, label) {
    const el = $("status");
    el.textContent = label;
    el.className = "status " + (ok ? "ok" : "bad");
  }

  async function refresh() {
    try {
      const response = await fetch("stats?recent=25", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) {
        status(false, "HTTP " + response.status);
      } else {
        render(await response.json(), Date.now());
        status(true, "live");
      }
    } catch (e) {
      status(false, "unreachable");
    } finally {
      window.setTimeout(refresh, interval);
    }
  }

  refresh();
})();
