#!/usr/bin/python3
"""One managed-identity token from Python's msrestazure (Debian's
python3-msrestazure), as the Azure CLI 2.45 and older Python tools get theirs:
MSIAuthentication picks IMDS at 169.254.169.254, App Service 2017-09-01
(APPSETTING_WEBSITE_SITE_NAME + MSI_ENDPOINT + MSI_SECRET) or the Cloud Shell
POST (MSI_ENDPOINT) from the environment.  Run by
tests/integration/test_legacy_clients.py.

Usage: msrestazure-token.py RESOURCE [client_id=ID | object_id=ID | msi_res_id=ID]
Prints one JSON line: the SHA-256 of the token (never the token) and the
other fields of the answer; exits 1 with the error.
"""

import hashlib
import json
import sys

from msrestazure.azure_active_directory import MSIAuthentication


def main():
    kw = {"resource": sys.argv[1]}
    if len(sys.argv) > 2:
        k, v = sys.argv[2].split("=", 1)
        kw[k] = v
    try:
        cred = MSIAuthentication(timeout=0, **kw)
    except Exception as e:  # the library raises several kinds
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    tok = cred.token if isinstance(cred.token, dict) else {}
    out = {k: v for k, v in tok.items() if k != "access_token"}
    out["sha256"] = hashlib.sha256(tok.get("access_token", "").encode()).hexdigest()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
