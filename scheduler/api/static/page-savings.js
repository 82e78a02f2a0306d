// The savings page: GET /v1/report?group_by=day as totals, a chart of the CO2e saved per
// day against each job's baseline with the cumulative line, the estimate against the
// measurement for each measured job (the report's per-job rows), and the per-day table.

import { call } from "./api.js";
import { barChart, periodChart, scatterChart } from "./charts.js";
import { el, mount, num, savings, table } from "./dom.js";

const FILTERS = ["team", "policy", "since", "until"];

function totalsCards(t) {
  const unmeasured = t.co2e_kg_measured === null || t.co2e_kg_measured === undefined;
  const card = (label, value, testid) => el("div", { class: "stat", testid },
    el("span", { class: "stat-label" }, label), el("span", { class: "stat-value" }, value));
  return el("div", { class: "stats", testid: "savings-totals" },
    card("Jobs", num(t.jobs, 0), "total-jobs"),
    card("CO₂e saved", savings(t.savings_co2e_kg, t.baseline_co2e_kg), "total-savings"),
    card("CO₂e (estimated)", `${num(t.co2e_kg_estimated, 3)} kg`, "total-co2e"),
    card("Baseline CO₂e", `${num(t.baseline_co2e_kg, 3)} kg`, "total-baseline"),
    card("CO₂e (measured)", unmeasured ? "—" : `${num(t.co2e_kg_measured, 3)} kg`,
      "total-measured"),
    card("Energy (est. / measured)",
      `${num(t.energy_kwh_estimated, 1)} / ${num(t.energy_kwh_measured, 1)} kWh`, "total-energy"),
    card("Cost (estimated)", `$${num(t.cost_usd, 2)}`, "total-cost"));
}

function estimateSection(jobs) {
  const measured = jobs.filter((j) => Number.isFinite(j.co2e_kg_estimated)
    && Number.isFinite(j.co2e_kg_measured));
  return el("section", { class: "card", testid: "estimate-vs-measured" },
    el("h2", {}, "Estimate against measurement"),
    measured.length ? [
      el("p", { class: "hint" }, `CO₂e of each of the ${measured.length} measured job(s): `
        + "estimated at placement against measured by its agent; on the dashed line they "
        + "agree, above it the estimate was too low."),
      scatterChart({ label: "Estimated against measured CO2e per job, kg", unit: "kg",
        testid: "estimate-scatter",
        points: measured.map((j) => ({ label: j.name, x: j.co2e_kg_estimated,
          y: j.co2e_kg_measured })) })]
      : el("p", { class: "empty", testid: "scatter-empty" },
        "No job has a measurement yet: nothing to compare."));
}

function filterForm(query) {
  const field = (name, label, type) => [el("label", { for: `report-${name}` }, label),
    el("input", { id: `report-${name}`, name, type, value: query.get(name) || "",
      testid: `report-${name}` })];
  const form = el("form", { class: "filters", testid: "report-filters" },
    field("team", "Team", "search"), field("policy", "Policy", "search"),
    field("since", "Since", "date"), field("until", "Before", "date"),
    el("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) next.set(name, value);
    }
    location.hash = `#/savings?${next}`;
  });
  return form;
}

export function render(container, { query }) {
  const error = el("p", { class: "error", role: "alert", testid: "error", hidden: true });
  const body = el("div", { class: "loading" }, "Loading the report…");
  let alive = true;
  const params = { group_by: "day" };
  for (const name of FILTERS) if (query.get(name)) params[name] = query.get(name);

  call("v1/report", { query: params }).then((report) => {
    if (!alive) return;
    const groups = [...(report.groups || [])].sort((a, b) => String(a.key)
      .localeCompare(String(b.key)));
    let running = 0;
    const byLever = (report.totals || {}).saved_kg_by_lever || {};
    mount(body,
      totalsCards(report.totals || {}),
      el("section", { class: "card" }, el("h2", {}, "CO₂e saved, by lever"),
        el("p", { class: "hint" }, "Each job's savings against its baseline split into the "
          + "hardware and run time (machine), the grid (map) and the data centre's PUE "
          + "(mechanization); the three add up to the savings."),
        barChart({ label: "CO2e saved by lever, kg", unit: "kg", testid: "levers-chart",
          width: 1100, rowHeight: 26, digits: 3,
          items: ["machine", "map", "mechanization"].map((lever) => ({
            label: lever, value: byLever[lever],
            title: `${lever}: ${num(byLever[lever], 3)} kg` })) })),
      el("section", { class: "card" }, el("h2", {}, "CO₂e saved against the baseline, per day"),
        groups.length ? periodChart({ label: "CO2e saved per day and cumulative, kg",
          unit: "kg", testid: "savings-chart",
          points: groups.map((g) => ({ key: String(g.key), value: g.savings_co2e_kg })) })
          : el("p", { class: "empty", testid: "savings-empty" }, "No jobs in this range.")),
      estimateSection(report.jobs || []),
      groups.length ? el("section", { class: "card table-wrap" }, table({
        caption: "Per day (estimated figures; measured where the agent reported energy)",
        className: "data", testid: "savings-table",
        columns: [{ label: "Day" }, { label: "Jobs", num: true },
          { label: "CO₂e (kg)", num: true }, { label: "Baseline (kg)", num: true },
          { label: "Saved", num: true }, { label: "Cumulative saved (kg)", num: true },
          { label: "Measured CO₂e (kg)", num: true }, { label: "Cost (USD)", num: true }],
        rows: groups.map((g) => {
          running += g.savings_co2e_kg || 0;
          return el("tr", { testid: "savings-row" }, el("th", { scope: "row" }, g.key),
            el("td", { class: "num" }, num(g.jobs, 0)),
            el("td", { class: "num" }, num(g.co2e_kg_estimated, 3)),
            el("td", { class: "num" }, num(g.baseline_co2e_kg, 3)),
            el("td", { class: "num" }, savings(g.savings_co2e_kg, g.baseline_co2e_kg)),
            el("td", { class: "num" }, num(running, 3)),
            el("td", { class: "num" }, num(g.co2e_kg_measured, 3)),
            el("td", { class: "num" }, num(g.cost_usd, 2)));
        }) })) : null);
  }).catch((err) => {
    if (!alive) return;
    body.replaceChildren();
    error.hidden = false;
    error.textContent = `Cannot load the report: ${err.message}`;
  });

  mount(container, el("div", { class: "page-head" }, el("h1", {}, "Savings")),
    filterForm(query), error, body);
  return () => {
    alive = false;
  };
}
