"""Get a managed-identity token with an unmodified client, over whichever protocol the
environment selects (App Service, Azure ML, Azure Arc, Cloud Shell: the caller sets only that
protocol's variables, see tests/tests/hosts.rs).

usage: host_token.py CLIENT SCOPE [CLIENT_ID]

CLIENT is `sync` (azure-identity ManagedIdentityCredential), `aio` (azure-identity's
azure.identity.aio.ManagedIdentityCredential on aiohttp) or `msal` (MSAL Python's
ManagedIdentityClient, asked for the resource SCOPE without "/.default"). Without CLIENT_ID the
system-assigned identity is asked for; with it, that user-assigned identity.

Prints one JSON line: {"token": ..., "expires_on": ..., "client": ...}.
On failure prints the exception (or MSAL's error) on stderr and exits 1.
"""

import json
import sys
import time


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
