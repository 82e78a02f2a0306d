// The job page: GET /v1/jobs/{id} and /events. What ran where, the placement decision
// explained (chosen vs baseline), every candidate with raw and normalised scores (rejected
// ones with their filter and reason), the grid intensity over a measured run's window,
// the event timeline, and a cancel button.

import { call } from "./api.js";
import { intensityChart } from "./charts.js";
import { FINAL_STATES, el, mount, num, savings, stateBadge, table, when, where } from "./dom.js";
import { poll } from "./poll.js";

const LIVE_MS = 3000; // while the job can still change state
const FINAL_MS = 15000; // measured energy can still arrive after the end

function fact(label, value, testid) {
  return el("div", {}, el("dt", {}, label), el("dd", { testid }, value ?? "—"));
}

function facts(job) {
  const measured = job.co2e_kg_measured === null || job.co2e_kg_measured === undefined;
  return el("dl", { class: "facts", testid: "job-facts" },
    fact("Team", job.team), fact("Policy", job.policy), fact("Where", where(job)),
    fact("Instance type", job.instance_type), fact("Provider", job.provider),
    fact("Instance id", job.instance_id, "instance-id"), fact("Attempts", job.attempts),
    fact("Not before", job.not_before ? when(job.not_before) : null),
    fact("Exit code", job.exit_code), fact("Instance deleted", job.instance_deleted_at
      ? when(job.instance_deleted_at) : null),
    fact("Energy (est. / measured)", `${num(job.energy_kwh_estimated, 3)} / ${
      num(job.energy_kwh_measured, 3)} kWh`),
    fact("CO₂e (est. / measured)", `${num(job.co2e_kg_estimated, 3)} / ${
      measured ? "—" : num(job.co2e_kg_measured, 3)} kg`, "job-co2e"),
    fact("Cost (est.)", job.cost_usd === null || job.cost_usd === undefined
      ? null : `$${num(job.cost_usd, 2)}`),
    job.measurement_method ? fact("Measured by", job.measurement_method, "job-method") : null,
    job.estimate_error_pct === null || job.estimate_error_pct === undefined ? null
      : fact("Estimate error", `${num(job.estimate_error_pct, 1)} %`, "job-estimate-error"),
    job.agent_seen_at ? fact("Agent last seen", when(job.agent_seen_at)) : null,
    fact("Created", when(job.created_at)), fact("Updated", when(job.updated_at)));
}

function reason(job) {
  return job.reason ? el("p", { class: "reason", testid: "job-reason" },
    el("strong", {}, "Reason: "), job.reason) : null;
}

function attempts(job) {
  const reasons = job.attempt_reasons || [];
  if (!reasons.length) return null;
  return el("section", { class: "card" }, el("h2", {}, "Refused launch attempts"),
    table({ columns: [{ label: "Attempt", num: true }, { label: "Where" },
      { label: "Instance type" }, { label: "Error" }, { label: "Message" }],
    className: "data", testid: "attempts-table",
    rows: reasons.map((r) => el("tr", {}, el("td", { class: "num" }, r.attempt),
      el("td", {}, where(r)), el("td", {}, r.instance_type),
      el("td", {}, r.code ? `${r.error} (${r.code})` : r.error), el("td", {}, r.message))) }));
}

function intensitySection(job) {
  const hours = job.run_intensity_series;
  if (!hours || !hours.length) return null;
  return el("section", { class: "card", testid: "run-intensity" },
    el("h2", {}, "Grid intensity over the run window"),
    el("p", { class: "hint" }, `The grid's average in each hour the job ran, which its measured `
      + `CO₂e is charged at (${num(job.run_intensity_g_per_kwh, 0)} g/kWh, time-weighted), `
      + `against the ${num(job.intensity_g_per_kwh_estimated, 0)} g/kWh its estimate used `
      + "(dashed)."),
    intensityChart({ hours, reference: job.intensity_g_per_kwh_estimated,
      label: "Grid intensity per hour of the run, g/kWh", testid: "run-intensity-chart" }));
}

function rankedBy(value) {
  if (!value || typeof value !== "object") return value ?? "—";
  return Object.entries(value).map(([k, v]) => `${k}: ${v}`).join(", ");
}

