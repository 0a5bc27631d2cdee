"""A fake GitLab on loopback: OAuth authorize/token with PKCE checks, user and group API."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

from aiohttp import web

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"


@dataclass
class FakeUser:
    id: int
    username: str
    name: str
    groups: set[str] = field(default_factory=set)


@dataclass
class _Grant:
    user: FakeUser
    challenge: str
    redirect_uri: str
    scope: str


class FakeGitLab:
    """Signs in whoever `current` is; records what it was asked."""

    def __init__(self) -> None:
        self.current = FakeUser(4242, "alice", "Alice Example", {"team"})
        self.grants: dict[str, _Grant] = {}
        self.tokens: dict[str, FakeUser] = {}
        self.authorize_params: list[dict[str, str]] = []
        self.token_requests = 0
        self.app = web.Application()
        self.app.router.add_get("/oauth/authorize", self.authorize)
        self.app.router.add_post("/oauth/token", self.token)
        self.app.router.add_get("/api/v4/user", self.user)
        self.app.router.add_get("/api/v4/groups/{group}/members/all/{user_id}", self.member)
        self.app.router.add_get("/api/v4/groups", self.member_of)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.authorize_params.append(dict(q))
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return web.Response(status=400, text="bad client or response type")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE S256 required")
        code = secrets.token_urlsafe(16)
        self.grants[code] = _Grant(
            self.current, q["code_challenge"], q["redirect_uri"], q.get("scope", "")
        )
        target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
        raise web.HTTPFound(target)

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.pop(str(form.get("code", "")), None)  # a code works once
        if grant is None or form.get("grant_type") != "authorization_code":
            return web.json_response(
                {"error": "invalid_grant", "error_description": "The code is invalid or used."},
                status=400,
            )
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != grant.challenge or form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE verification failed."},
                status=400,
            )
        access = secrets.token_urlsafe(24)
        self.tokens[access] = grant.user
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 7200,
                "scope": grant.scope,
            }
        )

    def _bearer(self, request: web.Request) -> FakeUser | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return self.tokens.get(value) if scheme.lower() == "bearer" else None

    async def user(self, request: web.Request) -> web.Response:
        user = self._bearer(request)
        if user is None:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        return web.json_response({"id": user.id, "username": user.username, "name": user.name})

    async def member_of(self, request: web.Request) -> web.Response:
        """GET /api/v4/groups: the user's groups (one page of `per_page`), with full paths."""
        user = self._bearer(request)
        if user is None:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        per_page = int(request.query.get("per_page", "20"))
        page = int(request.query.get("page", "1"))
        groups = sorted(user.groups)[(page - 1) * per_page : page * per_page]
        return web.json_response(
            [{"id": i, "full_path": g, "name": g.rsplit("/", 1)[-1]} for i, g in enumerate(groups)]
        )

    async def member(self, request: web.Request) -> web.Response:
        user = self._bearer(request)
        if user is None:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        group = request.match_info["group"]
        if group in user.groups and int(request.match_info["user_id"]) == user.id:
            return web.json_response({"id": user.id, "username": user.username})
        return web.json_response({"message": "404 Not found"}, status=404)
