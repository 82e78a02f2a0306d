"""Job specs (the jobs-file trust boundary) and the jobs-file loader.

A jobs file holds ``jobs:`` (a list) or a single job mapping. Every error names
the file, the job and the field, and nothing is returned unless every job is valid
and the file is within the ``GREENPLACE_MAX_*`` limits (``scheduler.limits``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from greenplace.policies.model import (
    DEFAULT_POLICY,
    Policy,
    SpotMode,
    load_policy,
    preset_names,
)
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError, UnknownNameError, UserInputError, shown
from greenplace.scheduler.jobfile import RawJob, kind_of, read_jobs
from greenplace.scheduler.limits import check_run
from greenplace.scheduler.settings import Limits, load_limits
from greenplace.scheduler.yamlfile import validation_message

JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
CALIBRATION_LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"  # no ':' (calibration keys)

# Design choice: a training job rarely draws its accelerators' full TDP (Patterson et
# al. 2021 report measured averages below TDP for every system); 0.8 is the documented
# default, overridable per job with work.utilization or a measured work.avg_power_w.
# Measured on one H100 (benchmarks/gpu_power.py, see benchmarks/README.md): a
# compute-bound single-GPU transformer training loop drew 0.85 of its 700 W limit, a
# saturating matrix product 0.997; data loading and communication pull real runs lower.
DEFAULT_UTILIZATION = 0.8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """What the job needs: alternatives of {ACCELERATOR: COUNT}, and spot preference."""

    accelerators: dict[str, int] | list[dict[str, int]]
    spot: bool | None = None

    @pydantic.field_validator("accelerators")
    @classmethod
    def _counts(cls, value: dict[str, int] | list[dict[str, int]]) -> object:
        options = value if isinstance(value, list) else [value]
        if not options or any(not o for o in options):
            raise ValueError("list at least one {ACCELERATOR: COUNT}")
        for option in options:
            for name, count in option.items():
                if count < 1 or count > 4096:
                    raise ValueError(f"count of {shown(name, quote=False)} must be between "
                                     f"1 and 4096, got {count}")
        return value

    def alternatives(self) -> list[tuple[str, int]]:
        """(name, count) pairs in the order the user listed them."""
        options = self.accelerators if isinstance(self.accelerators, list) else [self.accelerators]
        return [(name, count) for option in options for name, count in option.items()]


class Work(_Strict):
    """How much work the job is: hours on the reference accelerator set."""

    hours: float = Field(gt=0, le=100_000)
    reference: str | None = None
    utilization: float | None = Field(None, gt=0, le=1)
    avg_power_w: float | None = Field(None, gt=0, le=5_000)


class JobSpec(_Strict):
    """One training job as the user wrote it."""

    name: str = Field(pattern=JOB_NAME_PATTERN)
    run: str = Field(min_length=1)
    resources: Resources
    work: Work
    deadline: dt.datetime | None = None
    policy: str | None = None
    # Temporal shifting: how long the job may wait for a greener window (with or
    # instead of `deadline`), and whether it may be paused and resumed.
    max_delay_hours: float | None = Field(None, gt=0, le=8_760)
    pausable: bool = False
    # Where the job would run without greenplace (CLOUD:REGION); the backtest's run-now case.
    home: str | None = Field(None, pattern=r"^[a-z]+:[A-Za-z0-9-]+$")
    # Runs of this label teach placement their own measured power per chip, apart from the
    # accelerator's other runs (scheduler/calibration.py); e.g. "llm-pretrain".
    calibration_label: str | None = Field(
        None, description="runs with this label learn their own measured power per chip",
        json_schema_extra={"pattern": f"^{CALIBRATION_LABEL_PATTERN}$"})

    @pydantic.field_validator("calibration_label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(CALIBRATION_LABEL_PATTERN, value):
            raise ValueError(
                f"{shown(value)} is not a calibration label: use 1 to 63 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (runs with the same label "
                "share one measured power per chip, e.g. llm-pretrain)")
        return value

    @pydantic.field_validator("deadline")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class JobsFile(_Strict):
    """A whole jobs file in its list form; a file may also hold one job mapping."""

    jobs: list[JobSpec] = Field(min_length=1)


def jobs_file_schema() -> dict[str, object]:
    """The JSON Schema of a jobs file: ``jobs:`` with a list of jobs, or a single job."""
    schema = pydantic.TypeAdapter(JobsFile | JobSpec).json_schema()
    return {"title": "greenplace jobs file", **schema}


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A validated job, resolved against the catalog: canonical names and its policy."""

    spec: JobSpec
    alternatives: tuple[tuple[str, int], ...]  # canonical accelerator names, counts
    reference: tuple[str, int]
    policy: Policy
    # The job's own `policy:` that a command line --override-policy replaced (None: kept).
    replaced_policy: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def utilization(self) -> float:
        return self.spec.work.utilization or DEFAULT_UTILIZATION


