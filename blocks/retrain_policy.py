"""When to retrain, on which data, and how much evidence a decision needs: the retrain policy.

The drift monitor asks this policy whether the current window calls for a retraining (data
drift, a measured drop in the champion's performance on newly labelled rows, or the champion's
age), and continuous training asks it which rows to train on. The defaults come from
`make backtest` (README, "The retrain policy").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, model_validator

from prefect_mlops.refs import StrictModel, reject_unknown_keys

Trigger = Literal["drift", "performance", "schedule", "manual"]


class TrainingWindow(StrictModel):
    """Which rows a retraining learns from, counted back from the end of the window that triggered it.

    Example:
        ```python
        from datetime import datetime
        from prefect_mlops.blocks.retrain_policy import TrainingWindow
        window = TrainingWindow(kind="periods", periods=3)
        start, end = window.span(datetime(2024, 4, 1), datetime(2024, 5, 1))
        assert (start, end) == (datetime(2024, 2, 1), datetime(2024, 5, 1))
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["periods", "rows", "duration", "expanding"] = Field(
        default="periods",
        description="'periods': the last N monitoring windows; 'rows': the latest N rows; 'duration': a fixed "
                    "time span; 'expanding': everything up to the window's end (cap it with max_rows).",
    )
    periods: int = Field(default=3, ge=1, description="How many monitoring windows back (kind 'periods').")
    rows: int | None = Field(default=None, ge=1, description="How many latest rows (kind 'rows').")
    duration: timedelta | None = Field(default=None, description="How far back in time (kind 'duration').")
    max_rows: int | None = Field(
        default=None, ge=1, description="At most this many latest rows, whatever the kind; empty: no cap."
    )

    @model_validator(mode="after")
    def _complete(self) -> TrainingWindow:
        if self.kind == "rows" and self.rows is None:
            raise ValueError("training_window.rows: kind 'rows' needs the number of rows, e.g. rows=50000")
        if self.kind == "duration" and (self.duration is None or self.duration <= timedelta(0)):
            raise ValueError("training_window.duration: kind 'duration' needs a positive duration, e.g. 'P90D'")
        return self

    def span(self, start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
        """The time span to ingest for a trigger window `[start, end)`; None means open."""
        if end is None:  # 'latest': every row, then the row cap
            return None, None
        if self.kind == "periods":
            return (end - self.periods * (end - start), end) if start is not None else (None, end)
        if self.kind == "duration":
            return end - self.duration, end
        return None, end  # rows and expanding: all history up to the end, then the latest rows

    def row_cap(self) -> int | None:
        """The latest-rows cap that applies after the time span."""
        caps = [c for c in (self.rows if self.kind == "rows" else None, self.max_rows) if c is not None]
        return min(caps) if caps else None


class TrainingBudget(StrictModel):
    """How much of the training window one fit may hold in memory, and what to do with more.

    A fit takes every training row when their estimated footprint (the rows' Arrow size times
    a measured expansion factor) fits `max_memory` and their count fits `max_rows`. Otherwise
    `when_over` decides: 'sample' fits on as many rows as fit, drawn stratified over time so every
    period of the window keeps its share; 'incremental' streams every row through the estimator's
    `partial_fit` in batches (estimators without one fall back to the sample). Lineage records
    which it was and why.

    Example:
        ```python
        from prefect_mlops.blocks.retrain_policy import TrainingBudget
        budget = TrainingBudget(max_memory=2 * 2**30, when_over="incremental")
        assert budget.memory_limit() == 2 * 2**30
        assert TrainingBudget(memory_share=0.5).memory_limit(available=8 * 2**30) == 4 * 2**30
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_memory: int | None = Field(
        default=None, ge=1,
        description="Bytes one fit may use; empty: memory_share of the memory available when training starts "
                    "(the smaller of MemAvailable in /proc/meminfo and the container's cgroup headroom).",
    )
    memory_share: float = Field(
        default=0.5, gt=0, le=1,
        description="Share of the available memory a fit may use when max_memory is empty: the rest is for "
                    "the process's other stages and the machine's other work.",
    )
    max_rows: int | None = Field(
        default=None, ge=2, description="At most this many training rows in one fit, whatever the memory."
    )
    when_over: Literal["sample", "incremental"] = Field(
        default="sample",
        description="More rows than fit: 'sample' fits on a time-stratified sample of the rows that fit; "
                    "'incremental' streams every row through partial_fit (for estimators that have it).",
    )
    periods: int = Field(
        default=50, ge=1, le=10_000,
        description="Equal time spans the sample is stratified over (by the feature spec's time column).",
    )
    batch_rows: int = Field(default=65_536, ge=1, description="Rows per partial_fit call (incremental).")
    expansion: float | None = Field(
        default=None, gt=0,
        description="Peak memory of a fit per byte of its rows' Arrow data, measured for your estimator (e.g. "
                    "with `make bench-scale`); empty: the largest ratio measured for the default estimator (18).",
    )

    def memory_limit(self, available: int | None = None) -> int:
        """Bytes a fit may use: `max_memory`, else `memory_share` of `available` (default: `available_memory()`)."""
        if self.max_memory is not None:
            return self.max_memory
        return int(self.memory_share * (available if available is not None else available_memory()))


