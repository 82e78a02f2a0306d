// The dashboard shell: login, hash routing (#/jobs, #/jobs/<id>, #/regions, #/savings),
// the readiness badge and logout. Each page is a module whose render(container, params)
// draws into `container` and returns a function that stops its polling.

import { clearToken, call, getToken, readiness, setToken, setUnauthorizedHandler } from "./api.js";
import { el, mount } from "./dom.js";
import * as jobPage from "./page-job.js";
import * as jobsPage from "./page-jobs.js";
import * as regionsPage from "./page-regions.js";
import * as savingsPage from "./page-savings.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const logoutButton = document.getElementById("logout");
let stopPage = () => {};
let signingIn = false;

/** The page and its parameters for a location hash. */
function route(hash) {
  const [path, queryString] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryString || "");
  if (parts[0] === "jobs" && parts[1]) return { page: jobPage, name: "jobs", id: parts[1] };
  if (parts[0] === "regions") return { page: regionsPage, name: "regions", query };
  if (parts[0] === "savings") return { page: savingsPage, name: "savings", query };
  return { page: jobsPage, name: "jobs", query };
}

function showLogin(message) {
  stopPage();
  stopPage = () => {};
  nav.hidden = true;
  logoutButton.hidden = true;
  const input = el("input", { id: "token", type: "password", autocomplete: "off",
    spellcheck: "false", required: true, testid: "token-input",
    "aria-describedby": "token-help" });
  const error = el("p", { class: "error", role: "alert", testid: "login-error",
    hidden: !message }, message || "");
  const button = el("button", { type: "submit", testid: "login-submit" }, "Sign in");
  // No `name` on the input and a POST-free form: even without JavaScript the token can
  // never be submitted into a URL.
  const form = el("form", { class: "login card", testid: "login-form", "aria-label": "Sign in" },
    el("h1", {}, "Sign in to greenplace"),
    el("label", { for: "token" }, "API token"),
    input,
    el("p", { id: "token-help", class: "hint" },
      "Create one with `greenplace admin token create --team TEAM`. It is kept in this tab ",
      "only (sessionStorage) and sent as an Authorization header."),
    error, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    signingIn = true;
    setToken(token);
    try {
      await call("v1/jobs", { query: { limit: 1 } });
      input.value = "";
      render();
    } catch (err) {
      if (err.status !== 401) {
        clearToken();
        error.hidden = false;
        error.textContent = `Cannot sign in: ${err.message}`;
      }
    } finally {
      signingIn = false;
      button.disabled = false;
    }
  });
  mount(view, form);
  input.focus();
}

function render() {
  stopPage();
  stopPage = () => {};
  if (!getToken()) {
    showLogin("");
    return;
  }
  nav.hidden = false;
  logoutButton.hidden = false;
  const target = route(location.hash);
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.page === target.name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  view.replaceChildren();
  stopPage = target.page.render(view, target) || (() => {});
}

async function showReadiness() {
  const badge = document.getElementById("readiness");
  const ready = await readiness();
  if (!ready) {
    badge.className = "readiness down";
    badge.textContent = "API unreachable";
  } else {
    const ok = ready.status === "ready";
    badge.className = `readiness ${ok ? "up" : "down"}`;
    badge.textContent = `${ok ? "ready" : "not ready"} · workers ${ready.workers_seen ?? "?"}`;
    badge.title = `redis: ${ready.redis ? "up" : "down"}`;
  }
}

setUnauthorizedHandler((error) => {
  const why = error.detail || error.title;
  if (signingIn) {
    showLogin(`That token was refused (401${why ? `: ${why}` : ""}). Check it and try again.`);
    return;
  }
  showLogin(`Signed out: the API refused the token (401${why ? `: ${why}` : ""}). ` +
    "Sign in again with a valid token.");
});
logoutButton.addEventListener("click", () => {
  clearToken();
  showLogin("You are signed out.");
});
window.addEventListener("hashchange", render);
render();
showReadiness();
setInterval(showReadiness, 10000);
