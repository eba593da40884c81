"""A tiny example model: answers every event with its verb reversed (stands in for a real one)."""

from __future__ import annotations

import sys

from aiohttp import web


async def predict(request: web.Request) -> web.Response:
    """Answer one event."""
    event = await request.json()
    return web.json_response({"id": event["id"], "answer": event["verb"][::-1]})


def main() -> None:
    """Serve on the port given as first argument (default 5151)."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5151
    app = web.Application()
    app.router.add_post("/v1/predict", predict)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
