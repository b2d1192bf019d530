//! The HTTP API of `jobhost serve`, over real HTTP against a real server process on a real
//! database, on both backends: enqueueing one job and batches with every field honoured,
//! reading a job with its history, listing with every filter and walking cursor pages,
//! retrying and cancelling one job or many, status/pools/workers/processors as the CLI sees
//! them, the OpenAPI document, `/metrics` for a known state, `/healthz`, long-polls (answered
//! when a worker finishes, timing out, refused when too long), bearer-token auth from every
//! source and the refusals to start unsafely, `--read-only`, bad input of every kind (each
//! refused with its status, code and field, inserting nothing), and a graceful SIGTERM that
//! still answers an in-flight long-poll; and the Python example in docs/examples.
//!
//! Every test runs the real `jobhost serve` on a free port of 127.0.0.1 and drives the pool
//! with the real CLI beside it (`seed`, `work`, `jobs show`), so what the API says is checked
//! against what the database holds. The tests that only exercise the HTTP layer (routing,
//! auth, start-up refusals, the OpenAPI document, the processors folder) run on SQLite
//! alone, each saying so.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Backend, Pool, Server, jobs_count};

// ------------------------------------------------------------------------------------------
// The HTTP client: status, headers and body of every answer, 4xx and 5xx included.
// ------------------------------------------------------------------------------------------

/// One server seen by one client, with or without a bearer token.
#[derive(Clone)]
struct Api {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// An answer: its status, headers and body text.
struct Reply {
    what: String,
    status: u16,
    headers: ureq::http::HeaderMap,
    text: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api::at(&server.base, None)
    }

    fn with_token(server: &Server, token: &str) -> Api {
        Api::at(&server.base, Some(token))
    }

    fn at(base: &str, token: Option<&str>) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect is an answer to check (the dashboard's forms answer 303).
            .max_redirects(0)
            // Far above the longest long-poll a test makes: a hung server fails the test.
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .into();
        Api { agent, base: base.to_owned(), token: token.map(str::to_owned) }
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn get(&self, path: &str) -> Reply {
        let request = self.authorized(self.agent.get(format!("{}{path}", self.base)));
        Reply::of(format!("GET {path}"), request.call())
    }

    /// GET with exactly these headers (no token of this client's own).
    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::of(format!("GET {path} {headers:?}"), request.call())
    }

    /// POST of a JSON body (`Content-Type: application/json; charset=utf-8`).
    fn post(&self, path: &str, body: &Value) -> Reply {
        let request = self.authorized(self.agent.post(format!("{}{path}", self.base)));
        Reply::of(format!("POST {path} {body:.200}"), request.send_json(body))
    }

    /// POST with no body at all, as `curl -X POST URL` sends it.
    fn post_empty(&self, path: &str) -> Reply {
        let request = self.authorized(self.agent.post(format!("{}{path}", self.base)));
        Reply::of(format!("POST {path} (no body)"), request.send_empty())
    }

    /// POST of raw bytes with the given content type (none when `None`).
    fn post_raw(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        let mut request = self.authorized(self.agent.post(format!("{}{path}", self.base)));
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        Reply::of(format!("POST {path} ({content_type:?}, {} bytes)", body.len()), request.send(body))
    }

    /// POST of a body sent in chunks, with no Content-Length.
    fn post_chunked(&self, path: &str, body: Vec<u8>) -> Reply {
        let request = self.authorized(self.agent.post(format!("{}{path}", self.base)));
        let request = request.header("Content-Type", "application/json");
        let length = body.len();
        let reply = request.send(ureq::SendBody::from_owned_reader(std::io::Cursor::new(body)));
        Reply::of(format!("POST {path} (chunked, {length} bytes)"), reply)
    }

    /// POST of `body` with its content type and exactly these headers besides (this
    /// client's token included, if it has one).
    fn post_with(&self, path: &str, content_type: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.authorized(self.agent.post(format!("{}{path}", self.base)));
        request = request.header("Content-Type", content_type);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::of(format!("POST {path} {headers:?} {body:.200}"), request.send(body))
    }

    fn delete(&self, path: &str) -> Reply {
        let request = self.authorized(self.agent.delete(format!("{}{path}", self.base)));
        Reply::of(format!("DELETE {path}"), request.call())
    }

    fn put(&self, path: &str, body: &Value) -> Reply {
        let request = self.authorized(self.agent.put(format!("{}{path}", self.base)));
        Reply::of(format!("PUT {path}"), request.send_json(body))
    }

    // The endpoints, for brevity in the tests.

    /// `POST /api/v1/jobs` of one job; insists on 201 and returns its id.
    fn enqueue(&self, job: &Value) -> String {
        let body = self.post("/api/v1/jobs", job).expect(201);
        assert_eq!(keys(&body), ["id", "outcome"], "the answer to enqueueing one job is {{id, outcome}}: {body}");
        assert_eq!(body["outcome"], "queued", "{body}");
        let id = body["id"].as_str().unwrap_or_else(|| panic!("the id is a string: {body}")).to_owned();
        uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("the id {id} is a uuid: {e}"));
        id
    }

    /// `POST /api/v1/jobs` of a batch; insists on 201 and returns the ids.
    fn enqueue_batch(&self, jobs: &[Value]) -> Vec<String> {
        let body = self.post("/api/v1/jobs", &json!({ "jobs": jobs })).expect(201);
        assert_eq!(keys(&body), ["ids", "jobs"], "the answer to a batch is {{ids, jobs}}: {body}");
        let ids = strings(&body["ids"]);
        assert_eq!(ids.len(), jobs.len(), "one id per job: {body}");
        let answers: Vec<Value> = ids.iter().map(|id| json!({"id": id, "outcome": "queued"})).collect();
        assert_eq!(body["jobs"], json!(answers), "each job answered as one is: {body}");
        ids
    }

    /// `GET /api/v1/jobs/{id}`; insists on 200.
    fn job(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/jobs/{id}")).expect(200)
    }

    /// `GET /api/v1/jobs?QUERY`; insists on 200 and returns (jobs, next_cursor).
    fn list(&self, query: &str) -> (Vec<Value>, Option<String>) {
        let body = self.get(&format!("/api/v1/jobs?{query}")).expect(200);
        assert_eq!(keys(&body), ["jobs", "next_cursor"], "a listing is {{jobs, next_cursor}}: {body}");
        let jobs = body["jobs"].as_array().unwrap_or_else(|| panic!("jobs is an array: {body}")).clone();
        for job in &jobs {
            assert_eq!(
                keys(job),
                sorted(SUMMARY_KEYS),
                "a listed job is the job object without payload/result/history"
            );
        }
        let cursor = match &body["next_cursor"] {
            Value::Null => None,
            Value::String(cursor) => Some(cursor.clone()),
            other => panic!("next_cursor is a string or null, not {other}"),
        };
        (jobs, cursor)
    }

    /// The ids `GET /api/v1/jobs?QUERY&limit=1000` lists, in its order.
    fn list_ids(&self, query: &str) -> Vec<String> {
        let (jobs, cursor) = self.list(&format!("{query}&limit=1000"));
        assert_eq!(cursor, None, "fewer than 1000 jobs fit one page");
        jobs.iter().map(|job| job["id"].as_str().unwrap().to_owned()).collect()
    }

    /// `GET /metrics`, parsed; insists on 200.
    fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics");
        assert_eq!(reply.status, 200, "{}", reply.describe());
        Metrics::parse(&reply.text)
    }

    /// Polls `/metrics` until `jobhost_server_waiters` is `count` (within 10 s).
    fn wait_for_waiters(&self, count: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiters = self.metrics().value("jobhost_server_waiters", &[]);
            if waiters == Some(count) {
                return;
            }
            assert!(Instant::now() < deadline, "jobhost_server_waiters never became {count} (last: {waiters:?})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Reply {
    fn of(what: String, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = result.unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.body_mut().read_to_string().unwrap_or_else(|e| panic!("{what}: unreadable body: {e}"));
        Reply { what, status, headers, text }
    }

    fn describe(&self) -> String {
        format!("{} answered {}: {:.2000}", self.what, self.status, self.text)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().expect("a text header"))
    }

    /// The value of the `csrf` field of the page's first form.
    fn csrf(&self) -> String {
        let start =
            self.text.find(r#"name="csrf" value=""#).unwrap_or_else(|| panic!("no CSRF field: {}", self.describe()));
        let value = &self.text[start + r#"name="csrf" value=""#.len()..];
        value[..value.find('"').unwrap()].to_owned()
    }

    /// The body as JSON, which it must be (with a JSON content type).
    fn json(&self) -> Value {
        let content_type = self.header("content-type").unwrap_or("");
        assert!(content_type.starts_with("application/json"), "{}: content type {content_type:?}", self.describe());
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.describe()))
    }

    /// Insists on `status` and returns the JSON body.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.describe());
        self.json()
    }

    /// Insists on the one error shape: `status`, `{"error": {"code", "message", "field"?}}`,
    /// and the field when one is given (`None`: any field or none).
    fn expect_error(&self, status: u16, code: &str, field: Option<&str>) -> Value {
        let body = self.expect(status);
        assert_eq!(keys(&body), ["error"], "{}", self.describe());
        let error = &body["error"];
        let allowed: BTreeSet<&str> = ["code", "message", "field"].into();
        assert!(keys(error).iter().all(|key| allowed.contains(key.as_str())), "{}", self.describe());
        assert_eq!(error["code"], code, "{}", self.describe());
        let message = error["message"].as_str().unwrap_or_else(|| panic!("{}: message is a string", self.describe()));
        assert!(!message.trim().is_empty(), "{}: the message says something", self.describe());
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{}", self.describe());
        }
        error.clone()
    }
}

// ------------------------------------------------------------------------------------------
// Metrics: OpenMetrics text, parsed into samples.
// ------------------------------------------------------------------------------------------

struct Metrics {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|line| !line.starts_with('#') && !line.trim().is_empty()) {
            let (name, labels, rest) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    (&line[..open], parse_labels(&line[open + 1..close]), &line[close + 1..])
                }
                None => {
                    let (name, rest) = line.split_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
                    (name, BTreeMap::new(), rest)
                }
            };
            let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value: {line}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                value => value.parse().unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Metrics { text: text.to_owned(), samples }
    }

    /// The value of the sample with exactly this name and these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut found = self.samples.iter().filter(|(n, l, _)| n == name && *l == wanted).map(|(_, _, v)| *v);
        let value = found.next();
        assert_eq!(found.next(), None, "{name}{wanted:?} appears once");
        value
    }

    /// Like [`Metrics::value`], insisting that the sample exists.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
    }

    /// Every sample named `name`.
    fn all(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, v)| (l.clone(), *v)).collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad labels: {text}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.push(chars.next().map(|(_, c)| c).unwrap_or('\\')),
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {text}"),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    labels
}

// ------------------------------------------------------------------------------------------
// Pools, jobs and small helpers.
// ------------------------------------------------------------------------------------------

/// A listed job: the job object without payload, result and history.
const SUMMARY_KEYS: &[&str] = &[
    "id",
    "pool",
    "processor",
    "status",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
    "updated_at",
    "finished_at",
    "worker_id",
    "host",
    "lease_expires_at",
    "last_error",
    "unique_key",
    "waiting_for",
];

/// The job object's keys: a listed job's, and its payload, result, history, where its older
/// history begins, and the jobs it waits for and that wait for it.
fn job_keys() -> Vec<&'static str> {
    let detail = ["payload", "result", "history", "history_cursor", "parents", "children", "children_total"];
    SUMMARY_KEYS.iter().copied().chain(detail).collect()
}

const HISTORY_KEYS: &[&str] = &[
    "attempt",
    "worker_id",
    "host",
    "started_at",
    "finished_at",
    "outcome",
    "message",
    "stderr",
    "fuel_used",
    "duration_ms",
    "processor_sha256",
];

/// A pool on `backend` with its database created and no job in it (only `seed` creates a
/// database, so one job is seeded in pool `setup`, cancelled and purged; its metrics
/// counters remain, as counters do).
fn empty_pool(backend: Backend, config_yaml: &str) -> Pool {
    empty_pool_via(backend, config_yaml, "setup")
}

/// [`empty_pool`], seeding the job that creates the database in `pool_name`.
fn empty_pool_via(backend: Backend, config_yaml: &str, pool_name: &str) -> Pool {
    let pool = Pool::on(backend, config_yaml);
    pool.ok(&["seed", "--pool", pool_name, "--delay", "1h"]);
    let id = pool.json(&["jobs", "list"])[0]["id"].as_str().unwrap().to_owned();
    pool.ok(&["jobs", "cancel", &id]);
    assert_eq!(pool.json(&["jobs", "purge", "--older-than", "0s", "--status", "cancelled"]), json!({"purged": 1}));
    assert_eq!(total(&pool), 0);
    pool
}

/// How many jobs the pool holds, in every status (from `jobhost status`).
fn total(pool: &Pool) -> u64 {
    let status = pool.status();
    ["pending", "claimed", "completed", "poisoned", "cancelled"].iter().map(|s| jobs_count(&status, s)).sum()
}

/// `jobhost jobs show ID --json`.
fn shown(pool: &Pool, id: &str) -> Value {
    pool.json(&["jobs", "show", id])
}

/// An object's keys, sorted.
fn keys(value: &Value) -> Vec<String> {
    let object = value.as_object().unwrap_or_else(|| panic!("an object, not {value}"));
    let mut keys: Vec<String> = object.keys().cloned().collect();
    keys.sort();
    keys
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    keys.sort();
    keys
}

fn strings(value: &Value) -> Vec<String> {
    let array = value.as_array().unwrap_or_else(|| panic!("an array, not {value}"));
    array.iter().map(|v| v.as_str().unwrap_or_else(|| panic!("a string, not {v}")).to_owned()).collect()
}

fn ms(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("a timestamp in ms, not {value}"))
}

