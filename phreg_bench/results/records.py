"""The result record (schema v1): one backbone × method × task × protocol, as typed frozen parts.

One constructor per kind: :meth:`ResultRecord.measured` (a run of this tool, finished or failed) and
:meth:`ResultRecord.reported` (a number quoted from a paper). :meth:`ResultRecord.to_json` writes the
on-disk form; :meth:`ResultRecord.from_json` is the one place that validates a file and migrates what older
files lack. The config hash that names a file is :attr:`RunIdentity.config_hash`.

On disk (keys sorted, strict JSON; ``?``: only some records)::

    schema_version: 1, kind: "measured" | "reported", config_hash, record_sha256?  (measured)
    task:       {name, family, version, spec_hash}
    backbone:   the backbone's description (name, architecture, weights_id, weights_sha256, pos_resample?, ...)
    method:     {name, config}
    protocol:   {name, settings, variant}          variant: the family's row variant (null: none)
    precision?: "fp32" | "bf16" | "fp16"           (measured)
    metrics?:   {main, higher_is_better, values, per_class}   (absent in an error record)
    status:     {complete, num_samples, expected_samples, limit, error?: {type, message}}
    timings?:   {total_s, phases, images_per_s, peak_memory_mb, device, precision, processes}   (measured)
    provenance?: {package_versions, git, hardware, command, seed, started_at, finished_at}    (measured)
    extra?:     family-specific facts about the run, outside identity and score        (measured)
    citation?:  {source, table?, title?, note?}    (reported)
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from phreg_bench.results.hashing import backbone_identity, base_backbone_identity, canonical_json, config_hash
from phreg_bench.results.schema import KINDS, PRECISIONS, SCHEMA_VERSION, ResultError

Json = dict[str, Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field(section: Json, name: str, key: str, expected: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """``section[key]`` checked against ``expected`` (``None`` allowed when ``optional``)."""
    value = section.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ResultError(f"field {name}.{key} is missing or of the wrong type")
    return value


def _known(section: Json, name: str, keys: tuple[str, ...], strict: bool) -> None:
    unknown = sorted(set(section) - set(keys))
    if strict and unknown:
        raise ResultError(f"field {name} has unknown key(s) {', '.join(map(repr, unknown))}")


def _check_numbers(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ResultError(f"{where}: non-finite number {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, f"{where}[{index}]")


def record_checksum(data: Json) -> str:
    """sha256 of a record's JSON without its ``record_sha256`` field (canonical JSON): edits after writing show."""
    return hashlib.sha256(canonical_json({k: v for k, v in data.items() if k != "record_sha256"}).encode()
                          ).hexdigest()


# -- identity --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRef:
    """Which task: registered name (``family/dataset``), family, spec version and the spec's hash (``None``:
    a reported number, whose spec is not known)."""

    name: str
    family: str
    version: str
    spec_hash: str | None

    KEYS = ("name", "family", "version", "spec_hash")

    def to_json(self) -> Json:
        return {"name": self.name, "family": self.family, "version": self.version, "spec_hash": self.spec_hash}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> TaskRef:
        _known(data, "task", cls.KEYS, strict)
        return cls(_field(data, "task", "name", str), _field(data, "task", "family", str),
                   _field(data, "task", "version", str), _field(data, "task", "spec_hash", str, optional=True))


@dataclass(frozen=True)
class BackboneRef:
    """The record's ``backbone`` section: the backbone's own description (the dict its ``describe()`` /
    ``info.to_dict()`` returns: name, architecture, weights, geometry, family extras), kept as given.

    Only :attr:`identity` (name, architecture, weights, positional-embedding policy) enters the hash.
    """

    description: Json

    @property
    def name(self) -> str:
        return self.description["name"]

    @property
    def identity(self) -> Json:
        """What enters the config hash and keys leaderboard rows (see :func:`.hashing.backbone_identity`)."""
        return backbone_identity(self.description)

    @property
    def base_identity(self) -> Json:
        """The identity of the backbone this one runs (a ``phreg:<base>`` name's base; else itself)."""
        return base_backbone_identity(self.description)

    def to_json(self) -> Json:
        return copy.deepcopy(self.description)

    @classmethod
    def from_json(cls, data: Json) -> BackboneRef:
        _field(data, "backbone", "name", str)
        _field(data, "backbone", "weights_id", str)
        return cls(copy.deepcopy(data))


