#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target into fuzz/corpus/<target>/ (committed).

usage: python3 fuzz/seeds.py

Seeds are realistic inputs: requests the SDKs send (azure-identity, msal-node's lower-cased
URL, the Rust SDK's lower-case header), the legacy endpoint's form POST, pipelining, the demo
config. The `connection` records follow the format documented in fuzz_targets/connection.rs.
The one raw `jwt_verify` token is signed with the target's fixed key ([7; 32]) when the
`cryptography` package is importable; otherwise that seed is left as it is.
"""

import base64
import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"

SYS = "11111111-1111-1111-1111-111111111111"
USER2 = "13333333-3333-3333-3333-333333333333"
MGMT = "https%3A%2F%2Fmanagement.azure.com%2F"
TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="


def req(target, *headers, method="GET", body=b"", version="1.1"):
    lines = [f"{method} {target} HTTP/{version}", "Host: 169.254.169.254", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


REQUESTS = {
    "azure_identity_system": req(TOKEN + MGMT, "Metadata: true", "User-Agent: azsdk-python-identity/1.27.0"),
    "azure_core_raw_resource": req(TOKEN + "https://management.azure.com/&client_id=" + USER2, "Metadata: true"),
    "rust_sdk": req("/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://vault.azure.net", "metadata: true"),
    "msal_node_lowercase": req(
        "/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3a%2f%2fstorage.azure.com",
        "metadata: True",
        "content-type: application/x-www-form-urlencoded",
    ),
    "probe_no_header": req(TOKEN + MGMT, "Connection: close"),
    "object_id": req(TOKEN + MGMT + "&object_id=22222222-2222-2222-2222-222222222222", "Metadata: true"),
    "msi_res_id": req(
        TOKEN + MGMT + "&msi_res_id=%2Fsubscriptions%2Fs%2FresourceGroups%2Frg%2Fproviders%2F"
        "Microsoft.ManagedIdentity%2FuserAssignedIdentities%2Fone",
        "Metadata: true",
    ),
    "bypass_cache": req(TOKEN + MGMT + "&bypass_cache=true", "Metadata: true"),
    "forwarded": req(TOKEN + MGMT, "Metadata: true", "X-Forwarded-For: 10.0.0.1"),
    "head": req(TOKEN + MGMT, "Metadata: true", method="HEAD"),
    "delete": req(TOKEN + MGMT, "Metadata: true", method="DELETE"),
    "legacy_post": req(
        "/oauth2/token",
        "Metadata: true",
        "Content-Type: application/x-www-form-urlencoded",
        method="POST",
        body=f"resource={MGMT}&client_id={USER2}".encode(),
    ),
    "jwks": req("/.well-known/jwks.json"),
    "discovery": req("/.well-known/openid-configuration"),
    "info": req("/metadata/identity/info?api-version=2018-02-01", "Metadata: true"),
    "versions": req("/metadata/versions", "Metadata: true"),
    "instance": req("/metadata/instance?api-version=2021-02-01&format=json", "Metadata: true"),
    "http10": req(TOKEN + MGMT, "Metadata: true", version="1.0"),
    "pipelined": req(TOKEN + MGMT, "Metadata: true") + req("/metadata/versions", "Metadata: true"),
    "bare_lf": b"GET " + (TOKEN + MGMT).encode() + b" HTTP/1.1\nMetadata: true\n\n",
    "chunked": req("/oauth2/token", "Metadata: true", "Transfer-Encoding: chunked", method="POST") + b"0\r\n\r\n",
}

QUERIES = {
    "azure_identity": b"api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
    "raw": b"api-version=2019-08-01&resource=https://vault.azure.net&client_id=" + USER2.encode(),
    "plus_and_pct": b"resource=a+b%20c%2B&x=%7e&empty=&novalue&=v",
    "duplicate": b"resource=a&RESOURCE=b",
    "bad_pct": b"resource=%G1&y=%",
    "utf8": "resource=%C3%A9t%C3%A9&z=\u00e9".encode(),
    "form": f"resource={MGMT}&client_id={USER2}".encode(),
}


def send(data, slow=False):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out += bytes([0x10 if slow else 0, len(chunk)]) + chunk
    return out


def wait(n):
    return bytes([4, n])


def read(n):
    return bytes([5, n])


FIN = bytes([6])


def newconn(legacy=False):
    return bytes([7 | (8 if legacy else 0)])


R = REQUESTS
CONNECTION = {
    "token_then_cached": send(R["azure_identity_system"]) + send(R["azure_identity_system"]) + FIN,
    "pipelined_slow_reader": send(R["pipelined"] + R["object_id"], slow=True) + read(3) + read(40) + read(255) + read(255) + FIN,
    "byte_by_byte": b"".join(send(bytes([b])) for b in R["rust_sdk"]),
    "legacy_post": newconn(legacy=True) + send(R["legacy_post"]) + FIN,
    "head_then_get": send(R["head"] + R["msal_node_lowercase"]),
    "garbage_closes": send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") + newconn() + send(R["jwks"]),
    "slowloris": send(R["info"][:20]) + wait(120) + wait(120),
    "idle_then_reuse": send(R["discovery"]) + wait(249) + wait(100) + newconn() + send(R["versions"]),
    "cache_expiry": send(R["azure_core_raw_resource"]) + wait(254) + wait(254) + send(R["azure_core_raw_resource"]),
    "mint_many": b"".join(
        send(req(TOKEN + f"https%3A%2F%2Fr{i}.example%2F&bypass_cache=true", "Metadata: true")) for i in range(24)
    ),
    "errors": send(R["forwarded"] + R["delete"] + R["probe_no_header"]),
    # Instance metadata larger than the send buffer (the fixture's `instance`), read slowly,
    # then a text leaf and a HEAD on the same connection.
    "instance_metadata_chunks": send(
        req("/metadata/instance?api-version=2025-04-07", "Metadata: true")
        + req("/metadata/instance/compute/vmId?api-version=2021-02-01&format=text", "Metadata: true"),
        slow=True,
    )
    + read(255) * 8
    + send(req("/metadata/instance?api-version=2017-08-01", "Metadata: true", method="HEAD"))
    + send(req("/metadata/loadbalancer?api-version=2020-10-01", "Metadata: True"))
    + FIN,
}

CONFIGS = {
    "demo": (FUZZ / "fixtures/agent.json").read_bytes(),
}


def configs():
    doc = json.loads(CONFIGS["demo"])
    only_users = dict(doc, identities=doc["identities"][1:])
    CONFIGS["only_users"] = json.dumps(only_users).encode()
    bad = dict(doc, tenant_id="not-a-guid", token_lifetime_s=-1)
    CONFIGS["bad_fields"] = json.dumps(bad).encode()
    net = dict(doc, network={"address": "10.0.2.15/24", "gateway": "10.0.2.2"})
    CONFIGS["network"] = json.dumps(net).encode()
    CONFIGS["truncated"] = CONFIGS["demo"][:200]


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwt_seeds():
    header = b'{"alg":"ES256","typ":"JWT","kid":"k"}'
    claims = json.dumps({"aud": "https://management.azure.com/", "appid": SYS, "exp": 1767312000}).encode()
    seeds = {
        "roundtrip": b"\x01" + header + b"\n" + claims,
        "roundtrip_not_es256": b"\x01" + b'{"alg":"none"}' + b"\n" + claims,
        "malformed": b"\x00" + b64u(header) + b"." + b64u(claims),
    }
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        key = ec.derive_private_key(int.from_bytes(bytes([7] * 32), "big"), ec.SECP256R1())
        signing_input = b64u(header) + b"." + b64u(claims)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        seeds["signed"] = b"\x00" + signing_input + b"." + b64u(sig)
    except ImportError:
        pass
    return seeds


# scheduled_events_post: `$ID$` is replaced by the id of event `data[0] % 4` (see the target).
START_REQUESTS = {
    "approve": b'\x00{"StartRequests":[{"EventId":"$ID$"}]}',
    "approve_started": b'\x01{"StartRequests":[{"EventId":"$ID$"}]}',
    "gone": b'\x02{"StartRequests":[{"EventId":"$ID$"}]}',
    "empty": b'{"StartRequests":[]}',
    "unknown": b'{"StartRequests":[{"EventId":"00000000-0000-4000-8000-000000000000"}]}',
    "extra_keys": b'\x00{"DocumentIncarnation":3,"StartRequests":[{"EventId":"$ID$","x":[1,{}]}]}',
    "escaped": b'{"StartRequests":[{"EventId":"\\u0041"}]}',
    "truncated": b'{"StartRequests":[{"EventId":"',
}


def metadata_seeds():
    """`metadata_walk`: flags, window, sub-path, `\n`, optional document (see the target)."""
    newest = 34 << 2
    old = 2 << 2  # 2017-08-01
    doc = (FUZZ / "fixtures" / "instance.json").read_bytes()
    return {
        "whole": bytes([newest, 100]) + b"",
        "whole_extended_old": bytes([old | 2, 7]) + b"",
        "leaf_text": bytes([newest | 1, 3]) + b"network/interface/0/ipv4/ipAddress/0/privateIpAddress",
        "escaped_text": bytes([newest | 1, 1]) + b"compute/futureField/quoted/",
        "array": bytes([newest, 50]) + b"compute/tagsList",
        "with_document": bytes([newest, 64]) + b"compute\n" + doc,
    }


def dtb_seeds():
    """The QEMU `virt` device trees the reader's unit tests use (hal/testdata/)."""
    testdata = FUZZ.parent / "hal" / "testdata"
    return {p.stem: p.read_bytes() for p in sorted(testdata.glob("*.dtb"))}


def write(target, seeds):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (d / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds")


def main():
    configs()
    write("http_parse", REQUESTS)
    write("query_decode", QUERIES)
    write("config_parse", CONFIGS)
    write("jwt_verify", jwt_seeds())
    write("connection", CONNECTION)
    write("scheduled_events_post", START_REQUESTS)
    write("metadata_walk", metadata_seeds())
    write("dtb", dtb_seeds())


if __name__ == "__main__":
    main()
