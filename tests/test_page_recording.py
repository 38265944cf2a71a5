"""The browser page says whether the server records calls (`serve --record DIR`).

The page is served by `stream.server.index` over real loopback HTTP: with ``record_dir`` it
must say that audio and events are recorded, without it that nothing is (it used to promise
"nothing is recorded" even while `--record` wrote every session to disk). Through a front,
the page comes from a worker, which runs with the same `--record` (tests/test_front.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from stream.server import ServerConfig, index
from stream.serving import SERVER
from tests.conftest import app_on_loopback


async def _page(config: ServerConfig) -> str:
    app = web.Application()
    app[SERVER] = SimpleNamespace(config=config)  # type: ignore[assignment]
    app.router.add_get("/", index)
    async with app_on_loopback(app) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            return await r.text()


def _note(page: str) -> tuple[str, str]:
    m = re.search(r'<span id="recording" data-records="(\w+)">([^<]*)</span>', page)
    assert m, "the page does not say whether the server records"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("record", [True, False])
async def test_page_tells_whether_the_server_records(record: bool, tmp_path: Path) -> None:
    page = await _page(ServerConfig(record_dir=str(tmp_path) if record else None))
    flag, note = _note(page)
    if record:
        assert flag == "true" and "records each session's audio and events" in note
        assert "nothing is recorded" not in page
    else:
        assert flag == "false" and note == "· nothing is recorded"
        assert "records each session" not in page