@dataclass(frozen=True)
class MethodRef:
    """The method and its configuration (what ``DenseModel.describe()`` returns)."""

    name: str
    config: Json = field(default_factory=dict)

    def to_json(self) -> Json:
        return {"name": self.name, "config": copy.deepcopy(self.config)}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> MethodRef:
        _known(data, "method", ("name", "config"), strict)
        return cls(_field(data, "method", "name", str), copy.deepcopy(_field(data, "method", "config", dict)))


@dataclass(frozen=True)
class Protocol:
    """The protocol preset's name, the full resolved settings (hashed) and the family's row variant.

    ``variant`` is what :meth:`~phreg_bench.tasks.base.TaskFamily.row_variant` declares (probe families: the
    budget and feature mode, e.g. ``full`` or ``quick/full``); ``None`` for families without one. It is
    derived from the settings, so it is not hashed again.
    """

    name: str
    settings: Json
    variant: str | None = None

    def to_json(self) -> Json:
        return {"name": self.name, "settings": copy.deepcopy(self.settings), "variant": self.variant}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Protocol:
        _known(data, "protocol", ("name", "settings", "variant"), strict)
        return cls(_field(data, "protocol", "name", str), copy.deepcopy(_field(data, "protocol", "settings", dict)),
                   _field(data, "protocol", "variant", str, optional=True))


@dataclass(frozen=True)
class RunIdentity:
    """Everything that changes the numbers: task, backbone, method, protocol, seed, sample limit and the
    autocast precision that ran (``None``: a reported number, or a file from before precision was recorded).
    """

    task: TaskRef
    backbone: BackboneRef
    method: MethodRef
    protocol: Protocol
    seed: int
    limit: int | None
    precision: str | None

    @property
    def config_hash(self) -> str:
        """sha256 over the identity (:func:`~phreg_bench.results.hashing.config_hash`); names the result file."""
        return config_hash(task=self.task.to_json(), backbone=self.backbone.description,
                           method=self.method.to_json(), protocol=self.protocol.settings, seed=self.seed,
                           limit=self.limit, precision=self.precision)


# -- what was measured ------------------------------------------------------------------------------------------


class Outcome(TypingProtocol):
    """What a task family hands the record (:class:`phreg_bench.tasks.base.TaskOutcome` is one)."""

    main_metric: str
    metrics: dict[str, float]
    num_samples: int
    per_class: dict[str, float | None]
    extra: dict[str, Any]
    phases: dict[str, float]


def format_metric(value: float) -> str:
    """A metric value for summaries and logs: four significant digits, trailing zeros kept (``61`` ->
    ``"61.00"``, ``1.233`` -> ``"1.233"``, ``0.5`` -> ``"0.5000"``), so a whole number never loses its decimals."""
    return f"{value:#.4g}"


@dataclass(frozen=True)
class Score:
    """One cell of a leaderboard: the main metric's value, name and direction."""

    value: float
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class Metrics:
    """``values`` holds the main metric and any others; ``per_class`` maps class -> value (``None``: absent)."""

    main: str
    higher_is_better: bool
    values: dict[str, float]
    per_class: dict[str, float | None] = field(default_factory=dict)

    @property
    def score(self) -> Score:
        return Score(self.values[self.main], self.main, self.higher_is_better)

    def to_json(self) -> Json:
        return {"main": self.main, "higher_is_better": self.higher_is_better, "values": dict(self.values),
                "per_class": dict(self.per_class)}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Metrics:
        _known(data, "metrics", ("main", "higher_is_better", "values", "per_class"), strict)
        main = _field(data, "metrics", "main", str)
        values = _field(data, "metrics", "values", dict)
        if not _is_number(values.get(main)):
            raise ResultError(f"metrics.values has no number for the main metric {main!r}")
        return cls(main, _field(data, "metrics", "higher_is_better", bool), dict(values),
                   dict(_field(data, "metrics", "per_class", dict, optional=True) or {}))


@dataclass(frozen=True)
class RunError:
    """Why a task failed: the exception's type name and message."""

    type: str
    message: str

    def to_json(self) -> Json:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True)
