// The regions page: GET /v1/regions as a bar chart of grid intensity per region, beside a
// table with the carbon-free share, PUE and the cheapest offer. Cloud and sort are kept in
// the location hash.

import { call } from "./api.js";
import { barChart } from "./charts.js";
import { el, mount, num, table } from "./dom.js";

const SORTS = {
  intensity: { label: "intensity, lowest first", key: (r) => r.intensity_g_per_kwh, dir: 1 },
  cfe: { label: "carbon-free %, highest first", key: (r) => r.cfe_pct, dir: -1 },
  price: { label: "cheapest price first", key: (r) => r.cheapest_usd_per_hour, dir: 1 },
  name: { label: "name", key: (r) => r.key, dir: 1 },
};

/** One region row in the contract's names; also accepts the catalog's (CLI) names. */
export function normalise(r) {
  const pick = (...values) => values.find((v) => v !== undefined) ?? null;
  return {
    key: r.key || `${r.cloud}:${r.region}`,
    cloud: r.cloud,
    region: r.region,
    location: r.location,
    intensity_g_per_kwh: pick(r.intensity_g_per_kwh, r.grid_intensity_avg_g_per_kwh),
    cfe_pct: pick(r.cfe_pct, r.grid_cfe_pct),
    pue: r.pue,
    cheapest_usd_per_hour: pick(r.cheapest_usd_per_hour, r.min_price_usd_per_accelerator_hour),
  };
}

function sorted(regions, sortName) {
  const { key, dir } = SORTS[sortName] || SORTS.intensity;
  const missing = (v) => v === null || v === undefined;
  return [...regions].sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    if (missing(x) || missing(y)) return missing(x) - missing(y);
    return (x < y ? -1 : x > y ? 1 : 0) * dir || a.key.localeCompare(b.key);
  });
}

function band(intensity) {
  if (intensity === null || intensity === undefined) return "unknown";
  return intensity < 100 ? "low" : intensity < 400 ? "mid" : "high";
}

export function render(container, { query }) {
  const cloud = query.get("cloud") || "";
  const sortName = SORTS[query.get("sort")] ? query.get("sort") : "intensity";
  const error = el("p", { class: "error", role: "alert", testid: "error", hidden: true });
  const body = el("div", { class: "loading" }, "Loading regions…");
  let alive = true;

  const setQuery = (name, value) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    location.hash = `#/regions?${next}`;
  };

  call("v1/regions").then((data) => {
    if (!alive) return;
    const all = (data.regions || []).map(normalise);
    const clouds = [...new Set(all.map((r) => r.cloud))].sort();
    const regions = sorted(all.filter((r) => !cloud || r.cloud === cloud), sortName);
    const cloudSelect = el("select", { id: "region-cloud", testid: "region-cloud" },
      el("option", { value: "" }, "all"),
      clouds.map((c) => el("option", { value: c, selected: c === cloud }, c)));
    const sortSelect = el("select", { id: "region-sort", testid: "region-sort" },
      Object.entries(SORTS).map(([name, s]) =>
        el("option", { value: name, selected: name === sortName }, s.label)));
    cloudSelect.addEventListener("change", () => setQuery("cloud", cloudSelect.value));
    sortSelect.addEventListener("change", () => setQuery("sort", sortSelect.value));
    mount(body,
      el("form", { class: "filters", testid: "region-filters" },
        el("label", { for: "region-cloud" }, "Cloud"), cloudSelect,
        el("label", { for: "region-sort" }, "Sort by"), sortSelect,
        el("span", { class: "legend" },
          el("span", { class: "swatch low" }), "< 100 g/kWh ",
          el("span", { class: "swatch mid" }), "100–400 ",
          el("span", { class: "swatch high" }), "≥ 400")),
      el("div", { class: "split" },
        el("section", { class: "card" }, el("h2", {}, "Grid intensity (g CO₂e/kWh)"),
          barChart({ label: "Average grid intensity per region, g CO2e per kWh",
            unit: "g/kWh", testid: "regions-chart",
            items: regions.map((r) => ({
              label: r.key, value: r.intensity_g_per_kwh, className: band(r.intensity_g_per_kwh),
              title: `${r.key} (${r.location}): ${num(r.intensity_g_per_kwh, 0)} g/kWh, ` +
                `CFE ${num(r.cfe_pct, 0)} %` })) })),
        el("section", { class: "card table-wrap" }, table({
          caption: `${regions.length} region(s)`, className: "data compact",
          testid: "regions-table",
          columns: [{ label: "Region" }, { label: "Location" },
            { label: "g/kWh", num: true }, { label: "CFE %", num: true },
            { label: "PUE", num: true },
            { label: "Cheapest USD/accel-h", num: true,
              title: "cheapest on-demand price per accelerator-hour in the region" }],
          rows: regions.map((r) => el("tr", { testid: "region-row", "data-region": r.key },
            el("th", { scope: "row" }, r.key), el("td", {}, r.location ?? "—"),
            el("td", { class: "num" }, num(r.intensity_g_per_kwh, 0)),
            el("td", { class: "num" }, num(r.cfe_pct, 0)),
            el("td", { class: "num" }, num(r.pue, 2)),
            el("td", { class: "num" }, num(r.cheapest_usd_per_hour, 2)))) }))));
  }).catch((err) => {
    if (!alive) return;
    body.replaceChildren();
    error.hidden = false;
    error.textContent = `Cannot load regions: ${err.message}`;
  });

  mount(container, el("div", { class: "page-head" }, el("h1", {}, "Regions")), error, body);
  return () => {
    alive = false;
  };
}
