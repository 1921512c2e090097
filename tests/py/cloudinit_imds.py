"""Run cloud-init 22.4.2's Azure datasource IMDS code, unmodified, against 169.254.169.254.

usage: PYTHONPATH=<cloud-init dist-packages> cloudinit_imds.py

cloud-init's IMDS URL is a module constant: run this inside a network namespace where the
agent owns 169.254.169.254:80. It calls, through their public (module or datasource) functions:
- `DataSourceAzure.get_imds_data_with_api_fallback` (api-version 2021-08-01 with
  `extended=true`, falling back to 2019-06-01 on a 400), as `crawl_metadata` does;
- `get_metadata_from_imds` at 2019-06-01 (the fallback version) directly;
- `generate_network_config_from_instance_network_metadata` on the network section;
- the helpers `crawl_metadata` reads the admin user, host name and password policy with,
  `_get_public_keys_from_imds` (SSH keys, OpenSSH-checked), and the user data decoded as
  `crawl_metadata` decodes it (whitespace stripped, base64);
- `_ppstype_from_imds` (`extended.compute.ppsType`).

Prints one JSON object. The URLs cloud-init read (with their status) are taken from its own
debug log (`cloudinit.url_helper`), so the caller sees which api-versions were asked for.
"""

import base64
import json
import logging
import re
import sys
import tempfile


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass


def main() -> int:
    from cloudinit import distros, helpers
    from cloudinit.sources import DataSourceAzure as dsaz

    # After the imports: importing cloudinit.log resets the root logger.
    capture = Capture()
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)

    tmp = tempfile.mkdtemp(prefix="imds-ci-")
    paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
    distro = distros.fetch("debian")("debian", {}, paths)
    ds = dsaz.DataSourceAzure({}, distro, paths)

    out = {"versions": {"want": dsaz.IMDS_VER_WANT, "min": dsaz.IMDS_VER_MIN}}

    md = ds.get_imds_data_with_api_fallback(retries=0)
    out["fallback_urls"] = read_urls(capture)
    out["metadata"] = md
    capture.lines.clear()

    out["metadata_2019"] = dsaz.get_metadata_from_imds(retries=0, api_version=dsaz.IMDS_VER_MIN)
    out["urls_2019"] = read_urls(capture)

    if md:
        out["network_config"] = dsaz.generate_network_config_from_instance_network_metadata(
            md["network"]
        )
        out["username"] = dsaz._username_from_imds(md)
        out["hostname"] = dsaz._hostname_from_imds(md)
        out["disable_password"] = dsaz._disable_password_from_imds(md)
        out["ssh_keys"] = ds._get_public_keys_from_imds(md)
        imds_userdata = dsaz._userdata_from_imds(md)
        # As crawl_metadata does (DataSourceAzure.py 22.4.2).
        raw = base64.b64decode("".join(imds_userdata.split())) if imds_userdata else b""
        out["userdata"] = base64.b64encode(raw).decode()
        out["ppstype"] = ds._ppstype_from_imds(md)
    print(json.dumps(out))
    return 0


def read_urls(capture):
    """[(url, status)] from url_helper's "Read from URL (STATUS, Nb) after N attempts" lines
    and its "[N/M] open 'URL' ..." lines (requests that failed leave only the latter)."""
    urls = []
    for line in capture.lines:
        m = re.match(r"Read from (\S+) \((\d+), \d+b\) after", line)
        if m:
            urls.append({"url": m.group(1), "status": int(m.group(2))})
            continue
        m = re.search(r"open '(\S+)' with .* configuration", line)
        if m:
            urls.append({"url": m.group(1), "status": None})
    return urls


if __name__ == "__main__":
    sys.exit(main())