function decisionSection(d) {
  if (!d) {
    return el("section", { class: "card", testid: "decision" }, el("h2", {}, "Decision"),
      el("p", { class: "empty" }, "Not placed yet: the worker has not ranked this job."));
  }
  const head = el("dl", { class: "facts" },
    fact("Policy", d.policy), fact("Carbon signal", d.carbon_signal),
    fact("Ranked by", rankedBy(d.ranked_by)), fact("Status", d.status),
    fact("Start at", d.start_at ? when(d.start_at) : d.status === "placed" ? "now" : null),
    fact("Signal source", d.signal_source),
    d.power_basis ? fact("Power basis", d.power_basis) : null,
    d.feasible_candidates !== undefined ? fact("Feasible candidates",
      d.feasible_candidates) : null);
  const parts = [el("h2", {}, "Decision"), head];
  if (d.baseline) {
    const b = d.baseline;
    const line = (label, chosen, base) => el("tr", {},
      el("th", { scope: "row" }, label), el("td", { class: "chosen" }, chosen),
      el("td", {}, base));
    parts.push(table({
      caption: "Chosen placement against the baseline (the policy's default choice)",
      columns: [{ label: "" }, { label: "Chosen" }, { label: "Baseline" }],
      className: "data compare", testid: "decision-compare",
      rows: [
        line("Cloud:region", where(d), where(b)),
        line("Instance type", d.instance_type, b.instance_type),
        line("Accelerator", `${d.accelerator_count ?? "?"} × ${d.accelerator}`, b.accelerator),
        line("CO₂e (kg)", num(d.co2e_kg, 3), num(b.co2e_kg, 3)),
        line("Ranked carbon", num(d.ranked_carbon, 3), num(b.ranked_carbon, 3)),
        line("Cost (USD)", num(d.cost_usd, 2), num(b.cost_usd, 2)),
        line("CFE (%)", num(d.cfe_pct, 1), num(b.cfe_pct, 1)),
      ] }),
    el("p", { class: "savings-line", testid: "decision-savings" },
      "Saves ", el("strong", {}, `${num(d.savings_co2e_kg, 3)} kg CO₂e`),
      ` (${num(d.savings_pct, 1)} %) against the baseline; score ${num(d.score, 4)}.`));
  }
  if (d.reasons && d.reasons.length) {
    parts.push(el("h3", {}, "Why nothing was feasible"), el("ul", { testid: "decision-reasons" },
      d.reasons.map((r) => el("li", {}, `${r.region}: ${r.filter}: ${r.reason}`))));
  }
  if (d.notes && d.notes.length) {
    parts.push(el("ul", { class: "notes" }, d.notes.map((n) => el("li", {}, n))));
  }
  return el("section", { class: "card", testid: "decision" }, parts);
}

/** A 0..1 normalised score as a number with a small bar behind it. */
function scoreCell(value) {
  if (value === null || value === undefined) return el("td", { class: "num" }, "—");
  const bar = el("span", { class: "meter", "aria-hidden": "true" });
  bar.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
  return el("td", { class: "num score" }, bar, el("span", {}, num(value, 3)));
}

const same = (a, b) => Boolean(a && b) && a.cloud === b.cloud && a.region === b.region &&
  a.instance_type === b.instance_type;

function candidateRow(c, index, decision, job) {
  const rejected = Boolean(c.rejected_by);
  const chosen = !rejected && same(c, decision);
  const current = !rejected && !chosen && job.attempts > 1 && same(c, job);
  return el("tr", {
    class: rejected ? "rejected" : chosen ? "chosen" : null, testid: "candidate-row",
    "data-rejected": rejected ? "true" : "false" },
    el("td", { class: "num" }, rejected ? "—" : index + 1),
    el("th", { scope: "row" }, where(c)), el("td", {}, c.instance_type),
    el("td", {}, `${c.accelerator_count} × ${c.accelerator}${c.spot ? " (spot)" : ""}`),
    el("td", { class: "num" }, num(c.price_usd_per_hour, 2)),
    el("td", { class: "num" }, num(c.runtime_h, 2)),
    el("td", { class: "num" }, num(c.energy_kwh, 2)),
    el("td", { class: "num" }, num(c.intensity_g_per_kwh, 0)),
    el("td", { class: "num" }, num(c.co2e_kg, 3)),
    el("td", { class: "num" }, num(c.cost_usd, 2)),
    el("td", { class: "num" }, num(c.cfe_pct, 0)),
    scoreCell(c.norm_carbon), scoreCell(c.norm_cost), scoreCell(c.norm_time),
    scoreCell(c.score),
    el("td", { class: "why", testid: rejected ? "rejection" : null }, rejected
      ? [el("span", { class: "filter" }, c.rejected_by.filter), " ", c.rejected_by.reason]
      : chosen ? el("strong", {}, "chosen") : current ? el("strong", {}, "current attempt")
        : "feasible"));
}