/// A job's `run_at` is the one asked for: the store keeps a future `run_at` as it was sent
/// and compares it with the database's clock.
fn assert_run_at(job: &Value, wanted: i64) {
    let off = ms(&job["run_at"]) - wanted;
    assert!(off.abs() <= 1000, "run_at is {off} ms off the {wanted} asked for: {job}");
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The API's job object without its history, and `jobs show --json` without its attempt
/// history: the same record, which they must agree on.
fn without(value: &Value, keys: &[&str]) -> Value {
    let mut value = value.clone();
    for key in keys {
        value.as_object_mut().unwrap().remove(*key);
    }
    value
}

/// Checks the API's view of job `id` against the CLI's, history included.
fn assert_matches_cli(pool: &Pool, api_job: &Value) {
    let id = api_job["id"].as_str().unwrap();
    let cli = shown(pool, id);
    assert_eq!(
        without(api_job, &["history", "history_cursor"]),
        without(&cli, &["attempt_history"]),
        "GET /api/v1/jobs/{id} vs jobs show"
    );
    let history = api_job["history"].as_array().expect("history is an array");
    let attempts = cli["attempt_history"].as_array().expect("attempt_history is an array");
    assert_eq!(history.len(), attempts.len(), "as many history entries as attempts: {api_job}");
    for (entry, attempt) in history.iter().zip(attempts) {
        assert_eq!(keys(entry), sorted(HISTORY_KEYS), "{entry}");
        assert_eq!(entry, attempt, "a history entry is the attempt as jobs show has it");
    }
}

/// Runs `command`, killing it if it has not exited within `timeout` (a server that should
/// have refused to start would otherwise run forever).
fn run_at_most(mut command: Command, timeout: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn jobhost");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "jobhost did not exit within {timeout:?}:\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `jobhost serve ARGS` (no `--listen` of the harness's, no token unless `env` gives one).
fn serve_command(pool: &Pool, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = pool.command(&["serve"]);
    command.args(args).env_remove("JOBHOST_TOKEN").env_remove("JOBHOST_READ_TOKEN").envs(env.iter().copied());
    command
}

/// Runs `jobhost work ARGS` until it exits (when no job is ready); returns its pid.
fn work(pool: &Pool, args: &[&str]) -> u32 {
    let mut all = vec!["work"];
    all.extend_from_slice(args);
    let worker = pool.spawn_guarded(&all);
    let pid = worker.id();
    let output = worker.wait_at_most(Duration::from_secs(120), "jobhost work draining the pool");
    assert!(output.status.success(), "jobhost {all:?}: {}", String::from_utf8_lossy(&output.stderr));
    pid
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ------------------------------------------------------------------------------------------
// Enqueueing
// ------------------------------------------------------------------------------------------

fn enqueue_one_honours_every_field(backend: Backend) {
    let pool = empty_pool(backend, "retry: {max_attempts: 5, backoff_initial: 0s}\n");
    pool.add_processor("exit3.wat", "exit3");
    let server = pool.serve(&[]);
    let api = Api::new(&server);

    // Defaults: pool default, priority 0, payload {}, retry.max_attempts, ready now.
    let plain = api.enqueue(&json!({"processor": "echo"}));
    let job = api.job(&plain);
    assert_eq!(keys(&job), sorted(&job_keys()), "{job}");
    assert_eq!(
        (&job["pool"], &job["processor"], &job["status"], &job["priority"], &job["attempts"], &job["max_attempts"]),
        (&json!("default"), &json!("echo"), &json!("pending"), &json!(0), &json!(0), &json!(5)),
        "{job}"
    );
    assert_eq!(job["payload"], json!({}), "the payload defaults to {{}}");
    assert_eq!((&job["result"], &job["history"]), (&Value::Null, &json!([])), "{job}");
    let lag = ms(&job["run_at"]) - ms(&job["created_at"]);
    assert!((0..1000).contains(&lag), "without a delay the job is ready when created: {job}");
    assert_matches_cli(&pool, &job);

    // Every field given.
    let payload = json!({"k": [1, "x", null, {"deep": true}], "n": 2.5});
    let delayed = api.enqueue(&json!({
        "processor": "echo", "payload": payload, "pool": "p1", "priority": 7, "max_attempts": 2, "delay": "30s"
    }));
    let job = api.job(&delayed);
    assert_eq!(
        (&job["pool"], &job["priority"], &job["max_attempts"], &job["payload"], &job["status"]),
        (&json!("p1"), &json!(7), &json!(2), &payload, &json!("pending")),
        "{job}"
    );
    let delay = ms(&job["run_at"]) - ms(&job["created_at"]);
    assert!((30_000..32_000).contains(&delay), "delay 30s puts run_at 30 s after created_at, not {delay} ms: {job}");
    assert_matches_cli(&pool, &job);

    // run_at in the future is kept; one in the past means ready now.
    let later_at = now_ms() + 3_600_000;
    let earlier_at = now_ms() - 60_000;
    let later = api.enqueue(&json!({"processor": "echo", "pool": "p2", "run_at": later_at}));
    let earlier = api.enqueue(&json!({"processor": "echo", "pool": "p2", "run_at": earlier_at}));
    assert_run_at(&api.job(&later), later_at);
    let job = api.job(&earlier);
    assert!((earlier_at..=ms(&job["created_at"])).contains(&ms(&job["run_at"])), "ready from {earlier_at}: {job}");
    assert_matches_cli(&pool, &api.job(&later));

    // Delay and run_at decide readiness: the delayed job and the future one wait.
    let p1 = pool.json(&["status", "--pool", "p1"]);
    assert_eq!((jobs_count(&p1, "pending"), &p1["ready"]), (1, &json!(0)), "{p1}");
    let p2 = pool.json(&["status", "--pool", "p2"]);
    assert_eq!((jobs_count(&p2, "pending"), &p2["ready"]), (2, &json!(1)), "{p2}");
    work(&pool, &["--pool", "p2"]);
    assert_eq!(api.job(&earlier)["status"], "completed", "the job whose run_at passed ran");
    assert_eq!(api.job(&later)["status"], "pending", "the job whose run_at is an hour away did not");

    // Priority decides which ready job runs first.
    let low = api.enqueue(&json!({"processor": "echo", "pool": "prio", "priority": 0}));
    let high = api.enqueue(&json!({"processor": "echo", "pool": "prio", "priority": 10}));
    let negative = api.enqueue(&json!({"processor": "echo", "pool": "prio", "priority": -3}));
    work(&pool, &["--pool", "prio", "--once"]);
    assert_eq!(
        [&api.job(&high)["status"], &api.job(&low)["status"], &api.job(&negative)["status"]],
        ["completed", "pending", "pending"],
        "the priority-10 job ran first"
    );
    work(&pool, &["--pool", "prio", "--once"]);
    assert_eq!(api.job(&low)["status"], "completed", "then the priority-0 one");
    assert_eq!(api.job(&negative)["status"], "pending", "and the priority -3 one last");

    // max_attempts decides when a failing job is poisoned (retries are immediate here).
    let once = api.enqueue(&json!({"processor": "exit3", "pool": "fail", "max_attempts": 1}));
    let twice = api.enqueue(&json!({"processor": "exit3", "pool": "fail", "max_attempts": 2}));
    work(&pool, &["--pool", "fail"]);
    let (once, twice) = (api.job(&once), api.job(&twice));
    assert_eq!((&once["status"], &once["attempts"]), (&json!("poisoned"), &json!(1)), "{once}");
    assert_eq!((&twice["status"], &twice["attempts"]), (&json!("poisoned"), &json!(2)), "{twice}");
    assert_matches_cli(&pool, &twice);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: the stored text is read from the file; the server's reading of the body is
/// the same for both backends.
#[test]
fn a_payload_is_stored_exactly_as_sent() {
    let pool = Pool::new("");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let payload = r#"{"n": 12345678901234567890123, "price": 1.10, "text": "\u00e9"}"#;
    let body = format!(r#"{{"processor": "echo", "payload": {payload}}}"#);
    let reply = api.post_raw("/api/v1/jobs", Some("application/json"), body.as_bytes()).expect(201);
    let id = reply["id"].as_str().unwrap().to_owned();
    let batch = format!(r#"{{"jobs": [{{"processor": "echo", "payload": {payload}}}]}}"#);
    let reply = api.post_raw("/api/v1/jobs", Some("application/json"), batch.as_bytes()).expect(201);
    let in_batch = reply["ids"][0].as_str().unwrap().to_owned();
    let db = rusqlite::Connection::open(pool.db()).unwrap();
    for id in [id, in_batch] {
        let stored: String = db.query_row("SELECT payload FROM jobs WHERE id = ?1", [&id], |row| row.get(0)).unwrap();
        assert_eq!(stored, payload, "the processor reads the payload's own text, digits beyond f64 included");
    }
}

fn enqueue_a_batch_returns_the_ids_in_order(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let jobs: Vec<Value> = (0..6)
        .map(|i| {
            json!({
                "processor": "echo", "payload": {"i": i}, "pool": if i % 2 == 0 { "even" } else { "odd" },
                "priority": i * 10, "max_attempts": i + 1
            })
        })
        .collect();
    let ids = api.enqueue_batch(&jobs);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 6, "six different ids: {ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let job = api.job(id);
        assert_eq!(job["payload"], json!({"i": i}), "ids[{i}] is the job sent at index {i}: {job}");
        assert_eq!(
            (&job["pool"], &job["priority"], &job["max_attempts"]),
            (&jobs[i]["pool"], &jobs[i]["priority"], &jobs[i]["max_attempts"]),
            "{job}"
        );
        assert_matches_cli(&pool, &job);
    }
    assert_eq!(total(&pool), 6);

    // A batch of one, and the batch's own delay and run_at.
    let run_at = now_ms() + 7_200_000;
    let more = api.enqueue_batch(&[
        json!({"processor": "echo", "pool": "batch", "delay": "1h"}),
        json!({"processor": "echo", "pool": "batch", "run_at": run_at}),
    ]);
    let delayed = api.job(&more[0]);
    assert!((3_600_000..3_602_000).contains(&(ms(&delayed["run_at"]) - ms(&delayed["created_at"]))), "{delayed}");
    assert_run_at(&api.job(&more[1]), run_at);
    assert_eq!(api.enqueue_batch(&[json!({"processor": "echo"})]).len(), 1);
    assert_eq!(total(&pool), 9);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Reading jobs
// ------------------------------------------------------------------------------------------

fn get_job_shows_every_field_and_its_history_after_a_run(backend: Backend) {
    let pool = empty_pool(backend, "retry: {backoff_initial: 0s}\n");
    pool.add_processor("exit3.wat", "exit3");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let ok = api.enqueue(&json!({"processor": "echo", "payload": {"hello": "world"}}));
    let failing = api.enqueue(&json!({"processor": "exit3", "max_attempts": 2}));
    let before = now_ms();
    work(&pool, &["--host", "api-host"]);
    let after = now_ms();

    let job = api.job(&ok);
    assert_eq!(keys(&job), sorted(&job_keys()), "{job}");
    assert_eq!(
        (&job["status"], &job["attempts"], &job["host"], &job["last_error"], &job["lease_expires_at"]),
        (&json!("completed"), &json!(1), &json!("api-host"), &Value::Null, &Value::Null),
        "{job}"
    );
    assert_eq!(job["result"]["echo"], json!({"hello": "world"}), "the echo processor's result: {job}");
    let worker = job["worker_id"].as_str().expect("the worker that ran it");
    let finished = ms(&job["finished_at"]);
    assert!((before..=after + 1).contains(&finished), "finished while the worker ran: {job}");
    let history = job["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{job}");
    let entry = &history[0];
    assert_eq!(keys(entry), sorted(HISTORY_KEYS), "{entry}");
    assert_eq!(
        (
            &entry["attempt"],
            &entry["worker_id"],
            &entry["host"],
            &entry["outcome"],
            &entry["message"],
            &entry["stderr"]
        ),
        (&json!(1), &json!(worker), &json!("api-host"), &json!("ok"), &Value::Null, &Value::Null),
        "{entry}"
    );
    assert!(ms(&entry["started_at"]) <= ms(&entry["finished_at"]), "{entry}");
    assert!(entry["fuel_used"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["duration_ms"].as_f64().unwrap() >= 0.0, "{entry}");
    let echo = pool.json(&["processors"]).as_array().unwrap().iter().find(|p| p["name"] == "echo").unwrap().clone();
    assert_eq!(entry["processor_sha256"], echo["sha256"], "the attempt names the code that ran: {entry}");
    assert_matches_cli(&pool, &job);

    let job = api.job(&failing);
    assert_eq!((&job["status"], &job["attempts"]), (&json!("poisoned"), &json!(2)), "{job}");
    assert!(job["last_error"].is_string(), "a poisoned job says why: {job}");
    let history = job["history"].as_array().unwrap();
    assert_eq!(history.iter().map(|e| e["attempt"].clone()).collect::<Vec<_>>(), [1, 2], "{job}");
    for entry in history {
        assert_eq!((&entry["outcome"], &entry["host"]), (&json!("exit"), &json!("api-host")), "{entry}");
        assert_eq!(entry["stderr"], "bad input\n", "{entry}");
    }
    assert_matches_cli(&pool, &job);

    api.get(&format!("/api/v1/jobs/{}", uuid::Uuid::new_v4())).expect_error(404, "not_found", None);
    api.get("/api/v1/jobs/not-a-job-id").expect_error(404, "not_found", None);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// The attempt numbers of a list of attempts, in its order.
fn attempt_numbers(attempts: &Value) -> Vec<u64> {
    let attempts = attempts.as_array().unwrap_or_else(|| panic!("an array of attempts, not {attempts}"));
    attempts.iter().map(|attempt| attempt["attempt"].as_u64().expect("an attempt number")).collect()
}

fn a_long_history_is_paged_behind_the_latest_attempts(backend: Backend) {
    let pool = empty_pool(backend, "retry: {backoff_initial: 0s}\n");
    pool.add_processor("exit3.wat", "exit3");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let long = api.enqueue(&json!({"processor": "exit3", "max_attempts": 45}));
    let short = api.enqueue(&json!({"processor": "exit3", "max_attempts": 20}));
    work(&pool, &[]);

    let job = api.job(&long);
    assert_eq!((&job["status"], &job["attempts"]), (&json!("poisoned"), &json!(45)), "{job:.300}");
    assert_eq!(attempt_numbers(&job["history"]), (26..=45).collect::<Vec<_>>(), "the latest 20, oldest first");
    assert_matches_cli(&pool, &job);
    let mut cursor = job["history_cursor"].as_str().expect("older attempts are announced").to_owned();
    let mut older = Vec::new();
    loop {
        let page = api.get(&format!("/api/v1/jobs/{long}/attempts?limit=10&cursor={}", encode(&cursor))).expect(200);
        assert_eq!(keys(&page), ["attempts", "next_cursor"], "{page:.300}");
        for attempt in page["attempts"].as_array().unwrap() {
            assert_eq!(keys(attempt), sorted(HISTORY_KEYS), "{attempt}");
            assert_eq!(attempt["stderr"], "bad input\n", "whole attempts: {attempt}");
        }
        older.extend(attempt_numbers(&page["attempts"]));
        match &page["next_cursor"] {
            Value::String(next) => cursor = next.clone(),
            Value::Null => break,
            other => panic!("next_cursor is a string or null, not {other}"),
        }
    }
    assert_eq!(older, (1..=25).rev().collect::<Vec<_>>(), "every older attempt once, newest first");
    let newest = api.get(&format!("/api/v1/jobs/{long}/attempts")).expect(200);
    assert_eq!(attempt_numbers(&newest["attempts"]), (26..=45).rev().collect::<Vec<_>>(), "20 by default");

    let job = api.job(&short);
    assert_eq!((attempt_numbers(&job["history"]).len(), &job["history_cursor"]), (20, &Value::Null), "all fit");
    let page = api.get(&format!("/api/v1/jobs/{short}/attempts?limit=20")).expect(200);
    assert_eq!((attempt_numbers(&page["attempts"]).len(), &page["next_cursor"]), (20, &Value::Null));

    // The dashboard's job page links to the older attempts, which its attempts page lists.
    let page = api.get(&format!("/jobs/{long}"));
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(page.text.contains(r#"data-attempt="26""#) && !page.text.contains(r#"data-attempt="25""#));
    let link = format!(r#"href="/jobs/{long}/attempts?cursor=a26""#);
    assert!(page.text.contains(&link), "the job page links to older attempts: {}", page.describe());
    let page = api.get(&format!("/jobs/{long}/attempts?cursor=a26"));
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(page.text.contains(r#"data-attempt="25""#) && page.text.contains(r#"data-attempt="6""#));
    assert!(!page.text.contains(r#"data-attempt="26""#) && !page.text.contains(r#"data-attempt="5""#));
    assert!(page.text.contains(&format!(r#"href="/jobs/{long}/attempts?cursor=a6""#)), "and on to the next page");

    let attempts = format!("/api/v1/jobs/{long}/attempts");
    api.get(&format!("{attempts}?limit=0")).expect_error(422, "invalid_field", Some("limit"));
    api.get(&format!("{attempts}?limit=101")).expect_error(422, "invalid_field", Some("limit"));
    api.get(&format!("{attempts}?cursor=j5")).expect_error(422, "invalid_field", Some("cursor"));
    api.get(&format!("{attempts}?after=a5")).expect_error(422, "invalid_field", None);
    api.get(&format!("/api/v1/jobs/{}/attempts", uuid::Uuid::new_v4())).expect_error(404, "not_found", None);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn list_filters_and_walks_every_page_once(backend: Backend) {
    let pool = empty_pool(backend, "");
    pool.add_processor("exit0.wat", "exit0");
    let server = pool.serve(&[]);
    let api = Api::new(&server);

    // Batch A, then (once the clock has moved on) batch B, so a time lies strictly between.
    let a = api.enqueue_batch(&[
        json!({"processor": "echo", "pool": "a"}),
        json!({"processor": "echo", "pool": "a"}),
        json!({"processor": "echo", "pool": "a"}),
        json!({"processor": "exit0", "pool": "b"}),
        json!({"processor": "exit0", "pool": "b"}),
    ]);
    let a_last = a.iter().map(|id| ms(&api.job(id)["created_at"])).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_ms() < a_last + 2 {
        assert!(Instant::now() < deadline, "the clock does not move");
        std::thread::sleep(Duration::from_millis(1));
    }
    let b = api.enqueue_batch(&[json!({"processor": "echo", "pool": "a"}), json!({"processor": "echo", "pool": "a"})]);
    let b_first = b.iter().map(|id| ms(&api.job(id)["created_at"])).min().unwrap();
    assert!(b_first >= a_last + 2, "batch B was created after batch A, {a_last} < {b_first}");
    let between = a_last + 1;
    api.post_empty(&format!("/api/v1/jobs/{}/cancel", b[0])).expect(200);

    let set = |ids: &[String]| ids.iter().cloned().collect::<BTreeSet<_>>();
    let listed = |query: &str| set(&api.list_ids(query));
    let all: BTreeSet<String> = a.iter().chain(&b).cloned().collect();
    assert_eq!(listed(""), all);
    assert_eq!(listed("pool=a"), set(&[&a[..3], &b[..]].concat()));
    assert_eq!(listed("pool=b"), set(&a[3..]));
    assert_eq!(listed("pool=nope"), BTreeSet::new());
    assert_eq!(listed("processor=exit0"), set(&a[3..]));
    assert_eq!(listed("processor=echo"), set(&[&a[..3], &b[..]].concat()));
    assert_eq!(listed("status=cancelled"), set(&b[..1]));
    assert_eq!(listed("status=pending&pool=a"), set(&[&a[..3], &b[1..]].concat()));
    assert_eq!(listed("status=completed"), BTreeSet::new());
    assert_eq!(listed(&format!("created_after={between}")), set(&b));
    assert_eq!(listed(&format!("created_before={between}")), set(&a));
    assert_eq!(listed(&format!("created_after={between}&status=pending")), set(&b[1..]));
    assert_eq!(listed(&format!("created_before={between}&pool=a&processor=echo")), set(&a[..3]));

    // Newest first.
    let (jobs, _) = api.list("limit=1000");
    let created: Vec<i64> = jobs.iter().map(|job| ms(&job["created_at"])).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first: {created:?}");
    assert_eq!(set(&api.list_ids("")[..2]), set(&b), "batch B, the newest, comes first");
    // A listed job is the job's record without payload/result/history.
    for job in &jobs {
        let full = api.job(job["id"].as_str().unwrap());
        for key in SUMMARY_KEYS {
            assert_eq!(job[*key], full[*key], "{key} of a listed job");
        }
    }

    // The default limit is 50, and cursor pages walk all 55 jobs of a pool exactly once, in
    // the order of one big page, even with a newer job enqueued in the middle of the walk.
    let many: Vec<String> = api.enqueue_batch(&vec![json!({"processor": "echo", "pool": "many"}); 55]);
    let (page, cursor) = api.list("pool=many");
    assert_eq!(page.len(), 50, "the default limit is 50");
    assert!(cursor.is_some(), "a next page is there");
    let one_page = api.list_ids("pool=many");
    assert_eq!(set(&one_page), set(&many));
    let mut walked: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            None => "pool=many&limit=7".to_owned(),
            Some(cursor) => format!("pool=many&limit=7&cursor={}", encode(cursor)),
        };
        let (page, next) = api.list(&query);
        pages += 1;
        assert!(page.len() <= 7, "limit 7 gives at most 7 jobs");
        walked.extend(page.iter().map(|job| job["id"].as_str().unwrap().to_owned()));
        if pages == 1 {
            api.enqueue(&json!({"processor": "echo", "pool": "many"}));
        }
        match next {
            Some(next) => {
                assert!(!page.is_empty(), "a page with a next cursor is not empty");
                cursor = Some(next);
            }
            None => break,
        }
        assert!(pages <= 20, "the walk ends");
    }
    assert_eq!(walked, one_page, "the pages, in order, are the one big page: no duplicate, none missing");
    assert!((8..=9).contains(&pages), "55 jobs in pages of 7 (and perhaps an empty last one): {pages}");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Retrying and cancelling
// ------------------------------------------------------------------------------------------

fn retry_and_cancel_one_job(backend: Backend) {
    let pool = empty_pool(backend, "");
    pool.add_processor("exit3.wat", "exit3");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let pending = api.enqueue(&json!({"processor": "echo", "pool": "p", "delay": "1h"}));
    let done = api.enqueue(&json!({"processor": "echo"}));
    let poisoned = api.enqueue(&json!({"processor": "exit3", "max_attempts": 1}));
    work(&pool, &[]);
    assert_eq!((&api.job(&done)["status"], &api.job(&poisoned)["status"]), (&json!("completed"), &json!("poisoned")));

    let cancel = |id: &str| api.post_empty(&format!("/api/v1/jobs/{id}/cancel"));
    let retry = |id: &str| api.post_empty(&format!("/api/v1/jobs/{id}/retry"));

    assert_eq!(cancel(&pending).expect(200), json!({"id": pending, "status": "cancelled"}));
    assert_eq!(shown(&pool, &pending)["status"], "cancelled");
    cancel(&pending).expect_error(409, "wrong_status", None);
    assert_eq!(retry(&pending).expect(200), json!({"id": pending, "status": "pending"}));
    assert_eq!(shown(&pool, &pending)["status"], "pending");
    retry(&pending).expect_error(409, "wrong_status", None);

    cancel(&done).expect_error(409, "wrong_status", None);
    retry(&done).expect_error(409, "wrong_status", None);
    assert_eq!(shown(&pool, &done)["status"], "completed", "a refused job is left as it was");

    assert_eq!(retry(&poisoned).expect(200), json!({"id": poisoned, "status": "pending"}));
    assert_eq!(shown(&pool, &poisoned)["status"], "pending");
    cancel(&poisoned).expect(200);

    let unknown = uuid::Uuid::new_v4().to_string();
    cancel(&unknown).expect_error(404, "not_found", None);
    retry(&unknown).expect_error(404, "not_found", None);
    assert_eq!(total(&pool), 3);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn bulk_retry_and_cancel_by_ids_and_by_filter(backend: Backend) {
    let pool = empty_pool(backend, "");
    pool.add_processor("exit0.wat", "exit0");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let done = api.enqueue(&json!({"processor": "echo"}));
    work(&pool, &[]);
    let x = api.enqueue_batch(&[
        json!({"processor": "echo", "pool": "x", "delay": "1h"}),
        json!({"processor": "echo", "pool": "x", "delay": "1h"}),
    ]);
    let unknown = uuid::Uuid::new_v4().to_string();

    let sorted_ids = |value: &Value| {
        let mut ids = strings(value);
        ids.sort();
        ids
    };
    let refusals = |value: &Value| {
        let mut refused: Vec<(String, String)> = value
            .as_array()
            .unwrap_or_else(|| panic!("refused is an array: {value}"))
            .iter()
            .map(|r| {
                assert_eq!(keys(r), ["code", "id", "message"], "{r}");
                (r["id"].as_str().unwrap().to_owned(), r["code"].as_str().unwrap().to_owned())
            })
            .collect();
        refused.sort();
        refused
    };
    let expect_refused = |pairs: &[(&str, &str)]| {
        let mut pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        pairs.sort();
        pairs
    };

    // By ids: the pending ones are cancelled, the others refused with their reason.
    let body = api.post("/api/v1/jobs/cancel", &json!({"ids": [x[0], done, unknown, x[1]]})).expect(200);
    assert_eq!(keys(&body), ["count", "done", "refused"], "{body}");
    assert_eq!(body["count"], 2, "{body}");
    assert_eq!(sorted_ids(&body["done"]), sorted_ids(&json!(x)));
    assert_eq!(refusals(&body["refused"]), expect_refused(&[(&done, "wrong_status"), (&unknown, "not_found")]));
    assert_eq!(
        (&shown(&pool, &x[0])["status"], &shown(&pool, &x[1])["status"]),
        (&json!("cancelled"), &json!("cancelled"))
    );
    assert_eq!(shown(&pool, &done)["status"], "completed");

    let body = api.post("/api/v1/jobs/retry", &json!({"ids": [x[0], x[1], done]})).expect(200);
    assert_eq!(body["count"], 2, "{body}");
    assert_eq!(sorted_ids(&body["done"]), sorted_ids(&json!(x)));
    assert_eq!(refusals(&body["refused"]), expect_refused(&[(&done, "wrong_status")]));
    assert_eq!(
        (&shown(&pool, &x[0])["status"], &shown(&pool, &x[1])["status"]),
        (&json!("pending"), &json!("pending"))
    );

    // By filter: only the matching jobs in a status the action applies to.
    let y = api.enqueue_batch(&[
        json!({"processor": "echo", "pool": "y", "delay": "1h"}),
        json!({"processor": "echo", "pool": "y", "delay": "1h"}),
        json!({"processor": "exit0", "pool": "y", "delay": "1h"}),
    ]);
    assert_eq!(api.post("/api/v1/jobs/cancel", &json!({"filter": {"pool": "y"}})).expect(200), json!({"count": 3}));
    for id in &y {
        assert_eq!(shown(&pool, id)["status"], "cancelled");
    }
    assert_eq!(shown(&pool, &x[0])["status"], "pending", "pool x is not in the filter");
    assert_eq!(api.post("/api/v1/jobs/cancel", &json!({"filter": {"pool": "y"}})).expect(200), json!({"count": 0}));
    let body = api.post("/api/v1/jobs/retry", &json!({"filter": {"pool": "y", "processor": "exit0"}})).expect(200);
    assert_eq!(body, json!({"count": 1}));
    assert_eq!(
        (&shown(&pool, &y[2])["status"], &shown(&pool, &y[0])["status"]),
        (&json!("pending"), &json!("cancelled"))
    );
    let body = api.post("/api/v1/jobs/retry", &json!({"filter": {"status": "cancelled"}})).expect(200);
    assert_eq!(body, json!({"count": 2}), "the two cancelled echo jobs of pool y");
    assert_eq!(shown(&pool, &done)["status"], "completed", "a completed job is never retried");

    // By time: only the jobs created after a point.
    let newest = y.iter().map(|id| ms(&shown(&pool, id)["created_at"])).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_ms() < newest + 2 {
        assert!(Instant::now() < deadline, "the clock does not move");
        std::thread::sleep(Duration::from_millis(1));
    }
    let z = api.enqueue(&json!({"processor": "echo", "pool": "z", "delay": "1h"}));
    let body = api.post("/api/v1/jobs/cancel", &json!({"filter": {"created_after": newest + 1}})).expect(200);
    assert_eq!(body, json!({"count": 1}), "only z was created after {newest}");
    assert_eq!(shown(&pool, &z)["status"], "cancelled");
    let body = api.post("/api/v1/jobs/cancel", &json!({"filter": {"created_before": newest + 1}})).expect(200);
    assert_eq!(body, json!({"count": 5}), "x's two and y's three");
    assert_eq!(
        pool.status()["jobs"],
        json!({"pending": 0, "claimed": 0, "completed": 1, "poisoned": 0, "cancelled": 6})
    );
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Status, pools, workers, processors, OpenAPI
// ------------------------------------------------------------------------------------------

/// Only finished and delayed jobs, so `oldest_ready_age_ms` is null and nothing in either
/// answer depends on when it is computed.
fn status_is_exactly_the_clis(backend: Backend) {
    let pool = empty_pool(backend, "");
    pool.add_processor("exit3.wat", "exit3");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    api.enqueue_batch(&[
        json!({"processor": "echo"}),
        json!({"processor": "echo"}),
        json!({"processor": "exit3", "max_attempts": 1}),
    ]);
    work(&pool, &["--host", "status-host"]);
    api.enqueue_batch(&[json!({"processor": "echo", "delay": "1h"}), json!({"processor": "echo", "delay": "1h"})]);
    let other = api.enqueue(&json!({"processor": "echo", "pool": "other", "delay": "1h"}));
    api.enqueue(&json!({"processor": "echo", "pool": "other", "delay": "1h"}));
    api.post_empty(&format!("/api/v1/jobs/{other}/cancel")).expect(200);

    let cli = pool.status();
    assert_eq!(cli["oldest_ready_age_ms"], Value::Null, "no job is ready: {cli}");
    assert_eq!(api.get("/api/v1/status").expect(200), cli);
    assert_eq!(api.get("/api/v1/status?pool=other").expect(200), pool.json(&["status", "--pool", "other"]));
    assert_eq!(api.get("/api/v1/status?pool=default").expect(200), pool.json(&["status", "--pool", "default"]));
    assert_eq!(api.get("/api/v1/status?pool=nope").expect(200), pool.json(&["status", "--pool", "nope"]));
    assert_eq!(cli["jobs"], json!({"pending": 3, "claimed": 0, "completed": 2, "poisoned": 1, "cancelled": 1}));
    assert_eq!(cli["hosts"]["status-host"]["terminated"], 1, "{cli}");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn pools_lists_every_pool(backend: Backend) {
    // The job that creates the database goes to `default`, which is listed anyway.
    let pool = empty_pool_via(backend, "", "default");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    api.enqueue(&json!({"processor": "echo"}));
    work(&pool, &[]);
    let enqueued = Instant::now();
    api.enqueue_batch(&[json!({"processor": "echo"}), json!({"processor": "echo"})]);
    api.enqueue(&json!({"processor": "echo", "pool": "later", "delay": "1h"}));

    let body = api.get("/api/v1/pools").expect(200);
    assert_eq!(keys(&body), ["pools"], "{body}");
    let mut pools = body["pools"].as_array().unwrap().clone();
    pools.sort_by_key(|p| p["pool"].as_str().unwrap().to_owned());
    assert_eq!(pools.len(), 2, "{body}");
    for entry in &pools {
        assert_eq!(
            keys(entry),
            ["jobs", "oldest_ready_age_ms", "paused", "paused_at", "paused_reason", "pool", "ready"],
            "{entry}"
        );
        let name = entry["pool"].as_str().unwrap();
        let cli = pool.json(&["status", "--pool", name]);
        assert_eq!((&entry["jobs"], &entry["ready"]), (&cli["jobs"], &cli["ready"]), "pool {name} as status says");
    }
    assert_eq!(pools[0]["pool"], "default");
    assert_eq!(pools[0]["jobs"], json!({"pending": 2, "claimed": 0, "completed": 1, "poisoned": 0, "cancelled": 0}));
    assert_eq!(pools[0]["ready"], 2);
    let age = pools[0]["oldest_ready_age_ms"].as_i64().expect("the default pool has ready jobs, so an age");
    let bound = enqueued.elapsed().as_millis() as i64 + 1;
    assert!((0..=bound).contains(&age), "the oldest ready job is {age} ms old, enqueued {bound} ms ago");
    assert_eq!(
        pools[1],
        json!({"pool": "later", "jobs": {"pending": 1, "claimed": 0, "completed": 0, "poisoned": 0, "cancelled": 0},
               "ready": 0, "oldest_ready_age_ms": null, "paused": false, "paused_at": null, "paused_reason": null})
    );
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// Pausing and resuming over the API: the pool as listed after each, the same pause in
/// `pools`, `status` and `/metrics`, a worker that leaves the paused pool's jobs alone, and
/// bad names and reasons refused by name with nothing changed.
fn pools_are_paused_and_resumed_over_the_api(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "pool": "billing"}));

    let long = "p".repeat(129);
    let refusals = [
        ("/api/v1/pools/billing/pause".to_owned(), json!({"reason": "two\nlines"}), "reason", "on one line"),
        ("/api/v1/pools/billing/pause".to_owned(), json!({"reason": "x".repeat(1025)}), "reason", "at most 1024 bytes"),
        ("/api/v1/pools/billing/pause".to_owned(), json!({"why": "typo"}), "why", "unknown field"),
        (format!("/api/v1/pools/{long}/pause"), json!({}), "pool", "pool"),
        (format!("/api/v1/pools/{long}/resume"), json!({}), "pool", "pool"),
        ("/api/v1/pools/line%0Abreak/pause".to_owned(), json!({}), "pool", "pool"),
    ];
    for (path, body, field, expected) in &refusals {
        let refused = api.post(path, body).expect_error(422, "invalid_field", Some(field));
        assert!(refused["message"].as_str().unwrap().contains(expected), "{path} {body}: {refused}");
    }
    assert_eq!(api.get("/api/v1/status").expect(200)["paused_pools"], json!([]), "refusals paused nothing");

    let paused = api.post("/api/v1/pools/billing/pause", &json!({"reason": "card processor down"})).expect(200);
    assert_eq!((&paused["pool"], &paused["paused"]), (&json!("billing"), &json!(true)), "{paused}");
    assert_eq!(paused["paused_reason"], "card processor down");
    let paused_at = paused["paused_at"].as_i64().expect("when it was paused");
    assert!((now_ms() - 60_000..=now_ms()).contains(&paused_at), "paused at {paused_at}, just now");
    // A pool with no jobs yet can be paused too, and an empty body is no reason.
    let quiet = api.post_empty("/api/v1/pools/quiet/pause").expect(200);
    assert_eq!((&quiet["paused"], &quiet["paused_reason"]), (&json!(true), &Value::Null), "{quiet}");

    // How long the ready job has waited grows between answers; the rest must agree.
    let timeless = |pools: &Value| -> Vec<Value> {
        pools["pools"].as_array().unwrap().iter().map(|p| without(p, &["oldest_ready_age_ms"])).collect()
    };
    let listed = timeless(&api.get("/api/v1/pools").expect(200));
    assert_eq!(listed, timeless(&pool.json(&["pools"])), "the API lists the pools as `jobhost pools --json` does");
    let paused = without(&paused, &["oldest_ready_age_ms"]);
    assert_eq!(listed, [paused.clone(), without(&quiet, &["oldest_ready_age_ms"])]);
    assert_eq!(
        api.get("/api/v1/status").expect(200)["paused_pools"],
        json!([{"pool": "billing", "paused_at": paused_at, "reason": "card processor down"},
               {"pool": "quiet", "paused_at": quiet["paused_at"], "reason": null}])
    );
    let metrics = api.metrics();
    assert_eq!(metrics.get("jobhost_pool_paused", &[("pool", "billing")]), 1.0);
    assert_eq!(metrics.get("jobhost_pool_paused", &[("pool", "quiet")]), 1.0);

    work(&pool, &["--pool", "billing"]);
    assert_eq!(api.job(&id)["status"], "pending", "a worker claims nothing from a paused pool");

    let again = api.post("/api/v1/pools/billing/pause", &json!({})).expect(200);
    assert_eq!(without(&again, &["oldest_ready_age_ms"]), paused, "pausing a paused pool keeps when and why");
    let resumed = api.post_empty("/api/v1/pools/billing/resume").expect(200);
    assert_eq!(
        (&resumed["paused"], &resumed["paused_at"], &resumed["paused_reason"]),
        (&json!(false), &Value::Null, &Value::Null)
    );
    let resumed_again = api.post_empty("/api/v1/pools/billing/resume").expect(200);
    assert_eq!(without(&resumed_again, &["oldest_ready_age_ms"]), without(&resumed, &["oldest_ready_age_ms"]));
    assert_eq!(api.metrics().get("jobhost_pool_paused", &[("pool", "billing")]), 0.0);
    work(&pool, &["--pool", "billing"]);
    assert_eq!(api.job(&id)["status"], "completed", "once resumed, its jobs run");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn workers_lists_a_finished_worker_with_its_host_and_pid(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    assert_eq!(api.get("/api/v1/workers").expect(200), json!({"workers": []}));
    let id = api.enqueue(&json!({"processor": "echo"}));
    let before = now_ms();
    let pid = work(&pool, &["--host", "worker-host"]);
    let after = now_ms();
    let worker_id = api.job(&id)["worker_id"].as_str().unwrap().to_owned();

    let body = api.get("/api/v1/workers").expect(200);
    assert_eq!(keys(&body), ["workers"], "{body}");
    let workers = body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{body}");
    let worker = &workers[0];
    assert_eq!(
        keys(worker),
        sorted(&[
            "id",
            "pool",
            "status",
            "host",
            "pid",
            "started_at",
            "last_heartbeat_at",
            "stopped_at",
            "current_jobs"
        ]),
        "{worker}"
    );
    assert_eq!(
        (&worker["id"], &worker["pool"], &worker["status"], &worker["host"], &worker["pid"], &worker["current_jobs"]),
        (&json!(worker_id), &json!("default"), &json!("terminated"), &json!("worker-host"), &json!(pid), &json!([])),
        "{worker}"
    );
    let (started, beat, stopped) =
        (ms(&worker["started_at"]), ms(&worker["last_heartbeat_at"]), ms(&worker["stopped_at"]));
    assert!(before <= started && started <= beat && beat <= stopped && stopped <= after + 1, "{worker}");

    let count =
        |query: &str| api.get(&format!("/api/v1/workers?{query}")).expect(200)["workers"].as_array().unwrap().len();
    assert_eq!(count("status=terminated"), 1);
    assert_eq!(count("status=active"), 0);
    assert_eq!(count("pool=default"), 1);
    assert_eq!(count("pool=other"), 0);
    assert_eq!(count("pool=default&status=terminated"), 1);
    api.get("/api/v1/workers?status=sleepy").expect_error(422, "invalid_field", Some("status"));
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: the processors come from this host's folder, not from the database.
#[test]
fn processors_lists_what_the_cli_lists_broken_ones_included() {
    let pool = empty_pool(Backend::Sqlite, "");
    pool.add_processor("no_start.wat", "broken");
    pool.add_processor("exit0.wat", "exit0");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let body = api.get("/api/v1/processors").expect(200);
    assert_eq!(body, json!({"processors": pool.json(&["processors"])}));
    let list = body["processors"].as_array().unwrap();
    let named = |name: &str| list.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} in {body}"));
    assert_eq!((&named("echo")["status"], &named("echo")["source"]), (&json!("ok"), &json!("built-in")));
    assert_eq!(named("exit0")["status"], "ok");
    assert_eq!(named("broken")["status"], "broken");
    let error = named("broken")["error"].as_str().expect("a broken processor says why");
    assert!(error.contains("_start"), "{error}");

    // Dropped in while the server runs: listed at once.
    pool.add_processor("exit3.wat", "late");
    let body = api.get("/api/v1/processors").expect(200);
    assert!(body["processors"].as_array().unwrap().iter().any(|p| p["name"] == "late"), "{body}");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// The server's own failures are told to clients without its paths: the log has those.
#[test]
fn a_processors_folder_that_cannot_be_read_is_a_500_that_names_no_path() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let folder = pool.path("processors");
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, "not a folder").unwrap();
    let folder = folder.display().to_string();
    for reply in [api.get("/api/v1/processors"), api.post("/api/v1/jobs", &json!({"processor": "echo"}))] {
        let error = reply.expect_error(500, "internal", None);
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("the server's log says why") && !message.contains(&folder), "{error}");
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: the processors come from this host's folder, not from the database.
#[test]
fn the_processors_listing_is_made_once_per_version_of_the_folder() {
    let pool = empty_pool(Backend::Sqlite, "");
    pool.add_processor("exit0.wat", "exit0");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let listings = || api.metrics().get("jobhost_server_processor_listings_total", &[]);
    let status_of = |body: &Value, name: &str| {
        let list = body["processors"].as_array().unwrap();
        list.iter().find(|p| p["name"] == name).map(|p| p["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(listings(), 0.0);

    // Callers that come together share one listing.
    let first: Vec<Value> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8).map(|_| scope.spawn(|| api.get("/api/v1/processors").expect(200))).collect();
        calls.into_iter().map(|call| call.join().unwrap()).collect()
    });
    assert!(first.iter().all(|body| *body == first[0]), "every caller gets the same listing");
    assert_eq!(status_of(&first[0], "exit0").as_deref(), Some("ok"));
    assert_eq!(listings(), 1.0, "eight callers at once, one listing");
    // Asked again (the dashboard's page too) with nothing changed: nothing is loaded again.
    assert_eq!(api.get("/api/v1/processors").expect(200), first[0]);
    assert_eq!(api.get("/processors").status, 200);
    assert_eq!(listings(), 1.0, "nothing changed, nothing loaded");

    // A changed file, a new one and a removed one are each seen at once.
    pool.add_processor("no_start.wat", "exit0");
    assert_eq!(status_of(&api.get("/api/v1/processors").expect(200), "exit0").as_deref(), Some("broken"));
    pool.add_processor("exit3.wat", "late");
    assert_eq!(status_of(&api.get("/api/v1/processors").expect(200), "late").as_deref(), Some("ok"));
    std::fs::remove_file(pool.path("processors/late.wasm")).unwrap();
    assert_eq!(status_of(&api.get("/api/v1/processors").expect(200), "late"), None);
    assert_eq!(listings(), 4.0, "one listing per change");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: the document describes the server, whatever the database.
#[test]
fn openapi_document_lists_every_endpoint() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let document = api.get("/api/v1/openapi.json").expect(200);
    let version = document["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1"), "the contract promises OpenAPI 3.1, not {version}");
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string(), "{document:.500}");
    let paths = document["paths"].as_object().expect("paths");
    // Paths may be written in full or relative to a server URL ending in /api/v1.
    let prefix = match document["servers"].as_array().and_then(|s| s.first()).and_then(|s| s["url"].as_str()) {
        Some(url) if url.trim_end_matches('/').ends_with("/api/v1") => "",
        _ => "/api/v1",
    };
    let endpoints: &[(&str, &[&str])] = &[
        ("/jobs", &["get", "post"]),
        ("/jobs/{id}", &["get"]),
        ("/jobs/{id}/attempts", &["get"]),
        ("/jobs/{id}/retry", &["post"]),
        ("/jobs/{id}/cancel", &["post"]),
        ("/jobs/retry", &["post"]),
        ("/jobs/cancel", &["post"]),
        ("/status", &["get"]),
        ("/pools", &["get"]),
        ("/pools/{pool}/pause", &["post"]),
        ("/pools/{pool}/resume", &["post"]),
        ("/limits", &["get"]),
        ("/workers", &["get"]),
        ("/processors", &["get"]),
        ("/schedules", &["get"]),
    ];
    for (path, methods) in endpoints {
        let full = format!("{prefix}{path}");
        let item = paths
            .get(&full)
            .unwrap_or_else(|| panic!("{full} is not in the document's paths: {:?}", paths.keys().collect::<Vec<_>>()));
        for method in *methods {
            assert!(item.get(*method).is_some(), "{full} has no {method} operation: {item}");
        }
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Metrics and health
// ------------------------------------------------------------------------------------------

fn metrics_report_a_known_state(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let done = api.enqueue_batch(&vec![json!({"processor": "echo", "pool": "done"}); 2]);
    work(&pool, &["--pool", "done", "--host", "metrics-host"]);
    let enqueued = Instant::now();
    api.enqueue_batch(&vec![json!({"processor": "echo"}); 3]);
    let attempts: Vec<Value> = done.iter().map(|id| api.job(id)["history"][0].clone()).collect();
    let fuel: u64 = attempts.iter().map(|a| a["fuel_used"].as_u64().unwrap()).sum();
    let seconds: f64 = attempts.iter().map(|a| a["duration_ms"].as_f64().unwrap()).sum::<f64>() / 1000.0;

    let reply = api.get("/metrics");
    assert_eq!(reply.status, 200, "{}", reply.describe());
    let content_type = reply.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("application/openmetrics-text"), "OpenMetrics text, not {content_type:?}");
    assert_eq!(reply.text.lines().last(), Some("# EOF"), "OpenMetrics text ends with # EOF");
    let metrics = Metrics::parse(&reply.text);

    // Every (pool, status) pair reported has its true count; the non-zero ones are there.
    let expected = |pool: &str, status: &str| match (pool, status) {
        ("default", "pending") => 3.0,
        ("done", "completed") => 2.0,
        _ => 0.0,
    };
    for (labels, value) in metrics.all("jobhost_jobs") {
        assert_eq!(value, expected(&labels["pool"], &labels["status"]), "jobhost_jobs{labels:?}");
    }
    assert_eq!(metrics.get("jobhost_jobs", &[("pool", "default"), ("status", "pending")]), 3.0);
    assert_eq!(metrics.get("jobhost_jobs", &[("pool", "done"), ("status", "completed")]), 2.0);
    assert_eq!(metrics.get("jobhost_ready_jobs", &[("pool", "default")]), 3.0);
    assert_eq!(metrics.value("jobhost_ready_jobs", &[("pool", "done")]).unwrap_or(0.0), 0.0);
    let age = metrics.get("jobhost_oldest_ready_age_seconds", &[("pool", "default")]);
    let bound = enqueued.elapsed().as_secs_f64() + 0.002;
    assert!((0.0..=bound).contains(&age), "the oldest ready job is {age} s old, enqueued {bound} s ago");
    assert_eq!(metrics.get("jobhost_workers", &[("host", "metrics-host"), ("status", "terminated")]), 1.0);
    for (labels, value) in metrics.all("jobhost_workers") {
        let expected = if labels["status"] == "terminated" { 1.0 } else { 0.0 };
        assert_eq!(value, expected, "jobhost_workers{labels:?}");
    }
    let echo_done = [("pool", "done"), ("processor", "echo")];
    assert_eq!(metrics.get("jobhost_attempts_total", &[echo_done[0], echo_done[1], ("outcome", "ok")]), 2.0);
    for histogram in ["jobhost_attempt_duration_seconds", "jobhost_attempt_fuel"] {
        assert_eq!(metrics.get(&format!("{histogram}_count"), &echo_done), 2.0, "{histogram}");
        assert!(reply.text.contains(&format!("# TYPE {histogram} histogram")), "{histogram} is a histogram");
    }
    assert_eq!(metrics.get("jobhost_attempt_fuel_sum", &echo_done), fuel as f64, "the fuel the two attempts used");
    let duration = metrics.get("jobhost_attempt_duration_seconds_sum", &echo_done);
    assert!((duration - seconds).abs() < 1e-6, "the two attempts took {seconds} s, not {duration}");
    assert_eq!(metrics.get("jobhost_enqueued_jobs_total", &[("pool", "default"), ("processor", "echo")]), 3.0);
    assert_eq!(metrics.get("jobhost_enqueued_jobs_total", &echo_done), 2.0);
    assert_eq!(metrics.get("jobhost_claims_total", &[("pool", "done")]), 2.0);
    assert_eq!(metrics.get("jobhost_server_waiters", &[]), 0.0);
    let queries = metrics.get("jobhost_server_store_queries_total", &[]);
    assert!(queries > 0.0, "this server has queried the database");
    api.get("/api/v1/status").expect(200);
    let again = api.metrics().get("jobhost_server_store_queries_total", &[]);
    assert!(again > queries, "a status request and a scrape query the database: {queries} then {again}");

    // A long-poll in flight is a waiter.
    let id = api.enqueue(&json!({"processor": "echo", "pool": "idle"}));
    let poller = api.clone();
    let poll = std::thread::spawn(move || poller.get(&format!("/api/v1/jobs/{id}?wait=2s")));
    api.wait_for_waiters(1.0);
    poll.join().unwrap().expect(200);
    api.wait_for_waiters(0.0);

    assert_eq!(api.get("/healthz").status, 200);
    assert_eq!(api.get("/healthz").text.trim(), "ok");

    // Histogram buckets are cumulative and end with le="+Inf", as OpenMetrics spells it.
    for histogram in ["jobhost_attempt_duration_seconds", "jobhost_attempt_fuel"] {
        let mut buckets: Vec<(f64, f64)> = metrics
            .all(&format!("{histogram}_bucket"))
            .into_iter()
            .filter(|(labels, _)| labels["pool"] == "done" && labels["processor"] == "echo")
            .map(|(labels, count)| (labels["le"].parse::<f64>().unwrap_or(f64::NAN), count))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{histogram} buckets are cumulative: {buckets:?}");
        let inf = [echo_done[0], echo_done[1], ("le", "+Inf")];
        assert_eq!(metrics.get(&format!("{histogram}_bucket"), &inf), 2.0, "{histogram}");
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: escaping label values is the HTTP layer's, whatever the database.
#[test]
fn metric_labels_are_escaped_so_no_pool_name_breaks_the_scrape() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let names = [r#"x",status="y"#, r"back\slash", r#"\"both\"#];
    for name in names {
        api.enqueue(&json!({"processor": "echo", "pool": name, "delay": "1h"}));
    }
    let metrics = api.metrics();
    for name in names {
        assert_eq!(metrics.get("jobhost_jobs", &[("pool", name), ("status", "pending")]), 1.0, "{}", metrics.text);
        assert_eq!(metrics.get("jobhost_ready_jobs", &[("pool", name)]), 0.0);
    }
    for line in metrics.text.lines().filter(|line| line.contains("pool=")) {
        let labels = line.split_once('{').and_then(|(_, rest)| rest.rsplit_once('}')).map_or("", |(labels, _)| labels);
        assert!(labels.matches("status=\"").count() <= 1, "one status label per sample: {line}");
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: a database file that is gone is the simplest database that stops answering.
#[test]
fn readiness_tells_a_live_server_from_one_without_its_database() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let ready = api.get("/readyz");
    assert_eq!((ready.status, ready.text.trim()), (200, "ready"), "{}", ready.describe());

    std::fs::rename(pool.db(), pool.path("moved-away.db")).unwrap();
    let error = api.get("/readyz").expect_error(503, "unavailable", None);
    let message = error["message"].as_str().unwrap();
    assert!(!message.contains("moved-away") && !message.contains(".db"), "an open probe names no file: {message}");
    let live = api.get("/healthz");
    assert_eq!((live.status, live.text.trim()), (200, "ok"), "the process itself is alive");

    std::fs::rename(pool.path("moved-away.db"), pool.db()).unwrap();
    assert_eq!(api.get("/readyz").status, 200, "ready again once the database is back");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: its write lock is one per file, held here by another process than the server.
/// A POST waits for it all the time another connection (this test's) holds it; the server
/// must still answer `/healthz` at once, and reads and the dashboard before the lock is free.
#[test]
fn a_write_waiting_for_another_process_lock_stalls_neither_healthz_nor_reads() {
    const HOLD: Duration = Duration::from_secs(5);
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    let reads = ["/healthz".to_owned(), format!("/api/v1/jobs/{id}"), "/".to_owned()];

    let holder = rusqlite::Connection::open(pool.db()).unwrap();
    holder.busy_timeout(Duration::from_secs(10)).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let held = Instant::now();
    let post = std::thread::spawn({
        let api = api.clone();
        move || {
            let reply = api.post("/api/v1/jobs", &json!({"processor": "echo", "payload": {"after": "the lock"}}));
            (reply, Instant::now())
        }
    });
    let mut rounds = 0;
    while held.elapsed() < HOLD {
        for path in &reads {
            let asked = Instant::now();
            let reply = api.get(path);
            let took = asked.elapsed();
            assert_eq!(reply.status, 200, "{}", reply.describe());
            if path == "/healthz" {
                assert!(took < Duration::from_millis(100), "/healthz took {took:?} while a write waited for the lock");
            }
        }
        assert!(!post.is_finished(), "the POST cannot be answered while the lock is held");
        rounds += 1;
        // Pacing only: the rounds spread over the whole time the lock is held.
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.execute_batch("COMMIT").unwrap();
    let released = Instant::now();
    let (reply, answered) = post.join().unwrap();
    let posted = reply.expect(201);
    assert!(answered >= released, "the POST was answered only once the lock was free");
    assert!(rounds > 10, "the server was probed all the time the lock was held ({rounds} rounds)");
    let job = api.get(&format!("/api/v1/jobs/{}", posted["id"].as_str().unwrap())).expect(200);
    assert_eq!(job["payload"], json!({"after": "the lock"}));
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// PostgreSQL only: what is tested is the server's connection coming back.
#[test]
fn serve_reconnects_after_postgres_ends_its_connection() {
    let pool = empty_pool(Backend::Postgres, "");
    // The server's connections carry a name of their own, so the test ends exactly those.
    let name = format!("jobhost-test-{}", uuid::Uuid::new_v4().simple());
    let named = pool.reached_at(&support::sessions_named(pool.location(), &name));
    let server = named.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    assert_eq!(api.get("/readyz").status, 200);

    for round in 0..2 {
        let ended = pool.end_sessions_named(&name);
        // Beside requests, the server's scheduler and retention may hold a connection each.
        assert!(
            !ended.is_empty() && ended.iter().all(|&ended| ended),
            "round {round}: every connection of the server was ended: {ended:?}"
        );
        // The request that meets the closed connection may fail; the server must be back
        // well within the deadline, without a restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = api.get(&format!("/api/v1/jobs/{id}"));
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503, "round {round}: {}", reply.describe());
            assert!(Instant::now() < deadline, "round {round}: still {} after 10 s", reply.describe());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(api.get("/readyz").status, 200, "round {round}");
        assert_eq!(api.get("/api/v1/status").status, 200, "round {round}");
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Long-polls
// ------------------------------------------------------------------------------------------

fn long_poll_answers_when_a_worker_finishes_the_job(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "payload": {"wait": "for me"}}));
    let poller = api.clone();
    let path = format!("/api/v1/jobs/{id}?wait=10s");
    let poll = std::thread::spawn(move || {
        let start = Instant::now();
        let reply = poller.get(&path);
        (reply, start.elapsed())
    });
    api.wait_for_waiters(1.0);
    assert!(!poll.is_finished(), "the long-poll waits while the job is pending");
    let worked = Instant::now();
    work(&pool, &[]);
    let (reply, took) = poll.join().unwrap();
    let job = reply.expect(200);
    assert_eq!(job["status"], "completed", "the answer shows the finished job: {job}");
    assert_eq!(job["result"]["echo"], json!({"wait": "for me"}));
    assert_eq!(job["history"].as_array().unwrap().len(), 1);
    assert!(took < Duration::from_secs(10), "answered when the job finished ({took:?}), not when the wait ended");
    assert!(worked.elapsed() < Duration::from_secs(9), "the worker's run fits in the wait");
    assert_matches_cli(&pool, &job);

    // A finished job is answered at once, even with the longest wait.
    let start = Instant::now();
    assert_eq!(api.get(&format!("/api/v1/jobs/{id}?wait=60s")).expect(200)["status"], "completed");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // So is a cancelled one, and an unknown id.
    let cancelled = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    api.post_empty(&format!("/api/v1/jobs/{cancelled}/cancel")).expect(200);
    let start = Instant::now();
    assert_eq!(api.get(&format!("/api/v1/jobs/{cancelled}?wait=30s")).expect(200)["status"], "cancelled");
    api.get(&format!("/api/v1/jobs/{}?wait=30s", uuid::Uuid::new_v4())).expect_error(404, "not_found", None);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn long_poll_times_out_with_the_job_as_it_is_and_bad_waits_are_refused(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo"}));
    let start = Instant::now();
    let job = api.get(&format!("/api/v1/jobs/{id}?wait=1s")).expect(200);
    let took = start.elapsed();
    assert_eq!(job["status"], "pending", "nobody ran it: {job}");
    assert!(took >= Duration::from_secs(1), "the wait lasted its full second, not {took:?}");
    assert!(took < Duration::from_secs(5), "and not much more: {took:?}");
    let start = Instant::now();
    assert_eq!(api.get(&format!("/api/v1/jobs/{id}?wait=300ms")).expect(200)["status"], "pending");
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());

    // The default serve.max_wait is 60s.
    for wait in ["61s", "2m", "1h", "soon", "10", "-1s", "1.5.s"] {
        let start = Instant::now();
        api.get(&format!("/api/v1/jobs/{id}?wait={}", encode(wait))).expect_error(422, "invalid_field", Some("wait"));
        assert!(start.elapsed() < Duration::from_secs(2), "wait={wait} is refused at once");
    }
    assert_eq!(total(&pool), 1);
    assert_eq!(shown(&pool, &id)["status"], "pending");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));

    // A lower serve.max_wait from the config.
    let pool = empty_pool(backend, "serve: {max_wait: 2s}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    api.get(&format!("/api/v1/jobs/{id}?wait=3s")).expect_error(422, "invalid_field", Some("wait"));
    let start = Instant::now();
    assert_eq!(api.get(&format!("/api/v1/jobs/{id}?wait=2s")).expect(200)["status"], "pending");
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn sigterm_still_answers_an_in_flight_long_poll(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    let poller = api.clone();
    let path = format!("/api/v1/jobs/{id}?wait=10s");
    let poll = std::thread::spawn(move || poller.get(&path));
    api.wait_for_waiters(1.0);
    let status = server.stop(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM ends the server cleanly: {status}");
    let reply = poll.join().unwrap();
    let job = reply.expect(200);
    assert_eq!((&job["id"], &job["status"]), (&json!(id), &json!("pending")), "the in-flight request got its answer");
    let log = std::fs::read_to_string(pool.path("serve.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

// ------------------------------------------------------------------------------------------
// Auth
// ------------------------------------------------------------------------------------------

/// SQLite only: auth is the HTTP layer's, whatever the database.
#[test]
fn without_a_token_on_loopback_everything_is_open() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    for path in ["/api/v1/status", "/api/v1/jobs", "/api/v1/pools", "/api/v1/workers", "/api/v1/processors", "/metrics"]
    {
        assert_eq!(api.get(path).status, 200, "{path}");
    }
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    api.post_empty(&format!("/api/v1/jobs/{id}/cancel")).expect(200);
    // A token sent to a server that has none is no reason to refuse.
    assert_eq!(api.get_with("/api/v1/status", &[("Authorization", "Bearer whatever-you-like-123")]).status, 200);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// Every guarded endpoint refuses a missing or wrong bearer token and takes the right one.
/// (Fewer wrong tokens than a client may offer in a row before it must wait.)
fn assert_guarded_by(server: &Server, pool: &Pool, token: &str, wrong: &str) {
    let anonymous = Api::new(server);
    let right = Api::with_token(server, token);
    let paths = ["/api/v1/status", "/api/v1/jobs", "/api/v1/pools", "/api/v1/openapi.json", "/metrics"];
    for (index, path) in paths.into_iter().enumerate() {
        let reply = anonymous.get(path);
        reply.expect_error(401, "unauthorized", None);
        let challenge = reply.header("www-authenticate").unwrap_or_else(|| panic!("{path}: no WWW-Authenticate"));
        assert!(challenge.to_ascii_lowercase().starts_with("bearer"), "{path}: {challenge}");
        let mut headers = vec![format!("Bearer {wrong}"), format!("Basic {token}"), token.to_owned()];
        if index == 0 {
            headers.push(format!("Bearer {token}x"));
        }
        for header in headers {
            let reply = anonymous.get_with(path, &[("Authorization", &header)]);
            reply.expect_error(401, "unauthorized", None);
            assert!(reply.header("www-authenticate").is_some(), "{path} with {header:?}");
        }
        assert_eq!(right.get(path).status, 200, "{path} with the right token");
    }
    let before = total(pool);
    anonymous.post("/api/v1/jobs", &json!({"processor": "echo"})).expect_error(401, "unauthorized", None);
    Api::with_token(server, wrong).post("/api/v1/jobs", &json!({"processor": "echo"})).expect_error(
        401,
        "unauthorized",
        None,
    );
    assert_eq!(total(pool), before, "a refused request inserts nothing");
    right.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    assert_eq!(total(pool), before + 1);
    let health = anonymous.get("/healthz");
    assert_eq!((health.status, health.text.trim()), (200, "ok"), "/healthz needs no token");
}

/// SQLite only: auth is the HTTP layer's, whatever the database.
#[test]
fn a_token_from_the_environment_a_file_or_the_config_guards_the_api() {
    let token = "a-long-enough-token-123";
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", token)]);
    assert_guarded_by(&server, &pool, token, "not-the-token-at-all");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));

    // --token-file wins over $JOBHOST_TOKEN.
    let file_token = "token-from-a-file-456";
    std::fs::write(pool.path("token"), file_token).unwrap();
    let file = pool.path("token").display().to_string();
    let server = pool.serve_with(&["--token-file", &file], &[("JOBHOST_TOKEN", token)]);
    assert_guarded_by(&server, &pool, file_token, token);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));

    // serve.token_file in the config.
    let config = std::fs::read_to_string(pool.path("jobhost.yml")).unwrap();
    std::fs::write(pool.path("jobhost.yml"), format!("{config}serve: {{token_file: {file}}}\n")).unwrap();
    let server = pool.serve(&[]);
    assert_guarded_by(&server, &pool, file_token, token);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));

    // Exactly 16 characters is long enough.
    let sixteen = "0123456789abcdef";
    std::fs::write(pool.path("jobhost.yml"), config).unwrap();
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", sixteen)]);
    assert_guarded_by(&server, &pool, sixteen, "0123456789abcdeg");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// Insists that an answer forbids framing, sniffing and referrers to other sites.
fn assert_unframeable(reply: &Reply) {
    let policy = reply.header("content-security-policy").unwrap_or_else(|| panic!("no CSP: {}", reply.describe()));
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'self'"), "{policy}");
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{}", reply.describe());
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{}", reply.describe());
    assert_eq!(reply.header("referrer-policy"), Some("same-origin"), "{}", reply.describe());
}

/// SQLite only: these headers and refusals are the HTTP layer's, whatever the database.
#[test]
fn no_page_may_frame_the_dashboard_and_other_sites_cannot_change_jobs() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    for path in [
        "/".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        "/processors".to_owned(),
        "/schedules".to_owned(),
        "/assets/style.css".to_owned(),
        "/assets/live.js".to_owned(),
        "/api/v1/status".to_owned(),
        format!("/api/v1/jobs/{id}"),
        "/metrics".to_owned(),
        "/healthz".to_owned(),
        "/no-such-page".to_owned(),
        "/api/v1/no-such-path".to_owned(),
    ] {
        assert_unframeable(&api.get(&path));
    }

    // A page of another site (a cross-site frame, or a page on another port of this host,
    // which is the same site) cannot change jobs, even where the browser sends no Origin:
    // not through the API, nor through the dashboard's own forms with their CSRF token.
    let csrf = api.get("/jobs").csrf();
    for site in ["cross-site", "same-site"] {
        let headers = [("Sec-Fetch-Site", site)];
        let reply = api.post_with("/api/v1/jobs", "application/json", r#"{"processor": "echo"}"#, &headers);
        reply.expect_error(403, "forbidden", None);
        assert_unframeable(&reply);
        let form = format!("csrf={csrf}&action=cancel-matching");
        let reply = api.post_with("/jobs/bulk", "application/x-www-form-urlencoded", &form, &headers);
        assert_eq!(reply.status, 403, "{}", reply.describe());
        assert!(reply.text.contains("another site"), "{}", reply.describe());
        let reply = api.post_with(
            &format!("/jobs/{id}/cancel"),
            "application/x-www-form-urlencoded",
            &format!("csrf={csrf}"),
            &headers,
        );
        assert_eq!(reply.status, 403, "{}", reply.describe());
    }
    assert_eq!(api.job(&id)["status"], "pending", "nothing was cancelled");
    assert_eq!(total(&pool), 1, "nothing was queued");
    // The dashboard's own pages (same-origin) and requests a person typed (none) still work,
    // as do clients that send no such header.
    api.post_with("/api/v1/jobs", "application/json", r#"{"processor": "echo"}"#, &[("Sec-Fetch-Site", "none")])
        .expect(201);
    let form = format!("csrf={csrf}");
    let reply = api.post_with(
        &format!("/jobs/{id}/cancel"),
        "application/x-www-form-urlencoded",
        &form,
        &[("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(reply.status, 303, "{}", reply.describe());
    assert_eq!(api.job(&id)["status"], "cancelled");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: auth is the HTTP layer's, whatever the database.
#[test]
fn a_client_offering_wrong_tokens_is_made_to_wait_without_a_comparison() {
    let token = "a-long-enough-token-123";
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", token)]);
    let (anonymous, right) = (Api::new(&server), Api::with_token(&server, token));
    let wrong = Api::with_token(&server, "not-the-token-at-all");
    // Wrong bearer tokens and wrong sign-ins count together: ten in a row are answered.
    for _ in 0..5 {
        wrong.get("/api/v1/status").expect_error(401, "unauthorized", None);
        let reply = anonymous.post_with("/login", "application/x-www-form-urlencoded", "token=not-the-token", &[]);
        assert_eq!(reply.status, 401, "{}", reply.describe());
    }
    // The eleventh waits, whatever it offers: no comparison is made.
    let reply = wrong.get("/api/v1/status");
    reply.expect_error(429, "rate_limited", None);
    let wait: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=6).contains(&wait), "one wrong token comes back within 6 s, not {wait}");
    right.get("/api/v1/jobs").expect_error(429, "rate_limited", None);
    let reply = anonymous.post_with("/login", "application/x-www-form-urlencoded", &format!("token={token}"), &[]);
    assert_eq!((reply.status, reply.header("retry-after").is_some()), (429, true), "{}", reply.describe());
    assert!(reply.header("set-cookie").is_none(), "no session for a client made to wait");
    // Asking without a token guesses nothing, and is answered as before.
    anonymous.get("/api/v1/status").expect_error(401, "unauthorized", None);
    assert_eq!(anonymous.get("/healthz").status, 200);
    // Once the allowance comes back, the right token is taken again. (The wait is the
    // behaviour under test: there is no event to await instead.)
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(right.get("/api/v1/status").status, 200);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: auth is the HTTP layer's, whatever the database.
#[test]
fn the_read_token_reads_the_api_dashboard_and_metrics_and_changes_nothing() {
    let (token, read) = ("the-full-token-0123456", "the-read-token-0123456");
    let pool = empty_pool(Backend::Sqlite, "");
    pool.ok(&["seed", "--delay", "1h"]);
    let id = pool.json(&["jobs", "list"])[0]["id"].as_str().unwrap().to_owned();
    std::fs::write(pool.path("read-token"), format!("{read}\n")).unwrap();
    let file = pool.path("read-token").display().to_string();
    let config = std::fs::read_to_string(pool.path("jobhost.yml")).unwrap();

    let check = |server: Server| {
        let before = pool.all_jobs();
        let reader = Api::with_token(&server, read);
        for path in [
            "/api/v1/status".to_owned(),
            "/api/v1/jobs".to_owned(),
            format!("/api/v1/jobs/{id}"),
            format!("/api/v1/jobs/{id}/attempts"),
            "/api/v1/pools".to_owned(),
            "/api/v1/workers".to_owned(),
            "/api/v1/processors".to_owned(),
            "/api/v1/schedules".to_owned(),
            "/api/v1/openapi.json".to_owned(),
            "/metrics".to_owned(),
            "/".to_owned(),
            "/schedules".to_owned(),
            format!("/jobs/{id}"),
        ] {
            let reply = reader.get(&path);
            assert_eq!(reply.status, 200, "the read token reads {path}: {}", reply.describe());
        }
        for (path, body) in [
            ("/api/v1/jobs".to_owned(), json!({"processor": "echo"})),
            ("/api/v1/jobs/cancel".to_owned(), json!({"ids": [id]})),
            ("/api/v1/jobs/cancel".to_owned(), json!({"filter": {"status": "pending"}})),
            ("/api/v1/jobs/retry".to_owned(), json!({"filter": {"pool": "default"}})),
        ] {
            let error = reader.post(&path, &body).expect_error(403, "read_only", None);
            assert!(error["message"].as_str().unwrap().contains("read token"), "the refusal says why: {error}");
        }
        reader.post_empty(&format!("/api/v1/jobs/{id}/cancel")).expect_error(403, "read_only", None);

        // Signed in with it, the dashboard shows no buttons and refuses their forms.
        let anonymous = Api::new(&server);
        let reply = anonymous.post_with("/login", "application/x-www-form-urlencoded", &format!("token={read}"), &[]);
        assert_eq!(reply.status, 303, "the read token signs in: {}", reply.describe());
        let session = reply.header("set-cookie").expect("a session").split(';').next().unwrap().to_owned();
        let page = anonymous.get_with(&format!("/jobs/{id}"), &[("Cookie", &session)]);
        assert!(page.text.contains("read-only") && !page.text.contains(r#"id="cancel""#), "{}", page.describe());
        let csrf = page.csrf();
        let reply = anonymous.post_with(
            &format!("/jobs/{id}/cancel"),
            "application/x-www-form-urlencoded",
            &format!("csrf={csrf}"),
            &[("Cookie", &session)],
        );
        assert_eq!(reply.status, 403, "{}", reply.describe());
        assert_eq!(pool.all_jobs(), before, "nothing changed in the database");

        // The token itself still changes jobs.
        let writer = Api::with_token(&server, token);
        writer.post_empty(&format!("/api/v1/jobs/{id}/cancel")).expect(200);
        writer.post_empty(&format!("/api/v1/jobs/{id}/retry")).expect(200);
        assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
    };
    // Set by the flag, the environment or the config, as the token is.
    check(pool.serve_with(&["--read-token-file", &file], &[("JOBHOST_TOKEN", token)]));
    check(pool.serve_with(&[], &[("JOBHOST_TOKEN", token), ("JOBHOST_READ_TOKEN", read)]));
    std::fs::write(pool.path("jobhost.yml"), format!("{config}serve: {{read_token_file: {file}}}\n")).unwrap();
    check(pool.serve_with(&[], &[("JOBHOST_TOKEN", token)]));
    std::fs::write(pool.path("jobhost.yml"), &config).unwrap();

    // Checked as the token is, and refused alone or equal to the token.
    std::fs::write(pool.path("short"), "fifteen-chars-x").unwrap();
    let short = pool.path("short").display().to_string();
    for (args, env, says) in [
        (vec!["--read-token-file", short.as_str()], vec![("JOBHOST_TOKEN", token)], "16"),
        (vec!["--read-token-file", file.as_str()], vec![], "no token"),
        (vec![], vec![("JOBHOST_TOKEN", read), ("JOBHOST_READ_TOKEN", read)], "token of its own"),
    ] {
        let mut args = args;
        args.extend(["--listen", "127.0.0.1:0"]);
        let output = run_at_most(serve_command(&pool, &args, &env), Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?} is refused: {stderr}");
        assert!(stderr.contains(says), "the message says why ({says}): {stderr}");
        assert!(!stderr.contains(read), "the message does not repeat the token: {stderr}");
    }
}

/// SQLite only: these refusals happen before the database matters.
#[test]
fn refuses_to_listen_publicly_without_a_token_or_with_a_short_one() {
    let pool = empty_pool(Backend::Sqlite, "");
    let output = run_at_most(serve_command(&pool, &["--listen", "0.0.0.0:0"], &[]), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a public address without a token is refused: {stderr}");
    assert!(stderr.to_lowercase().contains("token"), "the message names the fix (a token): {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "it never listened");

    let short = "fifteen-chars-x";
    assert_eq!(short.len(), 15);
    std::fs::write(pool.path("short"), short).unwrap();
    let file = pool.path("short").display().to_string();
    for (args, env) in [
        (vec!["--listen", "127.0.0.1:0"], vec![("JOBHOST_TOKEN", short)]),
        (vec!["--listen", "127.0.0.1:0", "--token-file", &file], vec![]),
        (vec!["--listen", "0.0.0.0:0"], vec![("JOBHOST_TOKEN", short)]),
    ] {
        let output = run_at_most(serve_command(&pool, &args, &env), Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "a 15-character token is refused ({args:?}): {stderr}");
        assert!(stderr.contains("16"), "the message says how long a token must be: {stderr}");
        assert!(!stderr.contains(short), "the message does not repeat the token: {stderr}");
    }

    // With a token, a public address is fine (and answers on loopback too).
    let token = "a-long-enough-token-123";
    let mut server = Started::spawn(serve_command(&pool, &["--listen", "0.0.0.0:0"], &[("JOBHOST_TOKEN", token)]));
    let port = server.line.strip_prefix("listening on http://0.0.0.0:").unwrap_or_else(|| panic!("{}", server.line));
    let api = Api::at(&format!("http://127.0.0.1:{port}"), Some(token));
    assert_eq!(api.get("/api/v1/status").status, 200);
    assert_eq!(server.stop(), Some(0));
}

/// SQLite only: signal handling is the process's, whatever the database.
#[test]
fn sigterm_right_after_the_listening_line_still_exits_cleanly() {
    let pool = empty_pool(Backend::Sqlite, "");
    for _ in 0..5 {
        let mut server = Started::spawn(serve_command(&pool, &["--listen", "127.0.0.1:0"], &[]));
        assert!(server.line.starts_with("listening on http://127.0.0.1:"), "{}", server.line);
        // No request first: once the line is out, the server accepts, so SIGTERM stops it.
        assert_eq!(server.stop(), Some(0), "SIGTERM right after `{}` exits 0", server.line);
    }
}

/// A `jobhost serve` started by hand, with the line it printed first; killed if dropped
/// while running.
struct Started {
    child: std::process::Child,
    line: String,
}

impl Started {
    fn spawn(mut command: Command) -> Started {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn jobhost serve");
        let mut stdout = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Started { child, line: String::from_utf8_lossy(&line).into_owned() }
    }

    /// SIGTERM, then its exit code (None: killed by a signal), within 20 s.
    fn stop(&mut self) -> Option<i32> {
        support::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "jobhost serve did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Read-only
// ------------------------------------------------------------------------------------------

fn read_only_refuses_every_post_and_changes_nothing(backend: Backend) {
    let pool = empty_pool(backend, "");
    pool.add_processor("exit3.wat", "exit3");
    pool.ok(&["seed", "--processor", "exit3", "--max-attempts", "1"]);
    pool.ok(&["seed", "--count", "2"]);
    work(&pool, &[]);
    pool.ok(&["seed", "--delay", "1h"]);
    let before = pool.all_jobs();
    let id_of = |status: &str| {
        before.iter().find(|j| j["status"] == status).unwrap_or_else(|| panic!("a {status} job"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (pending, poisoned) = (id_of("pending"), id_of("poisoned"));

    let check = |server: Server| {
        let api = Api::new(&server);
        for path in [
            "/api/v1/status".to_owned(),
            "/api/v1/jobs".to_owned(),
            format!("/api/v1/jobs/{pending}"),
            "/api/v1/pools".to_owned(),
            "/api/v1/workers".to_owned(),
            "/api/v1/processors".to_owned(),
            "/api/v1/schedules".to_owned(),
            "/api/v1/openapi.json".to_owned(),
            "/metrics".to_owned(),
            "/healthz".to_owned(),
        ] {
            assert_eq!(api.get(&path).status, 200, "GET {path} works read-only");
        }
        let posts: Vec<(String, Option<Value>)> = vec![
            ("/api/v1/jobs".into(), Some(json!({"processor": "echo"}))),
            ("/api/v1/jobs".into(), Some(json!({"jobs": [{"processor": "echo"}]}))),
            (format!("/api/v1/jobs/{pending}/cancel"), None),
            (format!("/api/v1/jobs/{poisoned}/retry"), None),
            ("/api/v1/jobs/cancel".into(), Some(json!({"ids": [pending]}))),
            ("/api/v1/jobs/cancel".into(), Some(json!({"filter": {"status": "pending"}}))),
            ("/api/v1/jobs/retry".into(), Some(json!({"ids": [poisoned]}))),
            ("/api/v1/jobs/retry".into(), Some(json!({"filter": {"pool": "default"}}))),
            ("/api/v1/pools/default/pause".into(), Some(json!({"reason": "read-only may not"}))),
            ("/api/v1/pools/default/resume".into(), None),
        ];
        for (path, body) in &posts {
            let reply = match body {
                Some(body) => api.post(path, body),
                None => api.post_empty(path),
            };
            reply.expect_error(403, "read_only", None);
        }
        assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
        assert_eq!(pool.all_jobs(), before, "nothing changed in the database");
        assert_eq!(pool.json(&["status"])["paused_pools"], json!([]), "no pool was paused");
    };
    check(pool.serve(&["--read-only"]));
    let config = std::fs::read_to_string(pool.path("jobhost.yml")).unwrap();
    std::fs::write(pool.path("jobhost.yml"), format!("{config}serve: {{read_only: true}}\n")).unwrap();
    check(pool.serve(&[]));
}

// ------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------

/// Bodies that are not one JSON object, not declared as JSON, or too large.
fn bodies_that_are_not_json_objects_are_refused(backend: Backend) {
    let pool = empty_pool(backend, "serve: {max_body: 2KiB}\njobs: {max_payload: 1KiB}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let jobs = "/api/v1/jobs";
    let ok = serde_json::to_vec(&json!({"processor": "echo"})).unwrap();

    // Not JSON, or JSON of the wrong shape: the body is one object.
    for body in [
        &b"{\"processor\": "[..],
        b"",
        b"{} {}",
        b"\"echo\"",
        b"42",
        b"[1, 2]",
        b"[\"echo\", {}, \"default\", 0, null, null, 2]",
    ] {
        let reply = api.post_raw(jobs, Some("application/json"), body);
        reply.expect_error(400, "invalid_json", None);
    }
    // Not declared as JSON.
    api.post_raw(jobs, Some("text/plain"), &ok).expect_error(415, "unsupported_media_type", None);
    api.post_raw(jobs, None, &ok).expect_error(415, "unsupported_media_type", None);
    let form = api.post_raw(jobs, Some("application/x-www-form-urlencoded"), b"processor=echo");
    form.expect_error(415, "unsupported_media_type", None);
    // Over serve.max_body, with a length or in chunks.
    let big = serde_json::to_vec(&json!({"processor": "echo", "payload": "x".repeat(3000)})).unwrap();
    api.post_raw(jobs, Some("application/json"), &big).expect_error(413, "body_too_large", None);
    api.post_chunked(jobs, big).expect_error(413, "body_too_large", None);
    // The same for the bulk endpoints.
    for path in ["/api/v1/jobs/cancel", "/api/v1/jobs/retry"] {
        api.post_raw(path, Some("text/plain"), b"{\"ids\": []}").expect_error(415, "unsupported_media_type", None);
        api.post_raw(path, Some("application/json"), b"{\"ids\": [").expect_error(400, "invalid_json", None);
        api.post_raw(path, Some("application/json"), b"[[]]").expect_error(400, "invalid_json", None);
        let big = serde_json::to_vec(&json!({"ids": vec![uuid::Uuid::new_v4().to_string(); 60]})).unwrap();
        api.post_raw(path, Some("application/json"), &big).expect_error(413, "body_too_large", None);
    }
    assert_eq!(total(&pool), 0, "no refused request inserted anything");
    // Under the cap, with a charset: fine.
    api.post_raw(jobs, Some("application/json; charset=utf-8"), &ok).expect(201);
    assert_eq!(total(&pool), 1);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// Every field of a job, alone and at index 2 of a batch (which then inserts nothing).
fn bad_fields_are_refused_by_name_and_insert_nothing(backend: Backend) {
    let pool = empty_pool(backend, "jobs: {max_payload: 1KiB}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let ok = json!({"processor": "echo"});
    let with = |key: &str, value: Value| {
        let mut job = ok.as_object().unwrap().clone();
        job.insert(key.to_owned(), value);
        Value::Object(job)
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({"processor": "nope"}), "processor"),
        (json!({"processor": "../echo"}), "processor"),
        (json!({}), "processor"),
        (json!({"processor": 5}), "processor"),
        (with("payload", json!("x".repeat(1100))), "payload"),
        (with("priority", json!("high")), "priority"),
        (with("priority", json!(1.5)), "priority"),
        (with("max_attempts", json!(0)), "max_attempts"),
        (with("max_attempts", json!(10001)), "max_attempts"),
        (with("max_attempts", json!(-1)), "max_attempts"),
        (with("delay", json!("soon")), "delay"),
        (with("delay", json!("5")), "delay"),
        (with("delay", json!(30)), "delay"),
        (with("run_at", json!("tomorrow")), "run_at"),
        (with("pool", json!("")), "pool"),
        (with("prio", json!(1)), "prio"),
    ];
    for (job, field) in &cases {
        api.post("/api/v1/jobs", job).expect_error(422, "invalid_field", Some(field));
        let batch = json!({"jobs": [ok, ok, job, ok]});
        api.post("/api/v1/jobs", &batch).expect_error(422, "invalid_field", Some(&format!("jobs[2].{field}")));
    }
    // Both a delay and a run_at: one of the two is named.
    let both = with("delay", json!("1s"));
    let both = {
        let mut job = both.as_object().unwrap().clone();
        job.insert("run_at".into(), json!(now_ms()));
        Value::Object(job)
    };
    for (body, prefix) in [(both.clone(), ""), (json!({"jobs": [ok, ok, both]}), "jobs[2].")] {
        let error = api.post("/api/v1/jobs", &body).expect_error(422, "invalid_field", None);
        let field = error["field"].as_str().unwrap_or_else(|| panic!("a field is named: {error}"));
        assert!(field == format!("{prefix}delay") || field == format!("{prefix}run_at"), "{error}");
    }
    // The batch itself.
    api.post("/api/v1/jobs", &json!({"jobs": []})).expect_error(422, "invalid_field", Some("jobs"));
    api.post("/api/v1/jobs", &json!({"jobs": "many"})).expect_error(422, "invalid_field", Some("jobs"));
    api.post("/api/v1/jobs", &json!({"jobs": [ok], "extra": true})).expect_error(422, "invalid_field", Some("extra"));
    assert_eq!(total(&pool), 0, "no refused request inserted anything");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// A payload is checked as `seed --payload` checks it: 127 levels of nesting are fine (as
/// for the CLI), 129 are not, and that is the payload's fault (422), not the body's.
fn payloads_are_checked_as_seed_checks_them(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let jobs = "/api/v1/jobs";
    // Sent as raw text: this client's own JSON parser stops at 128 levels.
    let deep = format!("{{\"processor\": \"echo\", \"payload\": {}}}", nested(129));
    api.post_raw(jobs, Some("application/json"), deep.as_bytes()).expect_error(422, "invalid_field", Some("payload"));
    let ok = "{\"processor\": \"echo\"}";
    let deep = format!("{{\"jobs\": [{ok}, {ok}, {{\"processor\": \"echo\", \"payload\": {}}}, {ok}]}}", nested(129));
    let reply = api.post_raw(jobs, Some("application/json"), deep.as_bytes());
    reply.expect_error(422, "invalid_field", Some("jobs[2].payload"));
    assert_eq!(total(&pool), 0, "no refused request inserted anything");

    pool.ok(&["seed", "--payload", &nested(127)]);
    assert_eq!(total(&pool), 1, "seed takes a payload 127 deep");
    let deep = format!("{{\"processor\": \"echo\", \"payload\": {}}}", nested(127));
    let body = api.post_raw(jobs, Some("application/json"), deep.as_bytes()).expect(201);
    assert_eq!(body["outcome"], "queued", "so does the API: {body}");
    assert_eq!(total(&pool), 2);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// The listing's query parameters and the bulk bodies.
fn bad_listings_and_bulk_requests_are_refused_by_name(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    for (query, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("created_after=yesterday", "created_after"),
        ("created_before=soon", "created_before"),
    ] {
        api.get(&format!("/api/v1/jobs?{query}")).expect_error(422, "invalid_field", Some(field));
    }
    let (page, _) = api.list("limit=1000");
    assert_eq!(page.len(), 1, "limit 1000 is allowed");

    for path in ["/api/v1/jobs/retry", "/api/v1/jobs/cancel"] {
        // Neither ids nor a filter, or both: the body has the wrong shape.
        for body in [json!({}), json!({"ids": [], "filter": {}})] {
            api.post(path, &body).expect_error(400, "invalid_json", None);
        }
        for (body, field) in [
            (json!({"ids": "x"}), "ids"),
            (json!({"filter": {"status": "done"}}), "filter.status"),
            (json!({"filter": {"colour": "red"}}), "filter.colour"),
            (json!({"ids": [], "colour": "red"}), "colour"),
        ] {
            api.post(path, &body).expect_error(422, "invalid_field", Some(field));
        }
    }
    assert_eq!(pool.status()["jobs"]["pending"], 1, "no bulk request changed anything");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: routing is the HTTP layer's, whatever the database.
#[test]
fn unknown_paths_and_wrong_methods_answer_in_json() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    api.get("/api/v1/nope").expect_error(404, "not_found", None);
    api.get("/api/v2/jobs").expect_error(404, "not_found", None);
    api.get(&format!("/api/v1/jobs/{id}/nope")).expect_error(404, "not_found", None);
    api.post("/api/v1/nope", &json!({})).expect_error(404, "not_found", None);
    for reply in [
        api.delete("/api/v1/jobs"),
        api.delete(&format!("/api/v1/jobs/{id}")),
        api.put("/api/v1/jobs", &json!({"processor": "echo"})),
        api.put("/api/v1/status", &json!({})),
        api.post("/api/v1/status", &json!({})),
        api.post("/api/v1/pools", &json!({})),
        api.get(&format!("/api/v1/jobs/{id}/retry")),
    ] {
        reply.expect_error(405, "method_not_allowed", None);
        assert!(reply.header("allow").is_some(), "{}: a 405 says which methods are allowed", reply.what);
    }
    assert_eq!(total(&pool), 1);
    assert_eq!(shown(&pool, &id)["status"], "pending");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// Connections and the edge, over raw sockets: what an HTTP client library would not send, or
// would read on our behalf
// ------------------------------------------------------------------------------------------

/// One TCP connection of our own to the server.
struct Raw {
    stream: std::net::TcpStream,
    /// Bytes read past the last answer.
    pending: Vec<u8>,
}

impl Raw {
    fn connect(server: &Server) -> Raw {
        let address = server.base.strip_prefix("http://").expect("an http:// base");
        let stream = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
        Raw { stream, pending: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends `GET target` with these extra header lines (each ending in CRLF).
    fn get(&mut self, target: &str, headers: &str) {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").as_bytes());
    }

    /// Reads bytes until `done` says how many make a whole, the server closes, or `timeout`
    /// passes; returns what was read and which came first.
    fn read_until(&mut self, timeout: Duration, done: impl Fn(&[u8]) -> Option<usize>) -> (Vec<u8>, Ended) {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 64 << 10];
        loop {
            if let Some(end) = done(&self.pending) {
                let rest = self.pending.split_off(end);
                return (std::mem::replace(&mut self.pending, rest), Ended::Whole);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (std::mem::take(&mut self.pending), Ended::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return (std::mem::take(&mut self.pending), Ended::Closed),
                Ok(read) => self.pending.extend_from_slice(&chunk[..read]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                // A reset is the server closing too.
                Err(_) => return (std::mem::take(&mut self.pending), Ended::Closed),
            }
        }
    }

    /// The next answer (with a `Content-Length` body), within `timeout`; `None` if none came.
    fn answer(&mut self, what: &str, timeout: Duration) -> Option<Reply> {
        let (bytes, ended) = self.read_until(timeout, |bytes| {
            let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |length| length.trim().parse::<usize>().expect("a numeric content-length"));
            (bytes.len() >= head_end + length).then_some(head_end + length)
        });
        if ended != Ended::Whole {
            assert!(bytes.is_empty(), "{what}: half an answer: {:?}", String::from_utf8_lossy(&bytes));
            return None;
        }
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
        let mut headers = ureq::http::HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').expect("a header line");
            headers.append(
                ureq::http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                ureq::http::HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        let text = String::from_utf8(bytes[head_end + 4..].to_vec()).expect("a text body");
        Some(Reply { what: what.to_owned(), status, headers, text })
    }

    /// Insists on an answer within `timeout`.
    fn expect_answer(&mut self, what: &str, timeout: Duration) -> Reply {
        self.answer(what, timeout).unwrap_or_else(|| panic!("{what}: no answer within {timeout:?}"))
    }

    /// Whether the server closes the connection within `timeout` (reading what it still sends).
    fn closed_within(&mut self, timeout: Duration) -> bool {
        self.read_until(timeout, |_| None).1 == Ended::Closed
    }
}

/// How a read of [`Raw`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Whole,
    Closed,
    TimedOut,
}

/// SQLite only: connections are the HTTP layer's, whatever the database.
#[test]
fn idle_connections_over_the_cap_do_not_delay_a_new_request() {
    let pool = empty_pool(Backend::Sqlite, "serve: {max_connections: 20}\n");
    let server = pool.serve(&[]);
    // Twice the cap of keep-alive connections, each idle after one answer. The cap used to
    // hold the newer ones back until the older ones' idle timeout (10 s) closed them.
    let mut idle: Vec<Raw> = Vec::new();
    for i in 0..40 {
        let mut connection = Raw::connect(&server);
        connection.get("/healthz", "");
        let what = format!("GET /healthz on idle connection {i}");
        assert_eq!(connection.expect_answer(&what, Duration::from_secs(5)).text, "ok");
        idle.push(connection);
    }
    let start = Instant::now();
    Api::new(&server).get("/api/v1/status").expect(200);
    assert!(start.elapsed() < Duration::from_secs(5), "a new request waited {:?}", start.elapsed());
    // Room was made by closing the connections idle the longest: the oldest ones.
    for (i, connection) in idle.iter_mut().enumerate().take(20) {
        assert!(connection.closed_within(Duration::from_secs(5)), "the server closed idle connection {i}");
    }
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

fn long_polls_leave_room_for_short_requests(backend: Backend) {
    // 20 connections: at most 10 long-polls wait (the default, half), the rest are refused.
    let pool = empty_pool(backend, "serve: {max_connections: 20}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h"}));
    let (answered, answers) = std::sync::mpsc::channel();
    for i in 0..30 {
        let mut connection = Raw::connect(&server);
        connection.get(&format!("/api/v1/jobs/{id}?wait=30s"), "");
        let answered = answered.clone();
        std::thread::spawn(move || {
            let reply = connection.answer(&format!("long-poll {i}"), Duration::from_secs(60));
            let _ = answered.send(reply);
        });
    }
    // The 20 past the bound are answered at once; they used to hold the connections instead.
    for _ in 0..20 {
        let reply =
            answers.recv_timeout(Duration::from_secs(10)).expect("a long-poll past the bound is answered at once");
        let reply = reply.expect("an answer");
        let error = reply.expect_error(503, "unavailable", None);
        assert!(error["message"].as_str().unwrap().contains("serve.max_waiters"), "{error}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.describe());
    }
    let start = Instant::now();
    let metrics = api.metrics();
    assert!(start.elapsed() < Duration::from_secs(5), "a /metrics probe waited {:?}", start.elapsed());
    assert_eq!(metrics.get("jobhost_server_waiters", &[]), 10.0);
    assert!(answers.try_recv().is_err(), "the 10 within the bound still wait");
    // They were waiting: a shutdown answers them at once with the job as it is.
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
    for _ in 0..10 {
        let reply = answers.recv_timeout(Duration::from_secs(10)).expect("answered at shutdown").expect("an answer");
        assert_eq!(reply.expect(200)["status"], "pending");
    }
}

/// SQLite only: writing answers is the HTTP layer's, whatever the database.
#[test]
fn a_client_that_stops_reading_an_answer_is_disconnected() {
    let pool = empty_pool(Backend::Sqlite, "jobs: {max_payload: 64MiB}\nserve: {write_timeout: 1s, max_body: 64MiB}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    // Far more than the socket buffers between the server and a client that reads nothing:
    // Linux grows a loopback connection's to tcp_rmem's and tcp_wmem's largest (32 MiB and
    // 4 MiB by default), and an 8 MiB answer once fitted in them whole.
    let blob = "x".repeat(48 << 20);
    let id = api.enqueue(&json!({"processor": "echo", "delay": "1h", "payload": {"blob": blob}}));
    let mut reader = Raw::connect(&server);
    reader.get(&format!("/api/v1/jobs/{id}"), "");
    // The connection is closed once nothing has been taken for 1 s; `api`'s is the only one left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = api.metrics().get("jobhost_server_connections", &[]);
        if open == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the unread answer's connection is still open ({open} open)");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (read, ended) = reader.read_until(Duration::from_secs(10), |_| None);
    assert_eq!(ended, Ended::Closed, "the server closed the connection");
    assert!(read.len() < blob.len(), "the answer was cut short ({} bytes read)", read.len());
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: refusals are the HTTP layer's, whatever the database. A client whose body
/// arrives in a later packet than its head (as a client under load sends it) must read the
/// refusal, and may send its next request on the same connection.
#[test]
fn a_refused_request_is_answered_and_its_connection_kept_when_its_body_comes_late() {
    let token = "the-full-token-0123456";
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", token)]);
    let quick = Duration::from_secs(5);
    let body = r#"{"processor": "echo"}"#;
    let mut connection = Raw::connect(&server);
    connection.send(
        format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The late packet is the scenario, not a wait for something: the body follows the head.
    std::thread::sleep(Duration::from_millis(300));
    connection.send(body.as_bytes());
    connection.expect_answer("a POST without a token", quick).expect_error(401, "unauthorized", None);
    connection.get("/healthz", "");
    let reply = connection.expect_answer("the next request on the same connection", quick);
    assert_eq!(reply.status, 200, "{}", reply.describe());
    assert_eq!(pool.all_jobs().len(), 0, "the refused POST enqueued nothing");
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

/// SQLite only: the edge limits are the HTTP layer's, whatever the database.
#[test]
fn oversized_and_malformed_requests_answer_in_json() {
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve(&[]);
    let quick = Duration::from_secs(5);
    let ask = |what: &str, request: &[u8]| {
        let mut connection = Raw::connect(&server);
        connection.send(request);
        let start = Instant::now();
        let reply = connection.expect_answer(what, quick);
        assert!(start.elapsed() < Duration::from_secs(2), "{what}: answered after {:?}", start.elapsed());
        (reply, connection)
    };
    let long_query = format!("x={}", "a".repeat(9 << 10));
    for path in ["/api/v1/jobs", "/"] {
        let (reply, _) =
            ask("a 9 KiB URI", format!("GET {path}?{long_query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        reply.expect_error(414, "uri_too_long", None);
    }
    let big_header = format!("X-Big: {}\r\n", "b".repeat(40 << 10));
    let (reply, _) = ask(
        "a 40 KiB header",
        format!("GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n{big_header}\r\n").as_bytes(),
    );
    reply.expect_error(431, "headers_too_large", None);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (reply, _) =
        ask("150 headers", format!("GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n").as_bytes());
    reply.expect_error(431, "headers_too_large", None);

    // A declared body over serve.max_body is refused before a byte of it is sent.
    let declared = b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                     Content-Length: 1073741824\r\n\r\n";
    let (reply, mut connection) = ask("Content-Length: 1 GiB", declared);
    let error = reply.expect_error(413, "body_too_large", None);
    assert!(error["message"].as_str().unwrap().contains("1073741824"), "{error}");
    assert!(connection.closed_within(quick), "the connection is closed: its body is unread");

    // A chunked body whose chunk size is not hexadecimal.
    let chunked = b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let (reply, _) = ask("a malformed chunked body", chunked);
    reply.expect_error(400, "bad_request", None);

    // Past hyper's own limit (a 64 KiB URI) hyper answers alone, without a body: the last resort.
    let huge = format!("GET /api/v1/jobs?x={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a".repeat(70 << 10));
    let (reply, _) = ask("a 70 KiB URI", huge.as_bytes());
    assert_eq!((reply.status, reply.text.as_str()), (414, ""), "{}", reply.describe());
    assert_eq!(total(&pool), 0);
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------------
// The Python example (docs/examples/enqueue_and_wait.py)
// ------------------------------------------------------------------------------------------

/// Starts the standard-library Python example at `base`, with `token` in
/// `$JOBHOST_TOKEN` when given.
fn python_example(base: &str, token: Option<&str>) -> KillOnDrop {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/enqueue_and_wait.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(base).env_remove("JOBHOST_URL").env_remove("JOBHOST_TOKEN").stdin(Stdio::null());
    if let Some(token) = token {
        command.env("JOBHOST_TOKEN", token);
    }
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3 runs");
    KillOnDrop(Some(child))
}

/// A child process killed if the test ends first.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait_at_most(mut self, timeout: Duration) -> Output {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!("the example did not exit within {timeout:?}: {}", String::from_utf8_lossy(&output.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SQLite only: the example is a client of the HTTP API, whatever the database.
#[test]
fn the_python_example_enqueues_waits_and_prints_the_result() {
    let token = "a-long-enough-token-123";
    let pool = empty_pool(Backend::Sqlite, "");
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", token)]);
    let api = Api::with_token(&server, token);

    // It queues a job and long-polls; a worker finishes the job; it prints the result.
    let example = python_example(&server.base, Some(token));
    api.wait_for_waiters(1.0);
    let (jobs, _) = api.list("limit=10");
    assert_eq!(jobs.len(), 1, "the example queued one job");
    let id = jobs[0]["id"].as_str().unwrap().to_owned();
    work(&pool, &[]);
    let output = example.wait_at_most(Duration::from_secs(60));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "the job completed: {stderr}");
    assert!(stderr.contains(&format!("queued {id}")), "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("the result is JSON: {e}: {stdout}"));
    assert_eq!(printed, api.job(&id)["result"], "it prints the job's result");
    assert_eq!(printed["echo"], json!({"greeting": "hello"}));

    // A job cancelled while it waits: exit 1, saying so.
    let example = python_example(&server.base, Some(token));
    api.wait_for_waiters(1.0);
    let (jobs, _) = api.list("status=pending");
    let id = jobs[0]["id"].as_str().unwrap().to_owned();
    api.post_empty(&format!("/api/v1/jobs/{id}/cancel")).expect(200);
    let output = example.wait_at_most(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("job {id} is cancelled")), "{stderr}");

    // A refused request (no token, a wrong one) or no server at all: exit 2 with the reason.
    for wrong in [None, Some("not-the-token-at-all")] {
        let output = python_example(&server.base, wrong).wait_at_most(Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("unauthorized"), "the API's error code is shown: {stderr}");
    }
    assert_eq!(total(&pool), 2, "the refused runs queued nothing");
    let base = server.base.clone();
    assert_eq!(server.stop(Duration::from_secs(20)).code(), Some(0));
    let output = python_example(&base, Some(token)).wait_at_most(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

/// `serve` deletes the completed jobs older than `retention.completed`: their gauge goes to
/// 0, but what `/metrics` counts (jobs queued, attempts, claims) does not go back; unfinished
/// jobs stay; SIGTERM still stops the server cleanly.
fn serve_deletes_expired_jobs_and_its_counters_do_not_go_back(backend: Backend) {
    let pool = empty_pool(backend, "retention: {completed: 2s, interval: 100ms}\n");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let done = api.enqueue_batch(&vec![json!({"processor": "echo", "pool": "done"}); 2]);
    work(&pool, &["--pool", "done"]);
    pool.ok(&["seed", "--pool", "done", "--delay", "1h"]);
    let done_in = |status| [("pool", "done"), ("status", status)];
    let echo_done = [("pool", "done"), ("processor", "echo")];
    let ok = [echo_done[0], echo_done[1], ("outcome", "ok")];
    let counters = |metrics: &Metrics| {
        [
            metrics.get("jobhost_enqueued_jobs_total", &echo_done),
            metrics.get("jobhost_attempts_total", &ok),
            metrics.get("jobhost_claims_total", &[("pool", "done")]),
        ]
    };
    let before = api.metrics();
    assert_eq!(before.get("jobhost_jobs", &done_in("completed")), 2.0, "not deleted yet: they are younger than 2s");
    assert_eq!(counters(&before), [3.0, 2.0, 2.0]);

    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let metrics = api.metrics();
        if metrics.value("jobhost_jobs", &done_in("completed")).unwrap_or(0.0) == 0.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the completed jobs were never deleted:\n{}", metrics.text);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counters(&after), counters(&before), "counters do not go back when jobs are deleted");
    assert_eq!(after.get("jobhost_jobs", &done_in("pending")), 1.0, "an unfinished job is kept");
    for id in &done {
        assert_eq!(api.get(&format!("/api/v1/jobs/{id}")).status, 404, "job {id} is deleted");
    }
    assert!(server.stop(Duration::from_secs(30)).success(), "serve exits cleanly on SIGTERM");
}

/// Unique keys through the API: a held key is answered with its holder (200, nothing
/// queued), a batch answers each item, `replace` debounces, and bad fields are named.
fn unique_keys_answer_with_the_holder_and_debounce(backend: Backend) {
    let pool = empty_pool(backend, "");
    let server = pool.serve(&[]);
    let api = Api::new(&server);
    let holder = api.enqueue(&json!({"processor": "echo", "unique_key": "order-1"}));
    let again = api.post("/api/v1/jobs", &json!({"processor": "echo", "unique_key": "order-1"})).expect(200);
    assert_eq!(again, json!({"id": holder, "outcome": "duplicate"}));
    assert_eq!(api.job(&holder)["unique_key"], "order-1", "the job shows the key it holds");
    let cli = pool.json(&["jobs", "show", &holder]);
    assert_eq!(cli["unique_key"], "order-1");
    assert!(pool.ok(&["jobs", "show", &holder]).contains("unique key order-1"));

    let batch = json!({"jobs": [
        {"processor": "echo", "unique_key": "order-2"},
        {"processor": "echo", "unique_key": "order-2"},
        {"processor": "echo", "unique_key": "order-1"},
        {"processor": "echo"},
    ]});
    let answered = api.post("/api/v1/jobs", &batch).expect(201);
    let ids = strings(&answered["ids"]);
    assert_eq!(
        answered["jobs"],
        json!([
            {"id": ids[0], "outcome": "queued"},
            {"id": ids[0], "outcome": "duplicate"},
            {"id": holder, "outcome": "duplicate"},
            {"id": ids[3], "outcome": "queued"},
        ])
    );
    assert_eq!(total(&pool), 3);

    let debounced = |n: u32| {
        json!({"processor": "echo", "unique_key": "user-7", "replace": true, "delay": "1h",
                                    "payload": {"n": n}})
    };
    let first = api.enqueue(&debounced(1));
    for n in 2..=5 {
        let replaced = api.post("/api/v1/jobs", &debounced(n)).expect(200);
        assert_eq!(replaced, json!({"id": first, "outcome": "replaced"}));
    }
    assert_eq!(api.job(&first)["payload"], json!({"n": 5}), "the last payload of the burst");

    let within = json!({"processor": "echo", "unique_key": "daily", "unique_within": "1h"});
    api.enqueue(&within);
    for (body, field, expected) in [
        (json!({"processor": "echo", "replace": true}), "unique_key", "unique_key is required with replace"),
        (json!({"processor": "echo", "unique_within": "1h"}), "unique_key", "unique_key is required"),
        (json!({"processor": "echo", "unique_key": ""}), "unique_key", "must be 1 to 128 bytes"),
        (json!({"processor": "echo", "unique_key": "a", "unique_within": "soon"}), "unique_within", "not a duration"),
        (json!({"jobs": [{"processor": "echo", "unique_key": 5}]}), "jobs[0].unique_key", "expected a string"),
    ] {
        let refused = api.post("/api/v1/jobs", &body).expect_error(422, "invalid_field", Some(field));
        assert!(refused["message"].as_str().unwrap().contains(expected), "{body}: {refused}");
    }
    assert_eq!(total(&pool), 5, "refused requests queued nothing");
}

on_both_backends!(
    unique_keys_answer_with_the_holder_and_debounce,
    serve_deletes_expired_jobs_and_its_counters_do_not_go_back,
    enqueue_one_honours_every_field,
    enqueue_a_batch_returns_the_ids_in_order,
    get_job_shows_every_field_and_its_history_after_a_run,
    a_long_history_is_paged_behind_the_latest_attempts,
    list_filters_and_walks_every_page_once,
    retry_and_cancel_one_job,
    bulk_retry_and_cancel_by_ids_and_by_filter,
    status_is_exactly_the_clis,
    pools_lists_every_pool,
    pools_are_paused_and_resumed_over_the_api,
    workers_lists_a_finished_worker_with_its_host_and_pid,
    metrics_report_a_known_state,
    long_poll_answers_when_a_worker_finishes_the_job,
    long_poll_times_out_with_the_job_as_it_is_and_bad_waits_are_refused,
    sigterm_still_answers_an_in_flight_long_poll,
    long_polls_leave_room_for_short_requests,
    read_only_refuses_every_post_and_changes_nothing,
    bodies_that_are_not_json_objects_are_refused,
    bad_fields_are_refused_by_name_and_insert_nothing,
    payloads_are_checked_as_seed_checks_them,
    bad_listings_and_bulk_requests_are_refused_by_name,
);