class Status:
    """How much ran: ``complete`` (every expected sample, no limit, no error), the samples evaluated, the
    spec's expected count (``None``: not known) and, for a failed run, the error."""

    complete: bool
    num_samples: int
    expected_samples: int | None
    error: RunError | None = None

    def to_json(self, limit: int | None) -> Json:
        data = {"complete": self.complete, "num_samples": self.num_samples,
                "expected_samples": self.expected_samples, "limit": limit}
        if self.error is not None:
            data["error"] = self.error.to_json()
        return data

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Status:
        _known(data, "status", ("complete", "num_samples", "expected_samples", "limit", "error"), strict)
        error = None
        if data.get("error") is not None:
            raw = _field(data, "status", "error", dict)
            error = RunError(_field(raw, "status.error", "type", str), _field(raw, "status.error", "message", str))
        return cls(_field(data, "status", "complete", bool), _field(data, "status", "num_samples", int),
                   _field(data, "status", "expected_samples", int, optional=True), error)


@dataclass(frozen=True)
class Timings:
    """Wall time in seconds (``total_s``, per phase), throughput, peak memory (MiB), device, the precision
    that ran and the number of processes. ``None``: not recorded."""

    total_s: float | None
    phases: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    precision: str | None = None
    processes: int = 1

    KEYS = ("total_s", "phases", "images_per_s", "peak_memory_mb", "device", "precision", "processes")

    def to_json(self) -> Json:
        return {"total_s": self.total_s, "phases": dict(self.phases), "images_per_s": self.images_per_s,
                "peak_memory_mb": self.peak_memory_mb, "device": self.device, "precision": self.precision,
                "processes": self.processes}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Timings:
        _known(data, "timings", cls.KEYS, strict)
        number = (int, float)
        return cls(_field(data, "timings", "total_s", number, optional=True),
                   dict(_field(data, "timings", "phases", dict, optional=True) or {}),
                   _field(data, "timings", "images_per_s", number, optional=True),
                   _field(data, "timings", "peak_memory_mb", number, optional=True),
                   _field(data, "timings", "device", str, optional=True),
                   _field(data, "timings", "precision", str, optional=True),
                   _field(data, "timings", "processes", int))


@dataclass(frozen=True)
class Provenance:
    """Package versions, git state, hardware, command line and UTC start/end times (ISO 8601) of a run.

    The run's seed is part of the identity; on disk it is written here (``provenance.seed``).
    """

    package_versions: dict[str, str | None]
    git: Json
    hardware: Json
    command: list[str]
    started_at: str
    finished_at: str

    KEYS = ("package_versions", "git", "hardware", "command", "seed", "started_at", "finished_at")

    def to_json(self, seed: int) -> Json:
        return {"package_versions": dict(self.package_versions), "git": dict(self.git),
                "hardware": dict(self.hardware), "command": list(self.command), "seed": seed,
                "started_at": self.started_at, "finished_at": self.finished_at}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Provenance:
        _known(data, "provenance", cls.KEYS, strict)
        return cls(dict(_field(data, "provenance", "package_versions", dict)),
                   dict(_field(data, "provenance", "git", dict)), dict(_field(data, "provenance", "hardware", dict)),
                   list(_field(data, "provenance", "command", list)), _field(data, "provenance", "started_at", str),
                   _field(data, "provenance", "finished_at", str))


@dataclass(frozen=True)
class Citation:
    """Where a reported number comes from: ``source`` (e.g. ``arXiv:2505.21501``), table, title, a note."""

    source: str
    table: str | None = None
    title: str | None = None
    note: str | None = None

    def to_json(self) -> Json:
        data = {"source": self.source, "table": self.table, "title": self.title, "note": self.note}
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: Json, strict: bool) -> Citation:
        _known(data, "citation", ("source", "table", "title", "note"), strict)
        return cls(_field(data, "citation", "source", str), _field(data, "citation", "table", str, optional=True),
                   _field(data, "citation", "title", str, optional=True),
                   _field(data, "citation", "note", str, optional=True))


# -- the record ---------------------------------------------------------------------------------------------------

_TOP_LEVEL = ("schema_version", "kind", "config_hash", "record_sha256", "task", "backbone", "method", "protocol",
              "precision", "metrics", "status", "timings", "provenance", "extra", "citation")
# section -> the kinds that require it (``metrics``: not in an error record, see from_json)
_SECTIONS: dict[str, tuple[str, ...]] = {
    "task": KINDS, "backbone": KINDS, "method": KINDS, "protocol": KINDS, "metrics": KINDS, "status": KINDS,
    "timings": ("measured",), "provenance": ("measured",), "citation": ("reported",),
}


