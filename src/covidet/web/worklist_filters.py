"""The worklist's filters and sort (:class:`StudyFilters`): read from the page's query string, written
back into links (sorting, paging), and recorded in the ``read.worklist`` audit event.

Contract: unknown or malformed values are ignored, never an error (a bookmarked link with an old
filter still opens the worklist); free text is cut to 64 characters and may hold no control
characters; the offset is clamped to 0..1,000,000.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from covidet.store import reading_room as rr
from covidet.web.access import NO_CONTROL

__all__ = ["PAGE_SIZE", "PRIORITIES", "SORTABLE", "STATUSES", "StudyFilters"]

#: Studies a worklist page shows.
PAGE_SIZE = 50
#: Priority filter values (``none``: not triaged yet).
PRIORITIES = ("urgent", "high", "routine", "none")
#: Image status filter values.
STATUSES = ("queued", "analysed", "failed")
#: Column headers that sort, with the sort key each uses.
SORTABLE = (("priority", "Priority"), ("patient", "Patient"), ("accession", "Study"), ("waiting", "Waiting"))


def _text(params: QueryParams, name: str) -> str | None:
    value = (params.get(name) or "").strip()[:64]
    return value if value and NO_CONTROL.match(value) else None


@dataclass(frozen=True)
class StudyFilters:
    """The worklist's filters and sort, from and back to a query string (unknown values are ignored)."""

    priority: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    reviewed: bool | None = None
    patient: str | None = None
    q: str | None = None
    sort: str = "priority"
    order: str = "asc"
    offset: int = 0
    limit: int = PAGE_SIZE

    @classmethod
    def from_query(cls, params: QueryParams) -> StudyFilters:
        try:
            offset = max(0, min(int(params.get("offset", "0")), 1_000_000))
        except ValueError:
            offset = 0
        sort = params.get("sort", "priority")
        return cls(
            priority=tuple(p for p in params.getlist("priority") if p in PRIORITIES),
            status=tuple(s for s in params.getlist("status") if s in STATUSES),
            reviewed={"yes": True, "no": False}.get(params.get("reviewed", "")),
            patient=_text(params, "patient"),
            q=_text(params, "q"),
            sort=sort if sort in rr.SORTS else "priority",
            order="desc" if params.get("order") == "desc" else "asc",
            offset=offset,
        )

    @property
    def active(self) -> bool:
        """Whether any filter (not the sort) is set."""
        return bool(self.priority or self.status or self.reviewed is not None or self.patient or self.q)

    def query(self, *, sort: str | None = None, order: str | None = None, offset: int | None = None) -> str:
        """The query string of these filters with another sort, order or offset where given."""
        state = replace(
            self,
            sort=self.sort if sort is None else sort,
            order=self.order if order is None else order,
            offset=self.offset if offset is None else offset,
        )
        pairs: list[tuple[str, str]] = [("priority", p) for p in state.priority]
        pairs += [("status", s) for s in state.status]
        if state.reviewed is not None:
            pairs.append(("reviewed", "yes" if state.reviewed else "no"))
        pairs += [(name, value) for name in ("patient", "q") if (value := getattr(state, name))]
        if state.sort != "priority":
            pairs.append(("sort", state.sort))
        if state.order != "asc":
            pairs.append(("order", state.order))
        if state.offset:
            pairs.append(("offset", str(state.offset)))
        return urlencode(pairs)

    def sort_link(self, key: str) -> str:
        """The query that sorts by ``key`` (ascending; again: the other way), back to the first page."""
        order = "desc" if self.sort == key and self.order == "asc" else "asc"
        return self.query(sort=key, order=order, offset=0)

    def aria_sort(self, key: str) -> str:
        if self.sort != key:
            return "none"
        return "descending" if self.order == "desc" else "ascending"

    def audit(self) -> dict[str, object]:
        """The filters as the audit event ``read.worklist`` records them."""
        return {
            "priority": list(self.priority),
            "status": list(self.status),
            "reviewed": self.reviewed,
            "patient": self.patient,
            "q": self.q,
            "sort": self.sort,
            "order": self.order,
        }
