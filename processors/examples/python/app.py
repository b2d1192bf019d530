"""An example jobhost processor: a WASI 0.2 component written in Python.

Build it with componentize-py 0.25.1 (see requirements.txt), from this folder:

    componentize-py -d ../../wit -w http-command componentize app -o example-python.wasm

and drop the .wasm file into the processors folder under the name you want the processor to
have (`scripts/components build OUT_DIR` does the same in a scratch folder, since componentize-py
leaves a __pycache__ beside app.py). componentize-py embeds CPython and the standard library in
the component (about 19 MB): the app may use any pure-Python module, but no threads, no
subprocesses and no sockets.

The contract is that of every processor: the job's payload arrives on stdin, the result leaves
on stdout, and exit status 0 means success. This one

- reads `{"url": "http://HOST[:PORT]/PATH"}` from stdin;
- sends `GET url` through `wasi:http/outgoing-handler`, with `authorization: Bearer $API_TOKEN`
  when the environment variable API_TOKEN is set (give it to the processor as a secret in
  jobhost's config: `secrets: [API_TOKEN]`);
- writes `{"language": "python", "status": 200, "body": "...", "greeting": $GREETING or null}`
  (GREETING is plain configuration: `env: {GREETING: hi}`);
- when the request fails, writes `request to URL failed: ERROR` on stderr and exits 2. ERROR is
  the WASI HTTP error code, e.g. `ErrorCode_HttpRequestDenied()` when jobhost's `http.allow` for
  this processor does not grant the URL's host.

stdin, stdout, stderr and os.environ are plain Python: componentize-py maps them onto WASI.
HTTP is not (urllib would need sockets): it goes through the bindings componentize-py generates
from the WIT world, under `wit_world.imports`.
"""

import json
import os
import sys
from typing import NoReturn
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import exit as wasi_exit
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.wasi_http_types import (
    Fields,
    Method_Get,
    OutgoingRequest,
    Scheme_Http,
    Scheme_Https,
)


class Run(exports.Run):
    """The component's `wasi:cli/run` export: called once per job."""

    def run(self) -> None:
        try:
            payload = json.load(sys.stdin)
        except ValueError as err:
            fail(f"the payload is not JSON: {err}")
        url = payload.get("url") if isinstance(payload, dict) else None
        if not isinstance(url, str):
            fail('the payload has no "url" string, e.g. {"url": "http://127.0.0.1:8000/"}')

        # The environment the host gave this processor: only what its config grants, never
        # the host's own environment.
        token = os.environ.get("API_TOKEN")
        greeting = os.environ.get("GREETING")

        try:
            status, body = get(url, token)
        except RequestFailed as err:
            fail(f"request to {url} failed: {err}")

        result = {
            "language": "python",
            "status": status,
            "body": body.decode("utf-8", errors="replace"),
            "greeting": greeting,
        }
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class RequestFailed(Exception):
    """The request could not be sent, or no response came back."""


def get(url: str, token: str | None) -> tuple[int, bytes]:
    """Sends `GET url` and returns the response's status and body."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestFailed(f"not an http:// or https:// URL: {url!r}")

    headers = [("accept", b"application/json, */*")]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}".encode()))

    # Every WASI call that returns a `result` raises `Err(value)` on its error case.
    try:
        request = OutgoingRequest(Fields.from_list(headers))
        request.set_method(Method_Get())
        request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
        request.set_authority(parts.netloc)
        request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    except Err as err:
        raise RequestFailed(f"invalid request: {err.value!r}") from None
    # A GET has no body: not asking for one (`request.body()`) sends an empty one.

    # `handle` may refuse the request at once (it raises `Err(ErrorCode_…)`); otherwise the
    # response arrives later, through a future. Blocking on its pollable is the synchronous
    # way to wait for it: no event loop needed.
    try:
        future = outgoing_handler.handle(request, None)
    except Err as err:
        raise RequestFailed(describe(err.value)) from None
    with future:
        with future.subscribe() as pollable:
            pollable.block()
        outcome = future.get()
    # `get` is None before the pollable is ready, `Err` on a second `get`, and otherwise
    # `Ok(Ok(response))` or `Ok(Err(error code))`.
    if not isinstance(outcome, Ok):
        raise RequestFailed("the response future was not ready")
    if isinstance(outcome.value, Err):
        raise RequestFailed(describe(outcome.value.value))
    response = outcome.value.value

    # The body is a stream, a child of `incoming-body`: the `with` blocks drop the stream
    # first, then the body, then the response.
    chunks = []
    with response:
        status = response.status()
        with response.consume() as incoming, incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(64 * 1024))
                except Err as err:
                    if isinstance(err.value, StreamError_Closed):
                        break  # the end of the body
                    raise RequestFailed(f"reading the body: {err.value!r}") from None
    return status, b"".join(chunks)


def describe(code) -> str:
    """The WASI HTTP error code as its binding's name: `ErrorCode_HttpRequestDenied()`,
    `ErrorCode_ConnectionRefused()`, `ErrorCode_DnsError(value=…)`, …."""
    return repr(code)


def fail(message: str) -> NoReturn:
    """Writes one line to stderr and exits with status 2, through `wasi:cli/exit`'s
    `exit-with-code` (Python's `sys.exit(2)` may not reach the host as 2)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    wasi_exit.exit_with_code(2)
    raise AssertionError("exit-with-code does not return")
