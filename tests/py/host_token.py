"""Get a managed-identity token with an unmodified client, over whichever protocol the
environment selects (App Service, Azure ML, Azure Arc, Cloud Shell: the caller sets only that
protocol's variables, see tests/tests/hosts.rs).

usage: host_token.py CLIENT SCOPE [CLIENT_ID]

CLIENT is `sync` (azure-identity ManagedIdentityCredential), `aio` (azure-identity's
azure.identity.aio.ManagedIdentityCredential on aiohttp), `msal` (MSAL Python's
ManagedIdentityClient, asked for the resource SCOPE without "/.default") or `msal-cloudshell`
(MSAL Python's PublicClientApplication.acquire_token_interactive(prompt="none"), which in Cloud
Shell (AZUREPS_HOST_ENVIRONMENT=cloud-shell...) POSTs to http://localhost:50342/oauth2/token).
MSAL's application object discovers its authority (login.microsoftonline.com) when it is built:
for `msal-cloudshell` its http_client answers that discovery in process and passes only
loopback requests to `requests`, so nothing leaves the machine. Without CLIENT_ID the
system-assigned identity is asked for; with it, that user-assigned identity.

Prints one JSON line: {"token": ..., "expires_on": ..., "client": ...}.
On failure prints the exception (or MSAL's error) on stderr and exits 1.
"""

import json
import sys
import time


class _Answer:
    """A canned HTTP answer (what MSAL reads of a `requests` response)."""

    def __init__(self, body):
        self.status_code = 200
        self.text = json.dumps(body)
        self.headers = {"Content-Type": "application/json"}

    def raise_for_status(self):
        pass


class LoopbackOnly:
    """An MSAL http_client: loopback requests go through `requests`; the authority's OIDC
    discovery (a GET to login.microsoftonline.com) is answered here; anything else is refused."""

    def __init__(self):
        import requests

        self.session = requests.Session()

    @staticmethod
    def _loopback(url):
        from urllib.parse import urlparse

        return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")

    def get(self, url, **kwargs):
        if self._loopback(url):
            return self.session.get(url, **kwargs)
        if url.endswith("/.well-known/openid-configuration"):
            base = "https://login.microsoftonline.com/common"
            return _Answer({
                "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                "token_endpoint": base + "/oauth2/v2.0/token",
                "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
                "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
            })
        raise RuntimeError(f"refused a request off the machine: GET {url}")

    def post(self, url, **kwargs):
        if self._loopback(url):
            return self.session.post(url, **kwargs)
        raise RuntimeError(f"refused a request off the machine: POST {url}")

    def close(self):
        self.session.close()


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    client, scope = sys.argv[1], sys.argv[2]
    client_id = sys.argv[3] if len(sys.argv) == 4 else None
    kwargs = {"client_id": client_id} if client_id else {}
    try:
        if client == "sync":
            from azure.identity import ManagedIdentityCredential

            with ManagedIdentityCredential(**kwargs) as credential:
                token = credential.get_token(scope)
            token, expires_on = token.token, token.expires_on
        elif client == "aio":
            import asyncio

            from azure.identity.aio import ManagedIdentityCredential as AioCredential

            async def get():
                async with AioCredential(**kwargs) as credential:
                    return await credential.get_token(scope)

            t = asyncio.run(get())
            token, expires_on = t.token, t.expires_on
        elif client == "msal":
            import msal
            import requests

            identity = (msal.UserAssignedManagedIdentity(client_id=client_id) if client_id
                        else msal.SystemAssignedManagedIdentity())
            app = msal.ManagedIdentityClient(identity, http_client=requests.Session())
            resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
            result = app.acquire_token_for_client(resource=resource)
            if "access_token" not in result:
                print(f"msal: {result}", file=sys.stderr)
                return 1
            token, expires_on = result["access_token"], int(time.time()) + int(result["expires_in"])
        elif client == "msal-cloudshell":
            import msal

            app = msal.PublicClientApplication(
                "04b07795-8ddb-461a-bbee-02f9e1bf7b46",  # any client id: Cloud Shell ignores it
                http_client=LoopbackOnly(),
                instance_discovery=False,
            )
            result = app.acquire_token_interactive([scope], prompt="none")
            if "access_token" not in result:
                print(f"msal: {result}", file=sys.stderr)
                return 1
            token, expires_on = result["access_token"], int(time.time()) + int(result["expires_in"])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as e:  # noqa: BLE001 - report whatever the client raised
        print(f"{type(e).__module__}.{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"token": token, "expires_on": expires_on, "client": client}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