def resolve_job(
    spec: JobSpec, catalog: Catalog, *, policy: Policy, where: str
) -> Job:
    """Resolve accelerator names and check the job against its policy.

    Raises:
        SpecError / UnknownNameError: naming ``where`` (file and job) and the field.
    """
    alternatives = []
    for name, count in spec.resources.alternatives():
        try:
            alternatives.append((catalog.accelerator(name).name, count))
        except UnknownNameError as exc:
            raise SpecError(f"{where}, field 'resources.accelerators': {exc}") from exc
    if len({a for a, _ in alternatives}) != len(alternatives):
        raise SpecError(
            f"{where}, field 'resources.accelerators': an accelerator is listed twice. "
            "To fix: list each accelerator once."
        )
    reference = alternatives[0]
    if spec.work.reference is not None:
        try:
            wanted = catalog.accelerator(spec.work.reference).name
        except UnknownNameError as exc:
            raise SpecError(f"{where}, field 'work.reference': {exc}") from exc
        matches = [a for a in alternatives if a[0] == wanted]
        if not matches:
            raise SpecError(
                f"{where}, field 'work.reference': {wanted} is not one of the job's "
                f"accelerators {[a for a, _ in alternatives]}. To fix: name one of them."
            )
        reference = matches[0]
    if spec.home is not None:
        try:
            catalog.region(spec.home)
        except UnknownNameError as exc:
            raise SpecError(f"{where}, field 'home': {exc}") from exc
    spot_mode = policy.constraints.spot
    if spec.resources.spot is True and spot_mode == SpotMode.FORBID:
        raise SpecError(
            f"{where}, field 'resources.spot': the job asks for spot but policy "
            f"{policy.name!r} forbids spot. To fix: drop `spot: true` or use another policy."
        )
    if spec.resources.spot is False and spot_mode == SpotMode.REQUIRE:
        raise SpecError(
            f"{where}, field 'resources.spot': the job forbids spot but policy "
            f"{policy.name!r} requires it. To fix: drop `spot: false` or use another policy."
        )
    return Job(spec=spec, alternatives=tuple(alternatives), reference=reference, policy=policy)


def _job_label(raw: object, index: int, line: int | None) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    label = f"job {shown(name)}" if isinstance(name, str) else f"job #{index + 1}"
    return label if line is None else f"line {line}, {label}"


def load_jobs(
    path: Path, catalog: Catalog, *, policy: Policy | None = None,
    override_policy: bool = False, now: dt.datetime | None = None,
    limits: Limits | None = None, content: bytes | None = None, policy_files: bool = True,
) -> list[Job]:
    """Load, validate and resolve every job of a jobs file; all or nothing.

    Args:
        path: the jobs file: YAML, JSON or JSON lines (see ``scheduler.jobfile``).
        catalog: the catalog accelerator names are resolved against.
        policy: the policy of jobs without their own `policy:` (default: the preset
            ``DEFAULT_POLICY``). A job's own relative policy path is resolved from the
            jobs file's folder.
        override_policy: apply ``policy`` to every job, also those with their own (each
            such job records the name it lost in ``Job.replaced_policy``).
        now: when given, a deadline at or before it is an input error.
        limits: what the file may hold (default: ``GREENPLACE_MAX_*`` from the environment).
        content: the file's bytes when they come from elsewhere (an API request body);
            ``path`` then only names them in errors.
        policy_files: whether a job's `policy:` may name a policy file. The API says
            False: a request must not make the server read its own files.

    Raises:
        SpecError / UnknownNameError: naming file, job and field. Broken syntax or a
        wrong top level anywhere in the file is reported before a bad job.
        ConfigError: a ``GREENPLACE_MAX_*`` variable is unusable.
    """
    limits = limits or load_limits()
    raw_jobs = read_jobs(path, limits, content=content)
    try:
        with _collector_paused():
            return _resolve_all(path, raw_jobs, catalog, policy=policy,
                                override_policy=override_policy, now=now,
                                max_run_bytes=limits.run_bytes, policy_files=policy_files)
    except UserInputError:
        for _ in raw_jobs:  # the rest of the file may hold a problem that explains more
            pass
        raise


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector, then resume it if it ran before.

    Design choice: a load keeps every job it builds, so each collection during it
    rescans all the jobs so far and finds no garbage (raw jobs, specs and jobs hold no
    reference cycles): more than half the time of a 100,000-job load (3.7 s against
    1.4 s). Reference counting still frees everything else as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _resolve_all(
    path: Path, raw_jobs: Iterable[RawJob], catalog: Catalog, *, policy: Policy | None,
    override_policy: bool, now: dt.datetime | None, max_run_bytes: int, policy_files: bool,
) -> list[Job]:
    policies: dict[str, Policy] = {}
    jobs: list[Job] = []
    seen: set[str] = set()
    for index, raw_job in enumerate(raw_jobs):
        raw = raw_job.data
        where = f"{path}, {_job_label(raw, index, raw_job.line)}"
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: a job must be a mapping, found {kind_of(raw)}.")
        try:
            spec = JobSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise SpecError(validation_message(exc, where=where)) from exc
        check_run(spec.run, where=where, max_bytes=max_run_bytes)
        if spec.name in seen:
            raise SpecError(f"{where}, field 'name': the name is used twice in this file.")
        seen.add(spec.name)
        if now is not None and spec.deadline is not None and spec.deadline <= now:
            raise SpecError(
                f"{where}, field 'deadline': the deadline {spec.deadline.isoformat()} has "
                f"passed (now {now.isoformat(timespec='seconds')}). To fix: set a deadline in "
                "the future, or remove it.")
        if policy is not None and (override_policy or spec.policy is None):
            job_policy = policy
        else:
            ref = spec.policy or DEFAULT_POLICY
            if not policy_files and ref not in preset_names():
                raise SpecError(
                    f"{where}, field 'policy': {shown(ref)} is not a preset, and the API reads "
                    f"no policy files. To fix: name a preset ({', '.join(preset_names())}), "
                    "or submit with the CLI against Redis to use a policy file.")
            if ref not in policies:
                try:
                    policies[ref] = load_policy(ref, base_dir=path.parent)
                except (SpecError, UnknownNameError) as exc:
                    raise SpecError(f"{where}, field 'policy': {exc}") from exc
            job_policy = policies[ref]
        job = resolve_job(spec, catalog, policy=job_policy, where=where)
        if override_policy and spec.policy is not None:
            job = dataclasses.replace(job, replaced_policy=spec.policy)
        jobs.append(job)
    return jobs
