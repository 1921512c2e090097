"""Run the Azure Linux agent's (waagent 2.7.3.0) IMDS client, unmodified, against
169.254.169.254.

usage: PYTHONPATH=<waagent dist-packages> waagent_imds.py

Its IMDS endpoint is a module constant: run this inside a network namespace where the agent owns
169.254.169.254:80. Calls `get_imds_client(...).get_compute()` (telemetry:
`/metadata/instance/compute?api-version=2018-02-01`) and `validate()` (health:
`/metadata/instance?api-version=2018-02-01`) and prints one JSON object:
{"compute": {field: value}, "image_origin": n, "validate": [healthy, message]}.
"""

import json
import sys


def main() -> int:
    from azurelinuxagent.common.protocol import imds

    # The WireServer address is waagent's fallback on a connection error only; nothing answers
    # there inside the test's namespace.
    client = imds.get_imds_client("168.63.129.16")
    out = {}
    compute = client.get_compute()
    out["compute"] = {k: v for k, v in vars(compute).items() if not k.startswith("_")}
    out["image_origin"] = compute.image_origin
    out["validate"] = list(client.validate())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