def available_memory(*, meminfo: str = "/proc/meminfo", cgroup_root: str = "/sys/fs/cgroup",
                     self_cgroup: str = "/proc/self/cgroup") -> int:
    """Memory a fit can still take, in bytes: the smaller of the node's MemAvailable and the cgroup's headroom.

    In a pod or container, /proc/meminfo describes the node; the limit that ends the process is its
    cgroup's (`cgroup_headroom`). Where neither can be read, 4 GiB (a cautious guess).

    Example:
        ```python
        import pathlib, tempfile
        from prefect_mlops.blocks.retrain_policy import available_memory
        root = pathlib.Path(tempfile.mkdtemp())
        (root / "meminfo").write_text("MemAvailable:   16777216 kB\\n")  # 16 GiB on the node
        (root / "memory.max").write_text(str(6 * 2**30))  # a 6 GiB pod limit, 2 GiB of it in use
        (root / "memory.current").write_text(str(2 * 2**30))
        (root / "cgroup").write_text("0::/\\n")
        assert available_memory(meminfo=str(root / "meminfo"), cgroup_root=str(root),
                                self_cgroup=str(root / "cgroup")) == 4 * 2**30
        ```
    """
    found = [value for value in (_mem_available(meminfo), cgroup_headroom(cgroup_root, self_cgroup))
             if value is not None]
    return min(found) if found else 4 * 2**30


