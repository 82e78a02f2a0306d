"""The CLI as a client of a greenplace API (``GREENPLACE_API_URL`` + ``GREENPLACE_TOKEN``).

With both set, ``submit``, ``status``, ``events``, ``cancel`` and ``report`` go through
the API and need no access to Redis; without them they work against Redis as before.
The API's problem+json ``detail`` is the same one-paragraph message the local CLI prints,
so both paths read alike. The token travels only in the Authorization header; no error
or log line here prints it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from greenplace.scheduler.exceptions import ConfigError, RemoteError

URL_ENV, TOKEN_ENV = "GREENPLACE_API_URL", "GREENPLACE_TOKEN"
TIMEOUT_S = 60.0  # a submission of 100,000 jobs is parsed and written within this
_MEDIA_TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson",
                ".ndjson": "application/x-ndjson"}


@dataclass(frozen=True, slots=True)
class ApiClient:
    """A greenplace API at ``url``, called with ``token``."""

    url: str
    token: str

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              content: bytes | None = None, media_type: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if media_type:
            headers["Content-Type"] = media_type
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = httpx.request(method, f"{self.url.rstrip('/')}{path}", params=query,
                                     content=content, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise RemoteError(f"The greenplace API at {self.url} did not answer "
                              f"({type(exc).__name__}). To fix: check {URL_ENV} and that "
                              "`greenplace api` runs there.", status=0, exit_code=2) from exc
        if response.is_success:
            return response.json()
        try:
            detail = str(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = f"HTTP {response.status_code} from {self.url}"
        # 4xx: the request (token, file, id) is wrong, as a local user error; 5xx: the service.
        raise RemoteError(detail, status=response.status_code,
                          exit_code=2 if 400 <= response.status_code < 500 else 1)

    def submit(self, jobs_file: Path, *, policy: str | None, override_policy: bool,
               team: str | None) -> dict[str, Any]:
        try:
            content = jobs_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"jobs file {jobs_file} cannot be read: {exc.strerror}. To fix: "
                              "check the path.") from exc
        media_type = _MEDIA_TYPES.get(jobs_file.suffix.lower(), "application/yaml")
        params = {"policy": policy, "override_policy": "true" if override_policy else None,
                  "team": team}
        result: dict[str, Any] = self._call("POST", "/v1/jobs", params=params, content=content,
                                            media_type=media_type)
        return result

    def jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job the token sees (newest first), following the cursor page by page."""
        cursor = None
        while True:
            page = self._call("GET", "/v1/jobs", params={**filters, "limit": 500,
                                                         "cursor": cursor})
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}")
        return result

    def events(self, job_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/v1/jobs/{job_id}/events")["events"]
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def report(self, **query: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/report", params=query)
        return result


def remote() -> ApiClient | None:
    """The API client the environment asks for, or None to work against Redis directly."""
    url, token = os.environ.get(URL_ENV, "").strip(), os.environ.get(TOKEN_ENV, "").strip()
    if not url and not token:
        return None
    if not url or not token:
        missing = URL_ENV if not url else TOKEN_ENV
        raise ConfigError(f"{missing} is not set, but {TOKEN_ENV if not url else URL_ENV} is: "
                          "the CLI uses the API only with both. To fix: set both, or unset "
                          "both to work against Redis directly.")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{URL_ENV} must start with http:// or https://. To fix: write e.g. "
                          "https://greenplace.example.com.")
    return ApiClient(url=url, token=token)
