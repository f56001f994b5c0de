"""Zone fallback: which Compute Engine errors another zone can fix, and the order to try zones.

Pure logic shared by the GCP node provider (``cluster.gcp_provider``) and the
local fake provider (``cluster.local_provider``), so the autoscaler-facing
behaviour is the same on both:

* ``zone_error(exc)`` classifies an error from ``instances.insert`` or from
  its zone operation. It returns a short reason when another zone may
  succeed (capacity, quota, a machine or accelerator type the zone lacks)
  and ``None`` for everything else (bad request, permission denied...),
  which the caller re-raises at once.
* ``ZonePlacement.place(count, launch)`` asks zones in the configured order,
  moves what one zone could not take to the next, and skips an exhausted zone
  for a cool-down period. One log line per event.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

# How long an exhausted zone is skipped. Stock-outs last minutes to hours;
# five minutes retries the preferred zone often without hammering it.
DEFAULT_COOLDOWN_S = 300.0

# Error codes (zone operations) and reasons (HTTP errors) another zone can fix.
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "QUOTA_EXCEEDED",
        "quotaExceeded",
    }
)
# A zonal machine or accelerator type the zone does not offer: GCE answers
# "The resource 'projects/P/zones/Z/acceleratorTypes/T' was not found" or
# "... is not available in zone Z".
_ZONAL_TYPE_MISSING = re.compile(
    r"zones/[a-z0-9-]+/(acceleratorTypes|machineTypes)/[\w.-]+'?\s+"
    r"(was not found|is not available|does not exist)"
    r"|(accelerator|machine) type .{0,80}?not (available|supported) in (this )?zone",
    re.IGNORECASE,
)
_CODE_WORD = re.compile(r"[A-Za-z_]+")
_ZONE_IN_PATH = re.compile(r"(^|/)zones/[a-z]+-[a-z]+\d+-[a-z]+/")

T = TypeVar("T")


class ZonesExhaustedError(RuntimeError):
    """No configured zone could create even one of the requested nodes."""


def _error_texts(exc: BaseException) -> list[str]:
    """The codes and messages inside a googleapiclient HttpError or an operation error."""
    texts: list[str] = []
    arg = exc.args[0] if exc.args else None
    content = getattr(exc, "content", None)  # an HttpError (whose args[0] is a dict too)
    if content is None and isinstance(arg, dict):
        # Ray's GCPCompute.wait_for_operation raises Exception(operation["error"]).
        for err in arg.get("errors") or []:
            texts += [str(err.get("code", "")), str(err.get("message", ""))]
        return texts
    if content is not None:
        try:
            body = json.loads(content)
        except (ValueError, TypeError):
            texts.append(content.decode(errors="replace") if isinstance(content, bytes) else str(content))
        else:
            error = body.get("error") or {}
            texts.append(str(error.get("message", "")))
            for err in error.get("errors") or []:
                texts += [str(err.get("reason", "")), str(err.get("message", ""))]
            for detail in error.get("details") or []:
                texts.append(str(detail.get("reason", "")))
    texts.append(str(exc))
    return texts


def zone_error(exc: BaseException) -> str | None:
    """A short reason if another zone may succeed where this error occurred, else None."""
    texts = _error_texts(exc)
    words = {w for t in texts for w in _CODE_WORD.findall(t)}
    codes = sorted(words & CAPACITY_CODES)
    if codes:
        return codes[0]
    for text in texts:
        if _ZONAL_TYPE_MISSING.search(text):
            return f"type not offered in this zone ({text.strip()[:160]})"
    return None


def rezone(value: str, zone: str) -> str:
    """A zonal URL or partial path (``zones/Z/diskTypes/pd-balanced``) moved to ``zone``."""
    return _ZONE_IN_PATH.sub(lambda m: f"{m.group(1)}zones/{zone}/", value)


class ZonePlacement:
    """Ordered zones plus a cool-down per exhausted zone (one per provider instance)."""

    def __init__(
        self,
        zones: Sequence[str],
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not zones:
            raise ValueError("ZonePlacement needs at least one zone")
        self.zones = tuple(dict.fromkeys(zones))
        self.cooldown_s = float(cooldown_s)
        self.clock = clock
        self._cool_until: dict[str, float] = {}

    def cooling(self) -> list[str]:
        now = self.clock()
        return [z for z in self.zones if self._cool_until.get(z, 0.0) > now]

    def candidates(self) -> list[str]:
        """Zones to ask, in order: those not cooling down; all of them if every one is
        (a round never gives up without asking GCE)."""
        cooling = set(self.cooling())
        ready = [z for z in self.zones if z not in cooling]
        return ready or list(self.zones)

    def place(
        self, count: int, launch: Callable[[str, int], tuple[list[T], str | None]]
    ) -> list[T]:
        """Create ``count`` nodes across zones.

        ``launch(zone, n)`` creates up to n nodes in ``zone`` and returns the
        created ones plus a reason (from ``zone_error``) if the zone ran out;
        any other error propagates at once. Raises ZonesExhaustedError when no
        zone created anything; a partial result is returned (and logged).
        """
        created: list[T] = []
        failures: list[tuple[str, str]] = []
        order = self.candidates()
        for i, zone in enumerate(order):
            remaining = count - len(created)
            if remaining <= 0:
                break
            made, reason = launch(zone, remaining)
            created += made
            if reason is None:
                continue
            failures.append((zone, reason))
            self._cool_until[zone] = self.clock() + self.cooldown_s
            left = count - len(created)
            nxt = order[i + 1] if i + 1 < len(order) else None
            then = (
                f"trying {nxt} for the remaining {left} node(s)"
                if left and nxt
                else ("no zone left to try" if left else "all requested nodes placed")
            )
            logger.warning(
                "zone %s: %s; skipping it for %.0fs; %s", zone, reason, self.cooldown_s, then
            )
        if created and len(created) < count:
            logger.warning(
                "zone fallback placed %d of %d node(s); every zone ran out (%s); "
                "the autoscaler asks again next round",
                len(created),
                count,
                "; ".join(f"{z}: {r}" for z, r in failures),
            )
        if not created and count > 0:
            raise ZonesExhaustedError(
                f"no zone could create any of {count} node(s): "
                + "; ".join(f"{z}: {r}" for z, r in failures)
                + f". Tried {', '.join(order)}; the autoscaler retries next round"
            )
        return created

