// The jobs page: a live table of GET /v1/jobs (polled every 3 s), filters passed as query
// parameters and kept in the location hash (with the page size: #/jobs?state=RUNNING&limit=20),
// cursor pagination through next_cursor.

import { call } from "./api.js";
import { STATES, el, mount, num, savings, stateBadge, table, when, where } from "./dom.js";
import { poll } from "./poll.js";

const POLL_MS = 3000;
const PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 500; // the API's largest page
const FILTERS = ["state", "name", "policy", "team"];

const COLUMNS = [
  { label: "State" }, { label: "Name" }, { label: "Team" }, { label: "Cloud:region" },
  { label: "Instance type" }, { label: "Instance id" },
  { label: "Est. CO₂e (kg)", num: true, title: "estimated, location-based" },
  { label: "Measured CO₂e (kg)", num: true, title: "measured energy x the grid's intensity" },
  { label: "Savings vs baseline", num: true, title: "estimated, against the policy's baseline" },
  { label: "Created" },
];

function row(job) {
  const link = el("a", { href: `#/jobs/${encodeURIComponent(job.job_id)}`, testid: "job-link" },
    job.name);
  return el("tr", { testid: "job-row", "data-job-id": job.job_id, "data-state": job.state },
    el("td", {}, stateBadge(job.state)),
    el("th", { scope: "row" }, link),
    el("td", {}, job.team ?? "—"),
    el("td", {}, where(job)),
    el("td", {}, job.instance_type ?? "—"),
    el("td", { class: "mono" }, job.instance_id ?? "—"),
    el("td", { class: "num", testid: "co2e" }, num(job.co2e_kg_estimated, 3)),
    el("td", { class: "num", testid: "measured-co2e" },
      job.co2e_kg_measured === null || job.co2e_kg_measured === undefined
        ? "—" : num(job.co2e_kg_measured, 3)),
    el("td", { class: "num", testid: "savings" },
      savings(job.savings_co2e_kg, job.baseline_co2e_kg)),
    el("td", { class: "nowrap" }, when(job.created_at)));
}

function filterForm(values) {
  const input = (name, label) => [
    el("label", { for: `filter-${name}` }, label),
    el("input", { id: `filter-${name}`, name, type: "search", value: values.get(name) || "",
      testid: `filter-${name}`, autocomplete: "off" })];
  const state = el("select", { id: "filter-state", name: "state", testid: "filter-state" },
    el("option", { value: "" }, "any"),
    STATES.map((s) => el("option", { value: s, selected: values.get("state") === s }, s)));
  const form = el("form", { class: "filters", role: "search", testid: "job-filters" },
    el("label", { for: "filter-state" }, "State"), state,
    input("name", "Name"), input("policy", "Policy"), input("team", "Team"),
    el("button", { type: "submit" }, "Apply"),
    el("button", { type: "button", class: "secondary", testid: "filter-clear",
      onclick: () => {
        for (const name of FILTERS) form.elements[name].value = "";
        apply();
      } }, "Clear"));
  const apply = () => {
    const query = new URLSearchParams();
    if (values.get("limit")) query.set("limit", values.get("limit"));
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    const text = query.toString();
    location.hash = text ? `#/jobs?${text}` : "#/jobs";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  state.addEventListener("change", apply);
  return form;
}

export function render(container, { query }) {
  const filters = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""]));
  const asked = Number.parseInt(query.get("limit") || "", 10);
  const pageSize = asked >= 1 ? Math.min(asked, MAX_PAGE_SIZE) : PAGE_SIZE;
  const cursors = [null]; // cursors[i]: the cursor of page i (null: the newest page)
  let page = 0;
  let nextCursor = null;
  let shown = "";
  const error = el("p", { class: "error", role: "alert", testid: "error", hidden: true });
  const status = el("span", { class: "hint", testid: "jobs-updated", "aria-live": "polite" });
  const body = el("div", { class: "table-wrap" });
  const older = el("button", { type: "button", class: "secondary", testid: "page-older",
    disabled: true }, "Older →");
  const newer = el("button", { type: "button", class: "secondary", testid: "page-newer",
    disabled: true }, "← Newer");
  const pageLabel = el("span", { class: "hint" }, "page 1");

  async function load() {
    let data;
    try {
      data = await call("v1/jobs", { query: { ...filters, limit: pageSize,
        cursor: cursors[page] } });
    } catch (err) {
      error.hidden = false;
      error.textContent = `Cannot list jobs: ${err.message}`;
      throw err;
    }
    error.hidden = true;
    nextCursor = data.next_cursor || null;
    older.disabled = !nextCursor;
    newer.disabled = page === 0;
    pageLabel.textContent = `page ${page + 1}`;
    status.textContent = `updated ${new Date().toISOString().slice(11, 19)}Z`;
    const text = JSON.stringify(data.jobs);
    if (text === shown) return;
    shown = text;
    mount(body, data.jobs.length
      ? table({ caption: `${data.jobs.length} job(s), newest first`, columns: COLUMNS,
        rows: data.jobs.map(row), testid: "jobs-table", className: "data" })
      : el("p", { class: "empty", testid: "jobs-empty" },
        FILTERS.some((f) => filters[f]) ? "No job matches these filters." :
          "No jobs yet. Submit one with `greenplace submit jobs.yaml` or POST /v1/jobs."));
  }

  let stop = poll(load, POLL_MS);
  const turn = (delta) => {
    if (delta > 0) cursors[page + 1] = nextCursor;
    page += delta;
    shown = "";
    stop();
    stop = poll(load, POLL_MS);
  };
  older.addEventListener("click", () => turn(1));
  newer.addEventListener("click", () => turn(-1));

  mount(container,
    el("div", { class: "page-head" }, el("h1", {}, "Jobs"), status),
    filterForm(query), error, body,
    el("nav", { class: "pager", "aria-label": "Pages of jobs" }, newer, pageLabel, older));
  return () => stop();
}
