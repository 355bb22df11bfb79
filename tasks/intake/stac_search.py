"""The items of a STAC API search or of an ItemCollection file, one image each.

A search is a URL ending in ``/search`` with the STAC API's own parameters as its query string,
so one string names it on the command line, in a deployment and in the catalog::

    https://earth-search.aws.element84.com/v1/search?collections=sentinel-2-l2a
        &bbox=-79.1,35.7,-78.9,35.9&datetime=2024-06-01/2024-06-30
        &filter=eo:cloud_cover<20&limit=10

``collections``, ``ids`` and ``bbox`` take comma-separated lists; ``filter`` is CQL2 text (the
Filter extension); ``query`` (the older Query extension, e.g. ``eo:cloud_cover<20``) may repeat;
``limit`` caps the items. pystac-client runs the search and follows its pages.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

from segflow.tasks.errors import UserError, io_error


def is_search(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and parts.path.rstrip("/").endswith("/search")


def _parameters(uri: str) -> tuple[str, dict[str, object]]:
    """The API's root URL and pystac-client ``search`` keyword arguments."""
    parts = urlsplit(uri)
    root = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/")[:-len("/search")]
                       or "/", "", ""))
    given = parse_qs(parts.query, keep_blank_values=False)
    known = {"collections", "ids", "bbox", "datetime", "filter", "filter-lang", "query",
             "limit"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UserError(uri, f"unknown search parameter(s) {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(known))})")
    kwargs: dict[str, object] = {}
    for key in ("collections", "ids"):
        if key in given:
            kwargs[key] = [v for value in given[key] for v in value.split(",") if v]
    if "bbox" in given:
        try:
            kwargs["bbox"] = [float(v) for v in given["bbox"][-1].split(",")]
        except ValueError:
            raise UserError(uri, f"bbox {given['bbox'][-1]!r} is not four numbers") from None
    if "datetime" in given:
        kwargs["datetime"] = given["datetime"][-1]
    if "filter" in given:
        kwargs["filter"] = given["filter"][-1]
        kwargs["filter_lang"] = given.get("filter-lang", ["cql2-text"])[-1]
    if "query" in given:
        kwargs["query"] = given["query"]
    if "limit" in given:
        try:
            kwargs["max_items"] = int(given["limit"][-1])
        except ValueError:
            raise UserError(uri, f"limit {given['limit'][-1]!r} is not a number") from None
    return root, kwargs


def search_items(uri: str) -> list[str]:
    """The URL of every item the search finds, in the API's order."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    root, kwargs = _parameters(uri)
    try:
        found = Client.open(root).search(**kwargs)  # type: ignore[arg-type]
        urls = []
        for item in found.items():
            self_href = item.get_self_href()
            urls.append(self_href or f"{root}/collections/{item.collection_id}/items/{item.id}")
    except (APIError, OSError, ValueError) as exc:
        raise io_error(uri, "STAC search failed", exc) from exc
    except NotImplementedError as exc:  # pystac-client: the API lacks a conformance class
        raise UserError(uri, f"the STAC API cannot run this search: {exc}") from None
    return list(dict.fromkeys(urls))


def collection_items(uri: str) -> list[str]:
    """``file.json#item-id`` for each item of an ItemCollection (an Item: itself)."""
    from segflow.tasks.sources.stac_items import read_items

    items = read_items(uri)
    if not items:
        raise UserError(uri, "not a STAC Item or ItemCollection")
    if len(items) == 1 and "#" not in uri:
        return [uri]
    return [f"{uri.partition('#')[0]}#{item.id}" for item in items]
