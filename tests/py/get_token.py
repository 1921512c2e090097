"""Get a managed-identity token with azure-identity, unmodified, from an IMDS endpoint.

usage: get_token.py BASE_URL SCOPE [CLIENT_ID]

BASE_URL is where the IMDS endpoint is, e.g. http://127.0.0.1:8080; it is handed to the SDK the
way a user would redirect it, through AZURE_POD_IDENTITY_AUTHORITY_HOST (azure-identity and MSAL
strip a trailing "/" and append /metadata/identity/oauth2/token). SCOPE is an Azure scope such as
https://management.azure.com/.default (the SDK strips "/.default" to form the resource). Without
CLIENT_ID the system-assigned identity is asked for; with it, that user-assigned identity.
BASE_URL "imds" sets no override at all: the SDK dials 169.254.169.254 as on a real VM (used
inside a network namespace that the test made, where the unikernel owns that address).

Prints one JSON line: {"token": ..., "expires_on": ..., "sdk": {package: version}}.
On failure prints the exception on stderr and exits 1.
"""

import json
import os
import sys


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    base_url, scope = sys.argv[1], sys.argv[2]
    client_id = sys.argv[3] if len(sys.argv) == 4 else None

    # Only the IMDS path: other managed-identity environments take precedence in the SDK.
    for var in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
                "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID"):
        os.environ.pop(var, None)
    if base_url == "imds":
        os.environ.pop("AZURE_POD_IDENTITY_AUTHORITY_HOST", None)
    else:
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = base_url

    from importlib.metadata import version
    from azure.identity import ManagedIdentityCredential

    kwargs = {"client_id": client_id} if client_id else {}
    try:
        with ManagedIdentityCredential(**kwargs) as credential:
            token = credential.get_token(scope)
    except Exception as e:  # noqa: BLE001 - report whatever the SDK raised
        print(f"{type(e).__module__}.{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({
        "token": token.token,
        "expires_on": token.expires_on,
        "sdk": {p: version(p) for p in ("azure-identity", "azure-core", "msal")},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
