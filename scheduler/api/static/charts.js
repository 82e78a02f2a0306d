// Small inline-SVG charts (no chart library): a horizontal bar chart and a daily bar chart
// with a cumulative line. Labels are SVG text nodes, so data never becomes markup.

import { num, svg } from "./dom.js";

/** About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^n). */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** The domain [lo, hi] of `values`, always including 0, padded to the next round tick. */
function domain(values) {
  const finite = values.filter((v) => Number.isFinite(v));
  let lo = Math.min(0, ...finite);
  let hi = Math.max(0, ...finite);
  if (lo === hi) hi = lo + 1;
  const t = ticks(lo, hi);
  const step = t.length > 1 ? t[1] - t[0] : hi - lo;
  if (t[t.length - 1] < hi) hi = t[t.length - 1] + step;
  if (t[0] > lo) lo = t[0] - step;
  return [lo, hi];
}

/** Horizontal bars, one row per item: {label, value, title?, className?}. */
export function barChart({ items, unit, label, testid, width = 720, rowHeight = 18,
  digits = 0 }) {
  const left = 210;
  const right = 56;
  const top = 24;
  const height = top + items.length * rowHeight + 8;
  const [lo, hi] = domain(items.map((i) => i.value));
  const x = (v) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, testid,
  }, svg("title", {}, label));
  for (const t of ticks(lo, hi)) {
    chart.append(
      svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top - 4, y2: height - 8 }),
      svg("text", { class: "tick", x: x(t), y: top - 8, "text-anchor": "middle" }, num(t, 0)));
  }
  chart.append(svg("text", { class: "tick unit", x: left - 6, y: top - 8, "text-anchor": "end" },
    unit));
  items.forEach((item, index) => {
    const y = top + index * rowHeight;
    const known = Number.isFinite(item.value);
    const x0 = x(Math.min(0, known ? item.value : 0));
    const x1 = x(Math.max(0, known ? item.value : 0));
    chart.append(svg("g", { class: `bar ${item.className || ""}`, testid: "chart-bar" },
      svg("title", {}, item.title || `${item.label}: ${num(item.value)} ${unit}`),
      svg("text", { class: "label", x: left - 6, y: y + rowHeight * 0.68, "text-anchor": "end" },
        item.label),
      svg("rect", { x: x0, y: y + 2, width: Math.max(known ? 1 : 0, x1 - x0),
        height: rowHeight - 4, rx: 2 }),
      svg("text", { class: "value", x: x1 + 4, y: y + rowHeight * 0.68 },
        known ? num(item.value, digits) : "n/a")));
  });
  return chart;
}

/** Vertical bars per period plus a cumulative line (its own scale on the right axis). */
export function periodChart({ points, unit, label, testid, width = 1100, height = 320 }) {
  const margin = { top: 20, right: 64, bottom: 56, left: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const values = points.map((p) => p.value);
  let running = 0;
  const totals = values.map((v) => (running += Number.isFinite(v) ? v : 0));
  const [lo, hi] = domain(values);
  const [cLo, cHi] = domain(totals);
  const y = (v) => margin.top + plotH - ((v - lo) / (hi - lo)) * plotH;
  const yc = (v) => margin.top + plotH - ((v - cLo) / (cHi - cLo)) * plotH;
  const band = plotW / Math.max(points.length, 1);
  const barW = Math.min(band * 0.7, 56);
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, testid,
  }, svg("title", {}, label));
  for (const t of ticks(lo, hi)) {
    chart.append(
      svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) }),
      svg("text", { class: "tick", x: margin.left - 6, y: y(t) + 4, "text-anchor": "end" },
        num(t, Math.abs(hi - lo) < 5 ? 2 : 0)));
  }
  for (const t of ticks(cLo, cHi)) {
    chart.append(svg("text", { class: "tick cumulative", x: width - margin.right + 6,
      y: yc(t) + 4 }, num(t, Math.abs(cHi - cLo) < 5 ? 2 : 0)));
  }
  chart.append(
    svg("text", { class: "tick unit", x: 8, y: 12 }, `per day (${unit})`),
    svg("text", { class: "tick unit cumulative", x: width - 8, y: 12, "text-anchor": "end" },
      `cumulative (${unit})`));
  const labelEvery = Math.ceil(points.length / 12);
  points.forEach((p, i) => {
    const x = margin.left + i * band;
    const known = Number.isFinite(p.value);
    const yTop = y(Math.max(0, known ? p.value : 0));
    const yBottom = y(Math.min(0, known ? p.value : 0));
    chart.append(svg("g", { class: `bar ${known && p.value < 0 ? "negative" : ""}`,
      testid: "chart-bar" },
      svg("title", {}, `${p.key}: ${num(p.value, 3)} ${unit}; cumulative ${num(totals[i], 3)}`),
      svg("rect", { x: x + (band - barW) / 2, y: yTop, width: barW,
        height: Math.max(known ? 1 : 0, yBottom - yTop) })));
    if (i % labelEvery === 0) {
      const [lx, ly] = [x + band / 2, height - margin.bottom + 16];
      chart.append(svg("text", { class: "tick", x: lx, y: ly, "text-anchor": "end",
        transform: `rotate(-35 ${lx} ${ly})` }, p.key));
    }
  });
  const path = totals.map((t, i) =>
    `${i ? "L" : "M"}${(margin.left + (i + 0.5) * band).toFixed(1)},${yc(t).toFixed(1)}`).join("");
  if (points.length) {
    chart.append(svg("path", { class: "line cumulative", d: path, testid: "cumulative-line" }));
    totals.forEach((t, i) => chart.append(svg("circle", { class: "dot cumulative",
      cx: margin.left + (i + 0.5) * band, cy: yc(t), r: 3 })));
  }
  chart.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right,
    y1: y(0), y2: y(0) }));
  return chart;
}

