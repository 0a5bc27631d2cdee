"""Signing in with GitLab: OAuth 2 authorization code with PKCE (S256), via authlib.

Only authlib's client does OAuth here (authorization URL, state, PKCE challenge,
token exchange); this module adds GitLab's user and group look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

TIMEOUT = 10.0


class GitLabError(Exception):
    """GitLab could not be reached or answered unexpectedly (not the user's fault)."""


class SignInRefused(Exception):
    """GitLab refused the sign-in: a used or expired code, a denied consent, …"""


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    verifier: str


@dataclass(frozen=True)
class GitLabUser:
    id: int
    username: str
    name: str
    groups: tuple[str, ...] | None = None
    """The full paths of the groups they are a member of; None when not read."""


MAX_GROUP_PAGES = 10
"""Pages of 100 groups read at sign-in at most (a thousand groups)."""


class GitLab:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        groups: list[str],
        transport: httpx2.AsyncBaseTransport | None = None,
        *,
        read_groups: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.groups = groups
        self.read_groups = read_groups
        """Read the user's groups at sign-in (for connectors shared with groups)."""
        self._transport = transport
        # Group membership is read through the API, which needs read_api.
        self.scope = "read_user read_api" if groups or read_groups else "read_user"

    def _client(self, redirect_uri: str, token: dict[str, Any] | None = None) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._client_secret,
            scope=self.scope,
            redirect_uri=redirect_uri,
            token=token,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_post",
            timeout=TIMEOUT,
            transport=self._transport,
        )

    def authorize(self, redirect_uri: str) -> Authorization:
        """Where to send the browser, and the state and PKCE verifier to keep for the callback."""
        verifier = generate_token(64)
        state = generate_token(32)
        client = self._client(redirect_uri)
        url, _ = client.create_authorization_url(
            f"{self.base_url}/oauth/authorize", state=state, code_verifier=verifier
        )
        return Authorization(url=url, state=state, verifier=verifier)

    async def sign_in(self, redirect_uri: str, code: str, verifier: str) -> GitLabUser:
        """Exchange the code for a token, then read who signed in and check their groups."""
        async with self._client(redirect_uri) as client:
            try:
                token = await client.fetch_token(
                    f"{self.base_url}/oauth/token", code=code, code_verifier=verifier
                )
            except OAuthError as exc:
                raise SignInRefused(exc.description or exc.error or "refused") from None
            except httpx2.HTTPError as exc:
                raise GitLabError(f"cannot reach GitLab: {type(exc).__name__}") from None
            except ValueError as exc:
                raise GitLabError(f"GitLab's token answer is not valid: {exc}") from None
            client.token = token
            found = await self._get(client, "/api/v4/user")
            try:
                user = GitLabUser(
                    int(found["id"]), str(found["username"]), str(found.get("name") or "")
                )
            except (KeyError, TypeError, ValueError):
                raise GitLabError("GitLab's user answer has no id or username") from None
            if self.groups and not await self._member(client, user):
                raise NotInGroup(user)
            if self.read_groups:
                user = GitLabUser(user.id, user.username, user.name, await self._groups(client))
            return user

    async def _groups(self, client: AsyncOAuth2Client) -> tuple[str, ...]:
        """The full paths of the groups the signed-in user is a member of (GitLab lists a
        subgroup of a group they belong to as well)."""
        paths: list[str] = []
        for page in range(1, MAX_GROUP_PAGES + 1):
            found = await self._get(
                client, f"/api/v4/groups?min_access_level=10&per_page=100&page={page}"
            )
            if not isinstance(found, list):
                raise GitLabError("GitLab's group list is not a list")
            paths += [
                str(g["full_path"]) for g in found if isinstance(g, dict) and g.get("full_path")
            ]
            if len(found) < 100:
                break
        return tuple(paths)

    async def _member(self, client: AsyncOAuth2Client, user: GitLabUser) -> bool:
        for group in self.groups:
            path = f"/api/v4/groups/{quote(group, safe='')}/members/all/{user.id}"
            try:
                response = await client.get(self.base_url + path)
            except httpx2.HTTPError as exc:
                raise GitLabError(f"cannot reach GitLab: {type(exc).__name__}") from None
            if response.status_code == 200:
                return True
            if response.status_code not in (403, 404):
                raise GitLabError(f"GitLab answered {response.status_code} to a group look-up")
        return False

    async def _get(self, client: AsyncOAuth2Client, path: str) -> Any:
        try:
            response = await client.get(self.base_url + path)
        except httpx2.HTTPError as exc:
            raise GitLabError(f"cannot reach GitLab: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise GitLabError(f"GitLab answered {response.status_code} to {path}")
        try:
            return response.json()
        except ValueError:
            raise GitLabError(f"GitLab's answer to {path} is not JSON") from None


class NotInGroup(Exception):
    def __init__(self, user: GitLabUser) -> None:
        super().__init__(user.username)
        self.user = user
