"""A real STAC API for the tests: stac-fastapi-static serving a static catalog from a folder,
on 127.0.0.1 (``python -m tests.stac_api CATALOG_JSON PORT``).

One shim, for a version clash and nothing else: stac-fastapi.api 5.x (which stac-fastapi-static
1.0 needs) passes ``CORSMiddleware`` its arguments by position, and Starlette 1.x (which Prefect's
FastAPI needs) inserted ``allow_private_network`` among them; the same values are passed here by
name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _cors_by_name() -> None:
    from stac_fastapi.api.middleware import CORSMiddleware
    from starlette.middleware.cors import CORSMiddleware as Starlette

    def init(self: Any, app: Any, allow_origins: Any = ("*",),
             allow_methods: Any = ("OPTIONS", "POST", "GET"),
             allow_headers: Any = ("Content-Type",), allow_credentials: bool = False,
             allow_origin_regex: str | None = None, expose_headers: Any = (),
             max_age: int = 600) -> None:
        Starlette.__init__(self, app, allow_origins=allow_origins, allow_methods=allow_methods,
                           allow_headers=allow_headers, allow_credentials=allow_credentials,
                           allow_origin_regex=allow_origin_regex, expose_headers=expose_headers,
                           max_age=max_age)

    CORSMiddleware.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    catalog, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    os.environ.update(CATALOG_HREF=catalog.as_uri(), APP_HOST="127.0.0.1", APP_PORT=str(port))
    _cors_by_name()
    import uvicorn
    from stac_fastapi.static.app import app

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
