"""The run configuration, parsed once from the command line into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bus.errors import InvalidArgument

BACKENDS = ("sqlite", "redis", "rabbitmq")
# The in-process backend can be measured bus-only (the delivery engine's own ceiling); two
# sidecar processes cannot share it, so its HTTP scenarios are reported as skipped.
EXTRA_BACKENDS = ("memory",)
# The state scenario's stores (--stores): state.sqlite in the run's directory, state.redis on the
# run's private redis-server (so only with the redis backend), state.postgresql on the server
# at --postgres, in tables of the run's own that it drops at the end.
STATE_STORES = ("sqlite", "redis", "postgresql")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCENARIOS = ("ingest", "e2e", "latency", "bus", "cost", "rpc", "state", "invoke")
OPT_IN_SCENARIOS = ("soak",)  # run only when named: ten minutes per backend by default
SCENARIO_TITLES = {
    "ingest": "publish ingest over HTTP",
    "e2e": "end-to-end through two sidecars",
    "latency": "latency at a fixed rate",
    "bus": "bus only: consume + ack",
    "cost": "sidecar cost",
    "rpc": "request/reply, bus only",
    "state": "state over HTTP",
    "invoke": "service invocation",
    "soak": "soak: leaks under a long stream",
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Everything one run needs to know; ``quick`` only changes the defaults below."""

    backends: tuple[str, ...] = BACKENDS
    scenarios: tuple[str, ...] = SCENARIOS
    stores: tuple[str, ...] = STATE_STORES
    postgres: str = POSTGRES_URL
    payload_size: int = 1024
    messages: int = 20_000  # per count-based phase; batched phases push 5x as many
    ingest_duration: float = 10.0
    latency_duration: float = 30.0
    rate: float = 1000.0
    connections: int = 16  # total HTTP connections of the generator, as in Dapr's reports
    generators: int = 2  # generator processes
    bulk_size: int = 100
    output: Path = RESULTS_DIR
    plots: bool = True
    markdown: Path | None = None
    quick: bool = False
    command: str = ""
    phase_timeout: float = 120.0  # a phase with no progress for this long is given up
    profile: bool = False  # py-spy the sidecars during the HTTP phases
    repeat: int = 1  # runs of every phase; each figure is the median over them
    note: str = ""  # shown at the top of BENCHMARKS.md (e.g. "shared, noisy machine")
    extra: dict[str, str] = field(default_factory=dict)
    soak_duration: float = 600.0
    soak_rate: float = 1000.0

    def __post_init__(self) -> None:
        for backend in self.backends:
            if backend not in BACKENDS + EXTRA_BACKENDS:
                raise InvalidArgument(f"unknown backend {backend!r}; choose from {BACKENDS}")
        for store in self.stores:
            if store not in STATE_STORES:
                raise InvalidArgument(f"unknown store {store!r}; choose from {STATE_STORES}")
        for scenario in self.scenarios:
            if scenario not in SCENARIOS + OPT_IN_SCENARIOS:
                choices = SCENARIOS + OPT_IN_SCENARIOS
                raise InvalidArgument(f"unknown scenario {scenario!r}; choose from {choices}")
        if self.payload_size < 64:
            raise InvalidArgument("payload size must be at least 64 bytes (it carries a timestamp)")
        if self.messages < 1 or self.rate <= 0 or self.connections < 1 or self.generators < 1:
            raise InvalidArgument("messages, rate, connections and generators must be positive")
        if self.ingest_duration <= 0 or self.latency_duration <= 0 or self.soak_duration <= 0:
            raise InvalidArgument("durations must be positive")
        if self.soak_rate <= 0:
            raise InvalidArgument("--soak-rate must be positive")
        if self.repeat < 1:
            raise InvalidArgument("--repeat must be at least 1")

    @property
    def batched_messages(self) -> int:
        """Messages of the batched phases (bulk, bus-only), which run far faster than singles."""
        return self.messages * 5

    def wants(self, scenario: str) -> bool:
        """True if ``scenario`` is part of this run."""
        return scenario in self.scenarios


def quick_defaults() -> dict[str, float | int]:
    """What ``--quick`` changes: every scenario in a few minutes, each alone in well under one."""
    return {
        "messages": 3000,
        "ingest_duration": 2.0,
        "latency_duration": 5.0,
        "soak_duration": 20.0,
    }


def split_names(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Parse ``a,b,c`` into a tuple of known names, keeping the order given."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise InvalidArgument(f"{what}: expected some of {','.join(allowed)}, got {text!r}")
    return names
