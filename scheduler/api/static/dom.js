// DOM and number helpers. Every value from the API reaches the page through text nodes or
// setAttribute, never through innerHTML: job names, reasons and messages are user input.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "testid") node.setAttribute("data-testid", value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el("td", {class: "num"}, "1.5"). Strings become text nodes. */
export function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace every child of `node`. */
export function mount(node, ...children) {
  node.replaceChildren();
  build(node, {}, children);
  return node;
}

/** A table with a caption, a header row of <th scope="col"> and the given body rows. */
export function table({ caption, columns, rows, testid, className }) {
  return el("table", { class: className, testid },
    caption ? el("caption", {}, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((c) =>
      el("th", { scope: "col", class: c.num ? "num" : null, title: c.title }, c.label)))),
    el("tbody", {}, rows));
}

/** A number with `digits` decimals (grouped), or an em dash for null / undefined / NaN. */
export function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Savings as "2.64 kg (84.0 %)" from a saved amount and its baseline. */
export function savings(savedKg, baselineKg) {
  if (savedKg === null || savedKg === undefined) return "—";
  const pct = baselineKg ? (100 * savedKg) / baselineKg : null;
  return pct === null ? `${num(savedKg, 3)} kg` : `${num(savedKg, 3)} kg (${num(pct, 1)} %)`;
}

/** An ISO 8601 timestamp shown as "2026-12-02 05:31:07Z"; anything else is shown as given. */
export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** "cloud:region", or an em dash before placement. */
export function where(row) {
  return row.cloud && row.region ? `${row.cloud}:${row.region}` : "—";
}

/** A state badge; the CSS colours it by state. */
export function stateBadge(state) {
  return el("span", { class: `state state-${String(state || "").toLowerCase()}`,
    testid: "state" }, state || "—");
}

export const FINAL_STATES = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "UNSCHEDULABLE"]);
export const STATES = ["QUEUED", "PLACED", "DEFERRED", "DISPATCHING", "RUNNING", "SUCCEEDED",
  "FAILED", "CANCELLED", "UNSCHEDULABLE"];
