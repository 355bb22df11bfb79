"""STAC items read with pystac, and what to read of them: for each item, the asset bands in
model band order (by asset key or band common name), their scale and offset, and the mask
asset; each asset's header (CRS, affine, size, dtype) opened once on the client."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from affine import Affine
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import open_input, raster_dataset

if TYPE_CHECKING:
    import pystac

    from segflow.tasks.sources.stac_grid import Grid

Bounds = tuple[float, float, float, float]  # west, south, east, north
#: asset roles that are never image data to segment
_NOT_DATA = {"thumbnail", "overview", "visual", "metadata", "cloud", "cloud-shadow",
             "snow-ice", "water-mask", "land-water", "data-mask", "saturation"}


def union(boxes: list[Bounds]) -> Bounds:
    """The bounds of all ``boxes``."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))


@dataclass(frozen=True)
class Layer:
    """One band of one asset file: its absolute href, 1-based band, how it is resampled onto
    the grid, and its scale and offset (``raster:bands``)."""

    href: str
    band: int
    resampling: str = "nearest"
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Header:
    """What an asset file's header says: enough to lay a grid over it."""

    href: str
    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int
    count: int
    dtype: str
    is_mask: bool = False

    @property
    def bounds(self) -> Bounds:
        west, south, east, north = array_bounds(self.height, self.width,
                                                Affine(*self.transform[:6]))
        return min(west, east), min(south, north), max(west, east), max(south, north)

    @property
    def cell(self) -> float:
        return min(abs(self.transform[0]), abs(self.transform[4]))


@dataclass(frozen=True)
class Tile:
    """One item: its layers in band order, its mask layer, its footprint (each asset's
    CRS and bounds) and, once a grid is chosen, that footprint's bounds in the grid's CRS."""

    item_id: str
    layers: tuple[Layer, ...]
    mask: Layer | None
    footprint: tuple[tuple[str, Bounds], ...]
    bounds: Bounds | None = None

    def in_grid(self, grid: Grid) -> Tile:
        return replace(self, bounds=union([transform_bounds(crs, grid.crs_wkt, *b,
                                                            densify_pts=21)
                                           for crs, b in self.footprint]))

    def touches(self, area: Bounds) -> bool:
        """Whether the item may hold cells of ``area`` (grid CRS); unknown: yes."""
        b = self.bounds
        return b is None or (b[0] < area[2] and area[0] < b[2] and b[1] < area[3]
                             and area[1] < b[3])


def _json(uri: str) -> dict[str, Any]:
    try:
        with open_input(uri) as fh:
            found: dict[str, Any] = json.loads(fh.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise io_error(uri, "cannot read", exc) from exc
    except json.JSONDecodeError as exc:
        raise UserError(uri, f"not JSON ({exc})") from None
    return found


def read_items(uri: str) -> list[pystac.Item]:
    """The STAC items ``uri`` names: an Item, every item of an ItemCollection, or
    ``file#item-id`` for one of them; [] when the JSON is not STAC."""
    import pystac

    base, _, wanted = uri.partition("#")
    doc = _json(base)
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature" and "stac_version" in doc:
        docs = [doc]
    elif kind == "FeatureCollection" and isinstance(doc.get("features"), list):
        docs = [f for f in doc["features"] if isinstance(f, dict) and "stac_version" in f]
    else:
        return []
    try:
        items = [pystac.Item.from_dict(d, href=base, preserve_dict=False) for d in docs]
    except (KeyError, TypeError, ValueError, pystac.STACError) as exc:
        raise UserError(uri, f"not a valid STAC item: {exc}") from None
    if wanted:
        items = [i for i in items if i.id == wanted]
        if not items:
            raise UserError(uri, f"no item {wanted!r} in {base}")
    return items


def item_checksum(uri: str) -> str | None:
    """What identifies the item(s) ``uri`` names: their content without links (an API renders
    links for the host it is reached through; ``file#item-id`` is that one item, so a watched
    ItemCollection that gains an item leaves the others done). None: not STAC."""
    items = read_items(uri)
    if not items:
        return None
    sha = hashlib.sha256()
    for item in items:
        doc = item.to_dict(include_self_link=False)
        doc.pop("links", None)
        sha.update(json.dumps(doc, sort_keys=True).encode())
    return f"stac:sha256:{sha.hexdigest()}"


def _bands_of(asset: pystac.Asset) -> list[dict[str, Any]]:
    """The asset's band descriptions: STAC 1.1 ``bands`` or 1.0 ``eo:bands`` merged with
    ``raster:bands``."""
    fields = asset.extra_fields
    if isinstance(fields.get("bands"), list):
        return [dict(b) for b in fields["bands"]]
    eo, raster = fields.get("eo:bands") or [], fields.get("raster:bands") or []
    return [{**(eo[i] if i < len(eo) else {}), **(raster[i] if i < len(raster) else {})}
            for i in range(max(len(eo), len(raster)))]


def _names(band: dict[str, Any]) -> set[str]:
    return {str(band[k]).lower() for k in ("name", "common_name", "eo:common_name") if band.get(k)}


def _scale(band: dict[str, Any]) -> tuple[float, float]:
    scale = band.get("scale", band.get("raster:scale", 1.0))
    offset = band.get("offset", band.get("raster:offset", 0.0))
    return float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)


