"""The built-in `echo` processor (processors/echo) as a Python component, for the benchmark.

Built as `echo-python.wasm` by `scripts/components build OUT_DIR` with componentize-py, for the
plain `command` world of processors/wit (no HTTP). It does what echo does, so that the benchmark
compares the same work in a Rust module, a Rust component and a Python component: it reads the
payload on stdin and writes `{"status": "completed", "processed": true, "echo": <payload>}` on
stdout (echo's `delay_ms` is not implemented). A payload that is not JSON is written to stderr
and the exit status is 2, through `wasi:cli/exit.exit-with-code`.
"""

import json
import sys

from wit_world import exports
from wit_world.imports import exit as wasi_exit


class Run(exports.Run):
    def run(self) -> None:
        data = sys.stdin.buffer.read()
        try:
            payload = json.loads(data)
        except ValueError as err:
            sys.stderr.write(f"echo: the payload is not JSON ({err}); send a JSON document on stdin\n")
            sys.stderr.flush()
            wasi_exit.exit_with_code(2)
            return  # not reached: exit-with-code does not return
        # One write: every write is a host call.
        sys.stdout.write(json.dumps({"status": "completed", "processed": True, "echo": payload}) + "\n")
        sys.stdout.flush()