/** A run's grid intensity hour by hour: a bar per hour a source answered (its width the
 * hour, a thin grey mark where none did) and the estimate's intensity as a dashed line.
 * `hours`: [{start (ISO), seconds, g_per_kwh (or null), source}]. */
export function intensityChart({ hours, reference, label, testid, width = 720, height = 220 }) {
  const margin = { top: 26, right: 16, bottom: 40, left: 56 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const HOUR_MS = 3600 * 1000;
  const starts = hours.map((h) => Date.parse(h.start));
  const first = starts[0];
  const last = starts[starts.length - 1] + HOUR_MS;
  const values = hours.map((h) => h.g_per_kwh).filter((v) => Number.isFinite(v));
  const [, hi] = domain([...values, ...(Number.isFinite(reference) ? [reference] : [])]);
  const x = (ms) => margin.left + ((ms - first) / (last - first)) * plotW;
  const y = (v) => margin.top + plotH - (v / hi) * plotH;
  const chart = svg("svg", {
    class: "chart intensity", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label, testid,
  }, svg("title", {}, label));
  for (const t of ticks(0, hi)) {
    chart.append(
      svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) }),
      svg("text", { class: "tick", x: margin.left - 6, y: y(t) + 4, "text-anchor": "end" },
        num(t, 0)));
  }
  chart.append(svg("text", { class: "tick unit", x: 8, y: 12 }, "g/kWh"));
  hours.forEach((h, i) => {
    const x0 = x(starts[i]);
    const w = Math.max(1, x(starts[i] + HOUR_MS) - x0 - 1);
    const hourLabel = new Date(starts[i]).toISOString().slice(0, 13).replace("T", " ");
    if (!Number.isFinite(h.g_per_kwh)) {
      chart.append(svg("g", { class: "bar gap", testid: "intensity-gap" },
        svg("title", {}, `${hourLabel}:00Z: no value from any source`),
        svg("rect", { x: x0, y: y(0) - 3, width: w, height: 3 })));
      return;
    }
    chart.append(svg("g", { class: "bar", testid: "intensity-hour" },
      svg("title", {}, `${hourLabel}:00Z: ${num(h.g_per_kwh, 0)} g/kWh, ${
        num(h.seconds / 60, 0)} min of the run (${h.source})`),
      svg("rect", { x: x0, y: y(h.g_per_kwh), width: w, height: Math.max(1, y(0) - y(h.g_per_kwh)) })));
  });
  if (Number.isFinite(reference)) {
    chart.append(
      svg("line", { class: "line reference", x1: margin.left, x2: width - margin.right,
        y1: y(reference), y2: y(reference), testid: "intensity-estimate" }),
      svg("text", { class: "tick reference", x: width - margin.right, y: y(reference) - 4,
        "text-anchor": "end" }, `estimate ${num(reference, 0)} g/kWh`));
  }
  const labelEvery = Math.ceil(hours.length / 12);
  hours.forEach((h, i) => {
    if (i % labelEvery) return;
    chart.append(svg("text", { class: "tick", x: x(starts[i]), y: height - margin.bottom + 16 },
      new Date(starts[i]).toISOString().slice(11, 16)));
  });
  chart.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right,
    y1: y(0), y2: y(0) }));
  return chart;
}

/** Estimated against measured values, a dot per item ({label, x, y}), with the line y = x
 * where the two agree; both axes share one scale so the line is the diagonal. */
export function scatterChart({ points, unit, label, testid, size = 360 }) {
  const pad = 48;
  const plot = size - 2 * pad;
  const [, hi] = domain(points.flatMap((p) => [p.x, p.y]));
  const at = (v) => (v / hi) * plot;
  const chart = svg("svg", {
    class: "chart scatter", viewBox: `0 0 ${size} ${size}`, role: "img", "aria-label": label,
    testid,
  }, svg("title", {}, label));
  for (const t of ticks(0, hi)) {
    chart.append(
      svg("line", { class: "grid", x1: pad, x2: size - pad, y1: size - pad - at(t),
        y2: size - pad - at(t) }),
      svg("text", { class: "tick", x: pad - 6, y: size - pad - at(t) + 4, "text-anchor": "end" },
        num(t, hi < 5 ? 2 : 0)),
      svg("text", { class: "tick", x: pad + at(t), y: size - pad + 16, "text-anchor": "middle" },
        num(t, hi < 5 ? 2 : 0)));
  }
  chart.append(
    svg("line", { class: "line reference", x1: pad, y1: size - pad, x2: size - pad, y2: pad,
      testid: "scatter-diagonal" }, svg("title", {}, "estimate = measurement")),
    svg("line", { class: "axis", x1: pad, x2: size - pad, y1: size - pad, y2: size - pad }),
    svg("line", { class: "axis", x1: pad, x2: pad, y1: pad, y2: size - pad }),
    svg("text", { class: "tick unit", x: size / 2, y: size - 8, "text-anchor": "middle" },
      `estimated (${unit})`),
    svg("text", { class: "tick unit", x: 8, y: pad - 16 }, `measured (${unit})`));
  for (const p of points) {
    chart.append(svg("circle", { class: "dot", cx: pad + at(p.x), cy: size - pad - at(p.y), r: 4,
      testid: "scatter-point" }, svg("title", {}, `${p.label}: estimated ${num(p.x, 3)}, measured ${
      num(p.y, 3)} ${unit}`)));
  }
  return chart;
}
