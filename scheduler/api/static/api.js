// The one client of the /v1 JSON API. The bearer token lives in sessionStorage only (gone
// when the tab closes; never in localStorage, never in a URL) and goes out as
// `Authorization: Bearer`. A 401 from any call forgets the token and hands control to the
// `onUnauthorized` callback the app registers (it shows the login form with a message).

const TOKEN_KEY = "greenplace.token";
let onUnauthorized = () => {};

export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An HTTP error with the problem+json fields (RFC 9457) when the server sent them. */
export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

/** Resolve an API path against the page (so a dashboard served under a prefix still works). */
function url(path, query) {
  const target = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") {
      target.searchParams.set(key, String(value));
    }
  }
  return target;
}

async function problem(response) {
  let title = `${response.status} ${response.statusText}`.trim();
  let detail = "";
  try {
    const body = await response.json();
    title = body.title || title;
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? "");
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, title, detail);
}

/** Call the API; resolve to the parsed JSON body, or throw ApiError. */
export async function call(path, { method = "GET", query, body } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path, query), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "The greenplace API cannot be reached", String(err.message || err));
  }
  if (response.status === 401) {
    const error = await problem(response);
    clearToken();
    onUnauthorized(error);
    throw error;
  }
  if (!response.ok) throw await problem(response);
  return response.status === 204 ? null : response.json();
}

/** GET /readyz (no token): {status, redis, workers_seen}, or null when unreachable. */
export async function readiness() {
  try {
    const response = await fetch(url("readyz"), { cache: "no-store", credentials: "omit" });
    return await response.json();
  } catch {
    return null;
  }
}