def cgroup_headroom(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup may still grow by before its limit, or None when no limit is set.

    cgroup v2: `memory.max` ('max': none) less `memory.current`; v1: `memory/memory.limit_in_bytes` (a
    value near 2**63: none) less `memory.usage_in_bytes`. The page cache the kernel would drop first
    (`inactive_file` in memory.stat) counts as free, as in Kubernetes' working set: memory-mapped
    snapshots fill it. Looks at the cgroup /proc/self/cgroup names and its ancestors under `root` (with
    a cgroup namespace that is the root itself) and returns the smallest headroom.
    """
    import os

    v2_path, v1_path = "/", "/"
    try:
        with open(self_cgroup) as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2_path = path or "/"
                elif "memory" in controllers.split(","):
                    v1_path = path or "/"
    except (OSError, ValueError):
        pass
    headrooms = []
    for base, path, limit_file, usage_file, cache_key in (
            (root, v2_path, "memory.max", "memory.current", "inactive_file"),
            (os.path.join(root, "memory"), v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes",
             "total_inactive_file")):
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the process's own cgroup first, then its ancestors
            folder = os.path.join(base, *parts[:depth])
            limit, usage = _read_int(os.path.join(folder, limit_file)), _read_int(os.path.join(folder, usage_file))
            if limit is None or usage is None or limit >= 2**60:  # no file, 'max', or v1's "unlimited"
                continue
            cache = _stat_value(os.path.join(folder, "memory.stat"), cache_key) or 0
            headrooms.append(max(0, limit - max(0, usage - cache)))
    return min(headrooms) if headrooms else None


def _mem_available(meminfo: str) -> int | None:
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):  # missing, or "max"
        return None


def _stat_value(path: str, key: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


class RetrainPolicy(Block):
    """The retrain policy: triggers, training window, minimum evidence and cool-down.

    The promotion rule itself (beyond noise, or not worse than a champion that measurably
    degraded) is the gate's, in `ModelPolicy.promote_when`.

    Example:
        ```python
        from prefect_mlops.blocks import RetrainPolicy
        saved = RetrainPolicy.load("BLOCK_NAME")
        policy = RetrainPolicy(triggers=["performance"], min_rows=200)
        assert policy.wants("performance") and not policy.wants("drift")
        ```
    """

    _block_type_name = "Retrain Policy"
    _block_type_slug = "prefect-mlops-retrain-policy"
    _logo_url = "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos/process.png"
    _documentation_url = "https://github.com/prefect-mlops/prefect-mlops#the-retrain-policy"
    _description = "When to retrain (drift, performance decay, schedule, manual), on which rows, with what evidence."

    triggers: list[Trigger] = Field(
        default_factory=lambda: ["performance", "drift", "manual"],
        description="What may start a retraining: 'drift' (importance-weighted data drift), 'performance' (the "
                    "champion measurably worse on newly labelled rows), 'schedule' (the champion older than "
                    "max_model_age), 'manual' (a person's run from the UI, never held back by the cool-down).",
    )
    training_window: TrainingWindow = Field(
        default_factory=TrainingWindow, description="Which rows a retraining learns from."
    )
    min_rows: int = Field(
        default=100, ge=1,
        description="Rows the current window needs before drift or performance is judged; fewer: no decision.",
    )
    min_training_rows: int = Field(
        default=100, ge=2, description="Rows a training window needs; fewer ends the run as Skipped."
    )
    drift_share: float = Field(
        default=0.5, gt=0, le=1,
        description="Importance-weighted share of drifted feature columns at which the data counts as drifted.",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1,
        description="Significance level of the drift tests (Holm-corrected over columns) and of the decay test.",
    )
    change_rows: int | None = Field(
        default=500, ge=1,
        description="When the champion measurably degraded and the window that shows it holds at least this many "
                    "labelled rows, the retraining learns from that window alone: rows from before the change "
                    "would teach the old concept. Fewer rows, or empty: the training window as set.",
    )
    max_decay: float = Field(
        default=0.02, ge=0,
        description="Relative drop of the champion's primary metric against its reference, on newly labelled "
                    "rows, that counts as degraded (0.02: 2% worse), when a one-sided test at alpha agrees.",
    )
    cooldown_periods: int = Field(
        default=2, ge=0,
        description="After a triggered retraining (whatever the gate decided), this many monitoring windows pass "
                    "before drift or performance may start another: one signal, one retraining. A person's or a "
                    "schedule's run starts no cool-down.",
    )
    cooldown: timedelta = Field(
        default=timedelta(0),
        description="The same hold-back as a duration; the longer of the two applies. Measured in data time "
                    "(the windows' ends), so a backtest sees it as a server would.",
    )
    max_model_age: timedelta | None = Field(
        default=None,
        description="With the 'schedule' trigger: retrain when the champion's data ends this long before "
                    "the current window ends.",
    )
    training_budget: TrainingBudget = Field(
        default_factory=TrainingBudget,
        description="How many rows one fit may hold in memory, and a time-stratified sample or partial_fit "
                    "beyond that; lineage records which.",
    )
    refit_full_window: bool = Field(
        default=True,
        description="Refit a challenger that passed the gate on its whole training window (train and hold-out) "
                    "before it is registered; lineage records it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Prefect's own keys (block_type_slug...) travel with a saved Block or a Block passed as a parameter.
        return reject_unknown_keys(cls, data, also=("block_type_slug",))

    def wants(self, trigger: Trigger) -> bool:
        """Whether `trigger` may start a retraining under this policy."""
        return trigger in self.triggers
