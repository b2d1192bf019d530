#!/usr/bin/env python3
"""Queue one echo job on a jobhost server, wait for it to finish, and print its result.

    python3 enqueue_and_wait.py [BASE_URL]

BASE_URL is argv[1], else $JOBHOST_URL, else http://127.0.0.1:7700. When the server has a
token, put it in $JOBHOST_TOKEN. Exits 0 when the job completed, 1 when it was poisoned or
cancelled, 2 when the server refused a request or could not be reached.
Only the standard library is used.
"""

import json
import os
import sys
import urllib.error
import urllib.request

WAIT = "30s"  # per long-poll; at most the server's serve.max_wait
FINISHED = {"completed", "poisoned", "cancelled"}


class ApiError(Exception):
    pass


def call(base, method, path, body=None, timeout=10):
    """One API request; returns the decoded JSON answer or raises ApiError with its message."""
    headers = {"Accept": "application/json"}
    token = os.environ.get("JOBHOST_TOKEN")
    if token:
        headers["Authorization"] = "Bearer " + token.strip()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        # Every API error is {"error": {"code", "message", "field"?}}; fall back to the status line.
        try:
            detail = json.load(err)["error"]
            where = f" ({detail['field']})" if detail.get("field") else ""
            message = f"{detail['code']}{where}: {detail['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"{err.code} {err.reason}"
        raise ApiError(f"{method} {path}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ApiError(f"cannot reach {base}: {reason}") from None


def main():
    base = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("JOBHOST_URL", "http://127.0.0.1:7700")).rstrip("/")
    try:
        job_id = call(base, "POST", "/api/v1/jobs", {"processor": "echo", "payload": {"greeting": "hello"}})["id"]
        print(f"queued {job_id}", file=sys.stderr)
        while True:
            # The server answers as soon as the job finishes, or after WAIT with the job as it is.
            job = call(base, "GET", f"/api/v1/jobs/{job_id}?wait={WAIT}", timeout=90)
            if job["status"] in FINISHED:
                break
            print(f"still {job['status']} after {job['attempts']} attempt(s); waiting again", file=sys.stderr)
    except ApiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if job["status"] != "completed":
        print(f"job {job_id} is {job['status']}: {job['last_error'] or 'no error recorded'}", file=sys.stderr)
        return 1
    print(json.dumps(job["result"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
