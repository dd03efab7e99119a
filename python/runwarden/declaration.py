"""The health check declared in Python, as fal declares it (SPEC E1, E3): `HealthCheck(...)`
and the `@health_check(...)` mark on the endpoint that answers it.

    @app.get("/health")
    @runwarden.health_check(runwarden.HealthCheck(start_period_seconds=10, failure_threshold=3))
    async def health(): ...

`HealthCheck` keeps only the fields it was given: one left out is unset, and the environment
(`RUNWARDEN_*`), the profile or the default fills it, as for any setting. Values are checked
by the core when the declaration is made, so a bad one fails at import, naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from runwarden._core import SETTINGS, HealthSettings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__runwarden_health_check__"
"""The attribute `health_check` sets on an endpoint."""

FIELDS: tuple[str, ...] = tuple(row["name"] for row in SETTINGS if row["group"] == "health")
DEFAULTS: Mapping[str, Any] = {row["name"]: row["default"] for row in SETTINGS
                               if row["group"] == "health"}  # fmt: skip


class HealthCheckError(SettingsError):
    """A health check that cannot be used: the message says why; `setting` names the setting
    when one is to blame."""


class HealthCheck:
    """The seed's health settings (SPEC H, E1): `start_period_seconds=30`, `timeout_seconds=5`,
    `failure_threshold=3`, `call_regularly=True`, and any other health setting by its name
    (`period_seconds`, `health_path`, `health_method`, ...: docs/settings.md). A bad value
    raises `SettingsError` (a `ValueError`) whose `setting` names it."""

    __slots__ = ("_given",)

    def __init__(
        self,
        *,
        start_period_seconds: int | None = None,
        timeout_seconds: float | None = None,
        failure_threshold: int | None = None,
        call_regularly: bool | None = None,
        **settings: Any,
    ) -> None:
        seed = {
            "start_period_seconds": start_period_seconds,
            "timeout_seconds": timeout_seconds,
            "failure_threshold": failure_threshold,
            "call_regularly": call_regularly,
        }
        given = {k: v for k, v in seed.items() if v is not None} | settings
        # The core checks every value and name (an unknown one is named, with the nearest).
        HealthSettings(**given)
        self._given: dict[str, Any] = given

    @property
    def given(self) -> dict[str, Any]:
        """The fields this declaration sets; the others are filled as any unset setting is."""
        return dict(self._given)

    def __getattr__(self, name: str) -> Any:
        if name in FIELDS:
            return self._given.get(name, DEFAULTS[name])
        raise AttributeError(f"HealthCheck has no field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HealthCheck) and self._given == other._given

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._given.items(), key=lambda kv: kv[0])))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._given.items())
        return f"HealthCheck({inner})"


def health_check(check: HealthCheck | None = None) -> Callable[[F], F]:
    """Mark an endpoint as the app's health check, with its settings (fal's `health_check=`).
    The middleware finds the marked route among the app's routes at start-up and checks that
    path; the endpoint itself is unchanged. Above or below the route's decorator."""
    declared = HealthCheck() if check is None else check
    if not isinstance(declared, HealthCheck):
        raise TypeError(f"health_check takes a HealthCheck, got {type(check).__name__}")

    def mark(endpoint: F) -> F:
        setattr(endpoint, MARK, declared)
        return endpoint

    return mark


@dataclass(frozen=True)
class Found:
    """A marked endpoint found among the app's routes."""

    path: str
    method: str
    check: HealthCheck
    endpoint: str

    def describe(self) -> str:
        return f"{self.endpoint} ({self.method} {self.path})"


def _name(endpoint: Any) -> str:
    module = getattr(endpoint, "__module__", None) or "?"
    return f"{module}.{getattr(endpoint, '__qualname__', repr(endpoint))}"


def _routes(app: Any) -> list[Any] | None:
    """The routes of `app`, looking through middleware (`.app`) to the router."""
    for _ in range(32):
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return routes
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def marked(app: Any, prefix: str = "") -> Iterator[Found]:
    """Every marked endpoint among `app`'s routes (Starlette and FastAPI routers, mounted
    sub-apps too), with its full path."""
    for route in _routes(app) or []:
        path = prefix + str(getattr(route, "path", ""))
        endpoint = getattr(route, "endpoint", None)
        declared = getattr(endpoint, MARK, None)
        if isinstance(declared, HealthCheck):
            methods = {m.upper() for m in getattr(route, "methods", None) or ("GET",)}
            method = "GET" if "GET" in methods or not methods else sorted(methods)[0]
            yield Found(path, method, declared, _name(endpoint))
        elif endpoint is None and hasattr(route, "app"):  # a Mount
            yield from marked(route, path)


def choose(app: Any, explicit: HealthCheck | None) -> Found | None:
    """The health check the app declares: its one marked endpoint, agreeing with `explicit`
    (the middleware's `health_check=`) if both are given. HealthCheckError names both when
    two endpoints are marked, or when the mark and `explicit` disagree."""
    found = list(marked(app))
    if len(found) > 1:
        raise HealthCheckError(
            f"two endpoints are marked as the health check: {found[0].describe()} and "
            f"{found[1].describe()}; a runner has one health check (H7): mark one"
        )
    if not found:
        return None
    one = found[0]
    if "{" in one.path:
        raise HealthCheckError(
            f"the health check {one.describe()} has a path parameter; mark a route with a "
            "fixed path"
        )
    if explicit is not None and explicit != one.check:
        raise HealthCheckError(
            f"the health check is declared twice, differently: {one.describe()} is marked "
            f"with {one.check!r}, and Runwarden(health_check=...) gives {explicit!r}; keep "
            "one of them"
        )
    return one
