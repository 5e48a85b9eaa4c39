"""Who is calling the broker: a pod proves it with its service-account token.

TokenReview tells the API server's verdict on the token; a bound (projected) token also names the
pod it was issued for (``authentication.kubernetes.io/pod-name`` and ``pod-uid`` in the user's
extra). The pod's ``notebookos.io/kernel`` label says which kernel it belongs to, and a pod of
kernel K may only acquire and release for K's replicas. A few configured service accounts (the
operator, the node agent) are admins. Authenticators are pluggable so unit tests need no cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Protocol

from kubernetes import client
from kubernetes.client.rest import ApiException

from notebookos.labels import KERNEL_LABEL

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Identity:
    subject: str
    """The authenticated user, e.g. system:serviceaccount:ns:sa."""
    namespace: str | None = None
    kernel: str | None = None
    """The kernel (name, in `namespace`) the calling pod belongs to."""
    admin: bool = False

    def may_act_for(self, kernel: str) -> bool:
        """kernel is namespace/name."""
        return self.admin or (self.kernel is not None and kernel == f"{self.namespace}/{self.kernel}")


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Identity: ...


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError(401, "missing Authorization header: send 'Bearer <service-account token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <service-account token>'")
    return token.strip()


class StaticAuthenticator:
    """Tokens mapped to identities, for tests and local runs."""

    def __init__(self, tokens: dict[str, Identity]) -> None:
        self.tokens = tokens

    async def authenticate(self, token: str) -> Identity:
        ident = self.tokens.get(token)
        if ident is None:
            raise AuthError(401, "token not recognised")
        return ident


class TokenReviewAuthenticator:
    """TokenReview, then the pod named in the bound token's extra. Verdicts are cached briefly
    (by token digest) so an acquire costs no API round trip in the common case."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        admins: frozenset[str] = frozenset(),
        audiences: list[str] | None = None,
        cache_ttl_s: float = 60.0,
    ) -> None:
        self._auth = client.AuthenticationV1Api(api)
        self._core = client.CoreV1Api(api)
        self.admins = admins
        self.audiences = audiences
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def authenticate(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        ident = await asyncio.to_thread(self._review, token)
        self._cache[digest] = (time.monotonic() + self.cache_ttl_s, ident)
        return ident

    def _review(self, token: str) -> Identity:
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=self.audiences))
        try:
            result = self._auth.create_token_review(review)
        except ApiException as e:
            raise AuthError(503, f"TokenReview failed: {e.status} {e.reason}") from None
        status = result.status
        if not status or not status.authenticated:
            raise AuthError(401, f"token not authenticated: {(status and status.error) or 'rejected'}")
        user = status.user or client.V1UserInfo()
        username = user.username or ""
        if username in self.admins:
            return Identity(subject=username, admin=True)
        if not username.startswith(SA_PREFIX):
            raise AuthError(403, f"{username} is not a service account")
        namespace = username[len(SA_PREFIX) :].split(":", 1)[0]
        extra = user.extra or {}
        pod_name = next(iter(extra.get(POD_NAME_EXTRA) or []), None)
        pod_uid = next(iter(extra.get(POD_UID_EXTRA) or []), None)
        if not pod_name:
            raise AuthError(403, f"{username}: the token is not bound to a pod (use a projected service-account token)")
        try:
            pod = self._core.read_namespaced_pod(pod_name, namespace)
        except ApiException as e:
            raise AuthError(403, f"pod {namespace}/{pod_name} of the token: {e.status} {e.reason}") from None
        meta = pod.metadata or client.V1ObjectMeta()
        if pod_uid and meta.uid != pod_uid:
            raise AuthError(403, f"pod {namespace}/{pod_name} was replaced since the token was issued")
        kernel = (meta.labels or {}).get(KERNEL_LABEL)
        if not kernel:
            raise AuthError(403, f"pod {namespace}/{pod_name} has no {KERNEL_LABEL} label: not a kernel's pod")
        return Identity(subject=username, namespace=namespace, kernel=kernel)