@dataclass(frozen=True)
class ResultRecord:
    """One result: its identity, what was measured (``metrics``; ``None`` for a failed run) and how.

    Build with :meth:`measured` or :meth:`reported`; read with :meth:`from_json`. ``extra`` holds the
    family's facts about the run (feature-cache use, resolved sizes, skipped files, per-class accuracy):
    informative only, neither hashed nor scored. ``record_sha256`` is the checksum a store wrote (``None``
    before writing, and for reported records).
    """

    kind: str
    identity: RunIdentity
    status: Status
    metrics: Metrics | None
    timings: Timings | None = None
    provenance: Provenance | None = None
    citation: Citation | None = None
    extra: Json = field(default_factory=dict)
    record_sha256: str | None = None

    # -- constructors ---------------------------------------------------------------------------------------

    @classmethod
    def measured(cls, identity: RunIdentity, *, outcome: Outcome | None = None, error: BaseException | None = None,
                 higher_is_better: bool, expected_samples: int | None, timings: Timings,
                 provenance: Provenance) -> ResultRecord:
        """A run of this tool: exactly one of ``outcome`` (it finished) or ``error`` (it failed: no metrics,
        ``status.error`` names the exception, ``timings`` holds what elapsed before it).

        ``complete`` means every expected sample was evaluated without a ``limit``.
        """
        if (outcome is None) == (error is None):
            raise ResultError("ResultRecord.measured takes exactly one of outcome and error")
        if error is not None:
            status = Status(False, 0, expected_samples, RunError(type(error).__name__, str(error)))
            return cls("measured", identity, status, None, timings, provenance)
        assert outcome is not None
        complete = identity.limit is None and (expected_samples is None or outcome.num_samples >= expected_samples)
        metrics = Metrics(outcome.main_metric, higher_is_better, dict(outcome.metrics), dict(outcome.per_class))
        return cls("measured", identity, Status(complete, outcome.num_samples, expected_samples), metrics, timings,
                   provenance, extra=copy.deepcopy(outcome.extra))

    @classmethod
    def reported(cls, *, task: TaskRef, backbone: str, method: str, protocol: str, metrics: Metrics,
                 citation: Citation, budget: str = "full") -> ResultRecord:
        """A number quoted from a paper: no provenance or timings are claimed, weights are ``as reported``.

        Its settings are the protocol name and the paper's training ``budget``, which is also its row variant.
        """
        identity = RunIdentity(
            task=task, backbone=BackboneRef({"name": backbone, "weights_id": "as reported", "weights_sha256": None}),
            method=MethodRef(method, {}), protocol=Protocol(protocol, {"name": protocol, "budget": budget}, budget),
            seed=0, limit=None, precision=None)
        return cls("reported", identity, Status(True, 0, None), metrics, citation=citation)

    # -- reading ----------------------------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self.status.error is not None

    @property
    def precision_ran(self) -> str | None:
        """The autocast precision that ran (``None``: a reported number). Files from before ``precision`` was
        recorded (not hashed there, so not migrated into the identity): autocast only ever ran on CUDA."""
        if self.kind != "measured":
            return None
        if self.identity.precision is not None:
            return self.identity.precision
        timings = self.timings or Timings(None)
        return (timings.precision or "fp32") if str(timings.device or "").startswith("cuda") else "fp32"

    @property
    def finished_at(self) -> str:
        """UTC end time of a measured run (``""`` for a reported number)."""
        return self.provenance.finished_at if self.provenance is not None else ""

    # -- JSON -------------------------------------------------------------------------------------------------

    def to_json(self) -> Json:
        """The on-disk form (a fresh dict; :func:`~phreg_bench.results.schema.dumps_strict` writes it)."""
        identity = self.identity
        data: Json = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "config_hash": identity.config_hash,
                      "task": identity.task.to_json(), "backbone": identity.backbone.to_json(),
                      "method": identity.method.to_json(), "protocol": identity.protocol.to_json(),
                      "status": self.status.to_json(identity.limit)}
        if self.metrics is not None:
            data["metrics"] = self.metrics.to_json()
        if self.kind == "measured":
            if identity.precision is not None:
                data["precision"] = identity.precision
            assert self.timings is not None and self.provenance is not None
            data["timings"] = self.timings.to_json()
            data["provenance"] = self.provenance.to_json(identity.seed)
            data["extra"] = copy.deepcopy(self.extra)
        if self.citation is not None:
            data["citation"] = self.citation.to_json()
        if self.record_sha256 is not None:
            data["record_sha256"] = self.record_sha256
        return data

    @classmethod
    def from_json(cls, data: Any, *, strict: bool = True, migrate: bool = True) -> ResultRecord:
        """Validate a parsed result file and build the record; raise :class:`ResultError` naming the first problem.

        ``strict``: refuse unknown fields, a ``config_hash`` that does not match the identity fields and a
        ``record_sha256`` that does not match the content (the file was edited after it was written).
        ``migrate``: fill in what files written by earlier versions lack (see :func:`_migrated`); without it
        such a file is refused.
        """
        if not isinstance(data, dict):
            raise ResultError("a result must be a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ResultError(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ResultError(f"kind {kind!r} must be one of {KINDS}")
        _known(data, "result", _TOP_LEVEL, strict)
        failed = isinstance(data.get("status"), dict) and data["status"].get("error") is not None
        for key, kinds in _SECTIONS.items():
            if kind in kinds and not (key == "metrics" and failed) and not isinstance(data.get(key), dict):
                raise ResultError(f"field {key!r} is missing or not a dict")
        if not isinstance(data.get("config_hash"), str):
            raise ResultError("field 'config_hash' is missing or not a str")
        _check_numbers(data, "result")
        raw = data  # what the checksum covers (before migration)
        if migrate:
            data = _migrated(data)
        elif "variant" not in data["protocol"]:
            raise ResultError("field protocol.variant is missing (a file from an earlier version; read it with "
                              "migrate=True)")
        precision = data.get("precision")
        if precision is not None and precision not in PRECISIONS:
            raise ResultError(f"field 'precision' must be one of {PRECISIONS}, got {precision!r}")
        if kind == "measured":
            seed, limit = data["provenance"].get("seed"), data["status"].get("limit")
        else:
            seed, limit = 0, None
        if not _is_int(seed) or not (limit is None or _is_int(limit)):
            raise ResultError("provenance.seed must be an integer and status.limit an integer or null")
        identity = RunIdentity(TaskRef.from_json(data["task"], strict), BackboneRef.from_json(data["backbone"]),
                               MethodRef.from_json(data["method"], strict),
                               Protocol.from_json(data["protocol"], strict), seed, limit, precision)
        record = cls(
            kind, identity, Status.from_json(data["status"], strict),
            None if failed else Metrics.from_json(data["metrics"], strict),
            Timings.from_json(data["timings"], strict) if kind == "measured" else None,
            Provenance.from_json(data["provenance"], strict) if kind == "measured" else None,
            Citation.from_json(data["citation"], strict) if kind == "reported" else None,
            copy.deepcopy(_field(data, "result", "extra", dict, optional=True) or {}),
            _field(data, "result", "record_sha256", str, optional=True))
        if strict:
            try:
                expected = identity.config_hash
            except (KeyError, TypeError, ValueError) as error:
                raise ResultError(f"the identity fields cannot be hashed ({type(error).__name__}: {error})") from error
            if data["config_hash"] != expected:
                raise ResultError(f"config_hash {data['config_hash'][:12]}… does not match the task, backbone, "
                                  f"method, protocol, seed, limit and precision recorded in the file "
                                  f"({expected[:12]}…): it was edited after it was written; rerun the task "
                                  "instead of editing its result")
            if record.record_sha256 is not None and record.record_sha256 != record_checksum(raw):
                raise ResultError("record_sha256 does not match the content (metrics or other fields were edited "
                                  "after the file was written); rerun the task instead of editing its result")
        return record


def _migrated(data: Json) -> Json:
    """A copy of a schema-v1 file with what earlier versions did not write filled in (none of it is hashed):

    - ``protocol.variant`` (recorded since the family declares it): computed here from the settings the
      probe families' ``row_variant`` reads (``budget``, then ``/train_features`` when set) — the rule the
      leaderboard applied before; no ``budget`` setting: no variant. This is the one place outside the probe
      families that knows these keys, and it only reads files written before they declared their variant.
    - ``timings.processes``: 1 (there was no multi-process evaluation); other missing timing fields: null.
    """
    data = dict(data)
    protocol = data["protocol"]
    if "variant" not in protocol:
        settings = protocol.get("settings") if isinstance(protocol.get("settings"), dict) else {}
        variant = None
        if "budget" in settings:
            variant = str(settings["budget"])
            if settings.get("train_features"):
                variant += f"/{settings['train_features']}"
        data["protocol"] = {**protocol, "variant": variant}
    timings = data.get("timings")
    if isinstance(timings, dict) and not set(Timings.KEYS) <= set(timings):
        data["timings"] = {**{key: None for key in Timings.KEYS}, "processes": 1, "phases": {}, **timings}
    return data