def _is_data(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    roles = set(asset.roles or [])
    image = "tiff" in media or "jp2" in media or media == ""
    return image and not roles & _NOT_DATA


def _resolve(item: pystac.Item, href: str, uri: str) -> str:
    from pystac.utils import make_absolute_href

    if "://" in href or href.startswith("/"):
        return href
    start = item.get_self_href() or uri.partition("#")[0]
    return make_absolute_href(href, start)


def _choose(item: pystac.Item, names: list[str] | None, uri: str
            ) -> list[tuple[str, int | None, dict[str, Any]]]:
    """(asset key, 1-based band or None for all of them, band description) per request."""
    if names is None:
        keys = [k for k, a in item.assets.items() if _is_data(a)]
        if not keys:
            raise UserError(uri, f"item {item.id} has no image data asset: name them in "
                                 "input.assets")
        return [(k, None, {}) for k in keys]
    chosen = []
    for name in names:
        if name in item.assets:
            bands = _bands_of(item.assets[name])
            chosen.append((name, None if len(bands) != 1 else 1, bands[0] if bands else {}))
            continue
        hits = [(key, i + 1, band) for key, asset in item.assets.items()
                for i, band in enumerate(_bands_of(asset)) if name.lower() in _names(band)]
        if not hits:
            raise UserError(uri, f"item {item.id} has no asset or band named {name!r} "
                                 f"(assets: {', '.join(item.assets)})")
        chosen.append(hits[0])
    return chosen


def _resampling(cfg: InputConfig, key: str, names: set[str]) -> str:
    """The resampling for an asset: one name for all, or by asset key, then by any of the
    band's names (``red``, ``B04``), then ``default``; nearest when none is given."""
    if isinstance(cfg.resampling, str):
        return cfg.resampling
    by_name = {k.lower(): v for k, v in cfg.resampling.items()}
    for k in (key.lower(), *sorted(names), "default"):
        if k in by_name:
            return by_name[k]
    return "nearest"


def _header(href: str, is_mask: bool) -> Header:
    try:
        with raster_dataset(href) as ds:
            if ds.crs is None:
                raise UserError(href, "the asset has no CRS: it cannot be placed on a grid")
            return Header(href, ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.width, ds.height,
                          ds.count, ds.dtypes[0], is_mask)
    except RasterioError as exc:
        raise io_error(href, "not a readable raster asset", exc) from exc


def tiles_of(uri: str, items: list[pystac.Item], cfg: InputConfig
             ) -> tuple[list[Tile], list[Header]]:
    """Every item's layers and mask layer, and the headers of the files they read (the first
    item's data assets first: the grid's defaults come from them)."""
    headers: dict[str, Header] = {}

    def header(href: str, is_mask: bool = False) -> Header:
        if href not in headers:
            headers[href] = _header(href, is_mask)
        return headers[href]

    tiles: list[Tile] = []
    for item in items:
        layers: list[Layer] = []
        footprint = []
        for key, band, desc in _choose(item, cfg.assets, uri):
            href = _resolve(item, item.assets[key].href, uri)
            head = header(href)
            footprint.append((head.crs_wkt, head.bounds))
            numbers = range(1, head.count + 1) if band is None else [band]
            descs = _bands_of(item.assets[key])
            for b in numbers:
                described = descs[b - 1] if b - 1 < len(descs) else desc
                scale, offset = _scale(described)
                layers.append(Layer(href, b, _resampling(cfg, key, _names(described)), scale,
                                    offset))
        mask = None
        if cfg.mask is not None:
            if cfg.mask.asset not in item.assets:
                raise UserError(uri, f"item {item.id} has no mask asset {cfg.mask.asset!r} "
                                     f"(assets: {', '.join(item.assets)})")
            href = _resolve(item, item.assets[cfg.mask.asset].href, uri)
            header(href, is_mask=True)
            mask = Layer(href, 1, "nearest")
        if tiles and len(layers) != len(tiles[0].layers):
            raise UserError(uri, f"item {item.id} has {len(layers)} bands to read, item "
                                 f"{tiles[0].item_id} has {len(tiles[0].layers)}: name the "
                                 "bands in input.assets")
        tiles.append(Tile(item.id, tuple(layers), mask, tuple(footprint)))
    return tiles, list(headers.values())