function candidatesSection(candidates, decision, job) {
  const list = candidates || [];
  const rejectedCount = list.filter((c) => c.rejected_by).length;
  const shownFeasible = list.length - rejectedCount;
  const feasibleTotal = decision?.feasible_candidates;
  const feasible = feasibleTotal > shownFeasible
    ? `the best ${shownFeasible} of ${feasibleTotal} feasible`
    : `${shownFeasible} feasible (best first)`;
  let feasibleIndex = 0;
  const rows = list.map((c) => candidateRow(c, c.rejected_by ? -1 : feasibleIndex++, decision,
    job));
  const toggle = el("input", { type: "checkbox", id: "show-rejected", checked: true,
    testid: "show-rejected" });
  const wrap = el("div", { class: "table-wrap" }, table({
    caption: `${feasible}, ${rejectedCount} rejected`,
    className: "data candidates", testid: "candidates-table",
    columns: [{ label: "#", num: true }, { label: "Cloud:region" }, { label: "Instance type" },
      { label: "Accelerators" }, { label: "USD/h", num: true }, { label: "Runtime (h)", num: true },
      { label: "Energy (kWh)", num: true }, { label: "g/kWh", num: true },
      { label: "CO₂e (kg)", num: true }, { label: "Cost (USD)", num: true },
      { label: "CFE %", num: true },
      { label: "norm carbon", num: true, title: "0..1 across the feasible set, 1 is best" },
      { label: "norm cost", num: true, title: "0..1 across the feasible set, 1 is best" },
      { label: "norm time", num: true, title: "0..1 across the feasible set, 1 is best" },
      { label: "score", num: true, title: "the policy's weighted sum" },
      { label: "Outcome" }],
    rows }));
  toggle.addEventListener("change", () => wrap.classList.toggle("hide-rejected", !toggle.checked));
  return el("section", { class: "card", testid: "candidates" },
    el("div", { class: "page-head" }, el("h2", {}, "Candidates"),
      el("label", { class: "inline" }, toggle, ` show rejected (${rejectedCount})`)),
    list.length ? wrap : el("p", { class: "empty" }, "No candidates recorded yet."));
}

function eventsSection(events) {
  return el("section", { class: "card", testid: "events" }, el("h2", {}, "Events"),
    events.length ? el("ol", { class: "timeline", testid: "timeline" }, events.map((e) =>
      el("li", { class: `event event-${e.kind || "note"}`, testid: "event" },
        el("time", { datetime: e.at }, when(e.at)),
        e.from || e.to ? el("span", { class: "transition" },
          e.from ? stateBadge(e.from) : null, e.from && e.to ? " → " : null,
          e.to ? stateBadge(e.to) : null) : el("span", { class: "kind" }, e.kind),
        el("span", { class: "message" }, e.message || "")))) :
      el("p", { class: "empty" }, "No events yet."));
}

function specSection(spec) {
  if (!spec) return null;
  return el("details", { class: "card", testid: "job-spec" },
    el("summary", {}, "Job spec as submitted"),
    el("pre", {}, JSON.stringify(spec, null, 2)));
}

export function render(container, { id }) {
  const path = `v1/jobs/${encodeURIComponent(id)}`;
  const error = el("p", { class: "error", role: "alert", testid: "error", hidden: true });
  const notice = el("p", { class: "notice", role: "status", testid: "notice", hidden: true });
  const title = el("h1", { testid: "job-name" }, id);
  const badge = el("span");
  const cancel = el("button", { type: "button", class: "danger", testid: "cancel-job",
    hidden: true }, "Cancel job");
  const summary = el("div");
  const decisionBox = el("div");
  const eventsBox = el("div");
  let state = null;
  const specBox = el("div");
  const shown = { summary: "", decision: "", events: "", spec: "" };

  function update(key, box, data, draw) {
    const text = JSON.stringify(data);
    if (shown[key] !== text) {
      shown[key] = text;
      mount(box, draw());
    }
  }

  async function load() {
    let job;
    let events;
    try {
      [job, events] = await Promise.all([call(path), call(`${path}/events`)]);
    } catch (err) {
      error.hidden = false;
      error.textContent = err.status === 404 ? `No job ${id} (or it belongs to another team).`
        : `Cannot load the job: ${err.message}`;
      throw err;
    }
    error.hidden = true;
    state = job.state;
    title.textContent = job.name;
    document.title = `${job.name} · greenplace`;
    mount(badge, stateBadge(job.state));
    cancel.hidden = FINAL_STATES.has(job.state);
    const { decision, candidates, spec, ...rest } = job;
    update("summary", summary, rest, () => [facts(job), reason(job), attempts(job),
      intensitySection(job)]);
    const placed = { cloud: job.cloud, region: job.region, instance_type: job.instance_type,
      attempts: job.attempts };
    update("decision", decisionBox, { decision, candidates, placed }, () => [
      decisionSection(decision), candidatesSection(candidates, decision, placed)]);
    update("spec", specBox, spec ?? null, () => specSection(spec));
    update("events", eventsBox, events, () => eventsSection(events.events || []));
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const result = await call(`${path}/cancel`, { method: "POST" });
      notice.hidden = false;
      notice.textContent = result.message || `Job is ${result.state}.`;
      await load();
    } catch (err) {
      error.hidden = false;
      error.textContent = `Cannot cancel: ${err.message}`;
    } finally {
      cancel.disabled = false;
    }
  });

  const stop = poll(load, () => (state && FINAL_STATES.has(state) ? FINAL_MS : LIVE_MS));
  mount(container,
    el("p", {}, el("a", { href: "#/jobs" }, "← all jobs")),
    el("div", { class: "page-head" }, title, badge, el("code", { class: "hint" }, id),
      el("span", { class: "spacer" }), cancel),
    error, notice, summary, decisionBox, eventsBox, specBox);
  return () => {
    stop();
    document.title = "greenplace";
  };
}
