"""A websocket endpoint behind API keys: the key is checked before the connection opens.

    uvicorn examples.websocket_app:app

(uvicorn serves websockets with the `websockets` or `wsproto` package:
`pip install 'uvicorn[standard]'` installs one.)

A key for `chat:join` is made at startup (keys in memory, a pepper made for the run)
and printed. Clients that can set headers send it as `X-API-Key`; browsers, which
cannot set headers on a websocket, send it as the `api_key` query parameter. A
connection without a valid key is refused before `accept()`: the app never runs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from apiguard import APIKeyMiddleware, ScopeRule, ScopeRules
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore

store = MemoryKeyStore()
pepper = secrets.token_urlsafe(32)


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    name = websocket.user.display_name
    await websocket.send_json({"hello": name})
    async for text in websocket.iter_text():
        await websocket.send_json({"from": name, "said": text})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    issued = await KeyManager(store, KeyHasher(pepper)).create("alice", scopes=["chat:join"])
    print("Connect with:")
    print(f"  websocat 'ws://127.0.0.1:8000/chat?api_key={issued.key}'")
    yield
    await store.aclose()


app = Starlette(
    routes=[WebSocketRoute("/chat", chat)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=store,
            pepper=pepper,
            query_param="api_key",
            # `hide_credentials`: the key is removed from the scope the app sees.
            hide_credentials=True,
            policies=[ScopeRules([ScopeRule("/chat", "chat:join")])],
        )
    ],
    lifespan=lifespan,
)
