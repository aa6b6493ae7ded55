"""Prometheus metrics built from the catalog, with children resolved once for the hot path.

Each ``Metrics`` owns a fresh ``CollectorRegistry`` (never the global default one), so two
instances in one process (tests, two servers) do not collide. Label children for every value
the catalog pre-creates (``Metric.precreated``) are resolved up front, which also makes those
series exist at zero from the first scrape (``rate()`` and absent-metric alerts then behave from the start). Formatting
happens only in ``exposition()``, at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from exporter.catalog import CATALOG, TRANSPORTS, Metric

# Bounded label values: an unknown value maps to the fallback where the catalog has one.
FALLBACK_VALUES = {"type": "other", "status": "error", "reason": "internal"}
# Labels whose values are not listed in the catalog (namespace, close code) still get a cap,
# so a client choosing arbitrary close codes cannot grow the series count without bound.
MAX_OPEN_LABEL_VALUES = 64
OVERFLOW_VALUE = "other"

_CONSTRUCTORS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class _Registry(CollectorRegistry):
    """A registry that leaves out prometheus_client's ``*_created`` series.

    They are wall-clock timestamps: they would double the series count and make the
    exposition differ from run to run, and nothing in the stack reads them.
    """

    def collect(self):
        for family in super().collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Children(dict):
    """Label value -> child, for a metric's first label; its other labels (if any) are fixed.

    A hit is a plain dict lookup (no Python frame). A miss resolves the child once: a declared
    value or one under the cap is stored; an unknown value of a closed label uses the
    fallback child; past the cap, the overflow child. ``fixed`` gives the values of the labels
    after the first (e.g. ``transport``): one ``Children`` per combination of those.
    """

    def __init__(self, family, metric: Metric, wrap: Callable = lambda child: child,
                 fixed: dict[str, str] | None = None) -> None:
        super().__init__()
        self._label, *rest = metric.labels
        fixed = dict(fixed or {})
        if set(rest) != set(fixed):
            raise ValueError(f"{metric.name}: give a value for each of {rest} (got {sorted(fixed)})")
        self._fixed = tuple(fixed[label] for label in rest)
        self._family = family
        self._wrap = wrap
        self._declared = frozenset(metric.label_values.get(self._label, ()))
        self._fallback = FALLBACK_VALUES.get(self._label) if self._declared else None
        for value in metric.precreated(self._label):
            self[value] = wrap(family.labels(value, *self._fixed))
        # Pre-created values of an open label (the normal close code) do not use up its cap.
        self._open_base = 0 if self._declared else len(self)

    def __missing__(self, key):
        value = str(key)
        if value in self._declared:
            # Declared but not pre-created: its series appears with its first use.
            child = self[value] if value in self else self._wrap(self._family.labels(value, *self._fixed))
        elif self._fallback is not None:
            child = self[self._fallback]
        elif len(self) >= self._open_base + MAX_OPEN_LABEL_VALUES:
            return self[OVERFLOW_VALUE] if OVERFLOW_VALUE in self else self._overflow()
        else:
            child = self._wrap(self._family.labels(value, *self._fixed))
        if len(self) < len(self._declared) + self._open_base + MAX_OPEN_LABEL_VALUES:
            self[key] = child  # keyed as the caller passes it (an int close code stays an int)
        return child

    def _overflow(self):
        child = self._wrap(self._family.labels(OVERFLOW_VALUE, *self._fixed))
        dict.__setitem__(self, OVERFLOW_VALUE, child)
        return child


class WeightedObserver:
    """``observe(amount, weight)`` on one histogram child: ``weight`` observations in one step.

    A fan-out of one frame to N recipients is N observations of the same size; doing it as
    one bucket increment keeps the cost independent of N. It writes the same values that
    ``Histogram.observe`` writes (a test checks the expositions are equal), through the
    child's ``_sum``/``_buckets``/``_upper_bounds``; ``observe_with_exemplar`` goes through
    the public API.
    """

    __slots__ = ("child", "_bounds", "_bucket_incs", "_sum_inc")

    def __init__(self, child) -> None:
        self.child = child
        self._bounds = list(child._upper_bounds)
        self._bucket_incs = [bucket.inc for bucket in child._buckets]
        self._sum_inc = child._sum.inc

    def __call__(self, amount: float, weight: int = 1) -> None:
        if amount != amount:  # NaN: no bucket holds it, and it would poison the sum
            return
        self._bucket_incs[bisect_left(self._bounds, amount)](weight)
        self._sum_inc(amount * weight)

    def observe_with_exemplar(self, amount: float, exemplar: dict[str, str]) -> None:
        self.child.observe(amount, exemplar)


class PerTransport(dict):
    """Transport -> Children; the catalog's transports are resolved up front (so their series
    exist from the first scrape), another one on first use, within the open-label cap."""

    def __init__(self, make: Callable[[str], Children]) -> None:
        super().__init__()
        self._make = make
        for transport in TRANSPORTS:
            self[transport] = make(transport)

    def __missing__(self, transport):
        value = str(transport)
        if len(self) >= MAX_OPEN_LABEL_VALUES:
            value = OVERFLOW_VALUE
        child = self.get(value) or self._make(value)
        self[value] = child
        return child


def incrementer(child) -> Callable[[float], None]:
    """The child's value ``inc``: a counter or gauge increment without ``Counter.inc``'s two
    extra Python frames (its checks are for the parent metric and negative counter steps,
    which the hooks rule out before calling). Falls back to the public method."""
    value = getattr(child, "_value", None)
    return value.inc if value is not None and hasattr(value, "inc") else child.inc


def declare(metric: Metric, registry: CollectorRegistry):
    """Register one catalog metric exactly as the catalog says."""
    kwargs = {"labelnames": metric.labels, "registry": registry}
    if metric.type == "histogram":
        kwargs["buckets"] = metric.buckets
    return _CONSTRUCTORS[metric.type](metric.base_name, metric.help, **kwargs)


class Metrics:
    """Every catalog metric, registered in a registry of its own."""

    def __init__(self, catalog: Iterable[Metric] = CATALOG, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _Registry(auto_describe=True)
        self.families = {m.name: declare(m, self.registry) for m in catalog}
        self._catalog = {m.name: m for m in catalog}

    def children(self, name: str, **fixed: str) -> Children:
        """Cached children of a counter or gauge by its first label (``fixed``: the others)."""
        return Children(self.families[name], self._catalog[name], fixed=fixed)

    def incrementers(self, name: str, **fixed: str) -> Children:
        """Cached ``inc(amount)`` callables of a counter or gauge by its first label (see ``incrementer``)."""
        return Children(self.families[name], self._catalog[name], incrementer, fixed)

    def per_transport(self, name: str, make: str = "incrementers") -> "PerTransport":
        """``[transport][value]``: the ``incrementers`` (or ``children``) of a metric with a transport label."""
        return PerTransport(lambda transport: getattr(self, make)(name, transport=transport))

    def observers(self, name: str) -> Children:
        """Cached weighted observers of a one-label histogram."""
        return Children(self.families[name], self._catalog[name], WeightedObserver)

    def unlabelled(self, name: str):
        return self.families[name]

    def unlabelled_incrementer(self, name: str) -> Callable[[float], None]:
        return incrementer(self.families[name])

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type; OpenMetrics (with exemplars) when asked for."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
