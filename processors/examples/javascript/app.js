// An example jobhost processor: a WASI 0.2 component written in JavaScript.
//
// Build it with componentize-js 0.23.0 (see package.json), from this folder:
//
//     componentize-js --wit ../../wit --world-name http-command -o example-javascript.wasm app.js
//
// and drop the .wasm file into the processors folder under the name you want the processor to
// have (`scripts/components build OUT_DIR` does the same in a scratch folder, with the tools
// that `npm ci` installs in target/toolchains/js). componentize-js embeds a JavaScript engine
// (StarlingMonkey, built on SpiderMonkey) in the component, about 15 MB.
//
// The contract is that of every processor: the job's payload arrives on stdin, the result
// leaves on stdout, and exit status 0 means success. This one
//
// - reads `{"url": "http://HOST[:PORT]/PATH"}` from stdin;
// - sends `GET url` through `wasi:http/outgoing-handler`, with `authorization: Bearer
//   $API_TOKEN` when the environment variable API_TOKEN is set (give it to the processor as a
//   secret in jobhost's config: `secrets: [API_TOKEN]`);
// - writes `{"language": "javascript", "status": 200, "body": "…", "greeting": $GREETING or null}`
//   (GREETING is plain configuration: `env: {GREETING: hi}`);
// - when the request fails, writes `request to URL failed: ERROR` on stderr and exits 2. ERROR
//   is the WASI HTTP error code, e.g. `HTTP-request-denied` when jobhost's `http.allow` for
//   this processor does not grant the URL's host.
//
// Everything goes through WASI imports, called synchronously: `run` is a plain function that
// returns when the job is done. `fetch` would need the engine's event loop, which a
// `wasi:cli/run` export does not drive, so HTTP uses `wasi:http/outgoing-handler` directly and
// waits on pollables. The import specifiers below are WIT interface names: componentize-js
// binds them to the component's imports (the world is `http-command` in processors/wit).

import { getEnvironment } from 'wasi:cli/environment@0.2.12';
import { exitWithCode } from 'wasi:cli/exit@0.2.12';
import { getStderr } from 'wasi:cli/stderr@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';
import { getStdout } from 'wasi:cli/stdout@0.2.12';
import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest } from 'wasi:http/types@0.2.12';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// The `wasi:cli/run` export: called once per job.
export const run = {
  run() {
    let payload;
    try {
      payload = JSON.parse(decoder.decode(readAll(getStdin())));
    } catch (err) {
      fail(`the payload is not JSON: ${err.message}`);
    }
    const url = payload?.url;
    if (typeof url !== 'string') {
      fail('the payload has no "url" string, e.g. {"url": "http://127.0.0.1:8000/"}');
    }

    // The environment the host gave this processor: only what its config grants, never the
    // host's own environment. `get-environment` returns a list of [name, value] pairs.
    const env = new Map(getEnvironment());
    const token = env.get('API_TOKEN');
    const greeting = env.get('GREETING') ?? null;

    let response;
    try {
      response = get(url, token);
    } catch (err) {
      fail(`request to ${url} failed: ${describe(err)}`);
    }

    const result = {
      language: 'javascript',
      status: response.status,
      body: decoder.decode(response.body),
      greeting,
    };
    writeAll(getStdout(), encoder.encode(JSON.stringify(result) + '\n'));
  },
};

// Sends `GET url` and returns the response's status and body. Throws what WASI throws: a WASI
// function whose result is an error throws it (the error code is in the exception's `payload`).
function get(url, token) {
  const { protocol, host, pathname, search } = new URL(url);
  if (protocol !== 'http:' && protocol !== 'https:') {
    throw new Error(`not an http:// or https:// URL: ${JSON.stringify(url)}`);
  }

  const headers = [['accept', encoder.encode('application/json, */*')]];
  if (token !== undefined) {
    headers.push(['authorization', encoder.encode(`Bearer ${token}`)]);
  }
  const request = new OutgoingRequest(Fields.fromList(headers));
  // WIT variants are objects with a `tag`, named as in the WIT file.
  request.setMethod({ tag: 'get' });
  request.setScheme({ tag: protocol === 'https:' ? 'HTTPS' : 'HTTP' });
  request.setAuthority(host);
  request.setPathWithQuery(pathname + search);
  // A GET has no body: not asking for one (`request.body()`) sends an empty one.

  // `handle` may refuse the request at once (it throws); otherwise the response arrives
  // later, through a future. Blocking on its pollable waits for it, synchronously.
  const future = handle(request);
  future.subscribe().block();
  // `get` is undefined before the pollable is ready; then a result of a result: the outer
  // one is an error only on a second `get`, the inner one is the response or its error code.
  const outer = future.get();
  if (outer === undefined || outer.tag === 'err') {
    throw new Error('the response future was not ready');
  }
  if (outer.val.tag === 'err') {
    throw { payload: outer.val.val };
  }
  const incoming = outer.val.val;
  const status = incoming.status();
  const body = readAll(incoming.consume().stream());
  return { status, body };
}

// Reads an `input-stream` to its end. `blocking-read` throws `{tag: 'closed'}` at the end.
function readAll(stream) {
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (err) {
      if (err?.payload?.tag === 'closed') {
        break;
      }
      throw err;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  const all = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

// Writes all of `bytes` to an `output-stream`: `blocking-write-and-flush` takes at most 4096
// bytes per call.
function writeAll(stream, bytes) {
  for (let offset = 0; offset < bytes.length; offset += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(offset, offset + 4096));
  }
}

// An error as text: the WASI error code's tag (`HTTP-request-denied`, `connection-refused`,
// `DNS-error`, …, with its value if it has one), or a JavaScript error's message.
function describe(err) {
  const code = err?.payload;
  if (code?.tag !== undefined) {
    return code.val === undefined ? code.tag : `${code.tag} ${JSON.stringify(code.val)}`;
  }
  return err?.message ?? String(err);
}

// Writes one line to stderr and exits with status 2, through `wasi:cli/exit`'s `exit-with-code`.
function fail(message) {
  writeAll(getStderr(), encoder.encode(message + '\n'));
  exitWithCode(2);
}
