"""Peer: Python requests.Session (keep-alive), the same job as `ours.lua seq`:
encode the create request, decode the envelope, decode param and resultJson.
    python3 bench/clients/requests_seq.py URL N CA_FILE_OR_EMPTY REQUEST_JSON
"""
import json
import sys
import time

import requests

url, n = sys.argv[1], int(sys.argv[2])
ca = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else True
body = json.loads(sys.argv[4])  # the request JSON (bench/bodies.lua)
KEY, TASK = "bench-key-0b5e9c", "task_ideogram_1765179922911"
s = requests.Session()
s.headers.update({"Authorization": "Bearer " + KEY, "Accept": "application/json"})
# verify per request too: with REQUESTS_CA_BUNDLE set, requests prefers it over Session.verify
s.verify = ca
req = body
t0 = time.perf_counter()
for _ in range(n):
    r = s.post(url + "/api/v1/jobs/createTask", data=json.dumps(req),
               headers={"Content-Type": "application/json"}, timeout=30, verify=ca)
    env = r.json()
    if r.status_code != 200 or env["code"] != 200 or env["data"]["taskId"] != TASK:
        sys.exit("requests: bad create answer")
    r = s.get(url + "/api/v1/jobs/recordInfo", params={"taskId": TASK}, timeout=30, verify=ca)
    env = r.json()
    data = env["data"]
    data["param"] = json.loads(data["param"])
    data["resultJson"] = json.loads(data["resultJson"])
    data["resultUrls"] = data["resultJson"]["resultUrls"]
    if env["code"] != 200 or data["state"] != "success" or not data["resultUrls"]:
        sys.exit("requests: bad recordInfo answer")
t1 = time.perf_counter()
print("requests=%d seconds=%.6f" % (2 * n, t1 - t0))
