//! The dashboard of `jobhost serve` in a real browser: Debian's headless Chromium
//! (`/usr/bin/chromium`) driven over WebDriver by its ChromeDriver (`/usr/bin/chromedriver`),
//! which `scripts/test` installs. Without them these tests fail; they are never skipped.
//!
//! Each test starts its own ChromeDriver on a free port, a browser with a fresh profile, and a
//! server on a fresh SQLite pool, then reads the pages through the selectors the dashboard
//! promises (`data-count`, `#job-status`, `#attempts`, …). Every page visited is saved as a
//! PNG under `target/tmp/browser-screenshots/<test name>/`, to look at when a test fails.

mod support;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Pool;
use webdriver::{CmdError, Session};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The tests run as root, where Chromium's sandbox will not start, on machines that reach no
/// outside hosts: without the background-networking flags Chromium keeps trying and floods its log.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];
/// How long a page may take to show what a test waits for.
const PAGE_DEADLINE: Duration = Duration::from_secs(10);
/// How long ChromeDriver may take to answer its `/status`.
const DRIVER_DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "browser-test-token-0123456789";

/// A ChromeDriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Driver {
    /// Starts ChromeDriver on a free port of 127.0.0.1 and waits until its `/status` says it is
    /// ready; its output goes to `log`.
    fn start(log: PathBuf) -> Driver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the browser tests need Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`, which ./scripts/test runs)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let output = File::create(&log).expect("create chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // Chromium's own stderr too, which says why it would not start.
            .arg("--enable-chrome-logs")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut driver = Driver { child, url: format!("http://127.0.0.1:{port}"), log };
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
        let deadline = Instant::now() + DRIVER_DEADLINE;
        loop {
            let status = agent
                .get(format!("{}/status", driver.url))
                .call()
                .ok()
                .and_then(|mut response| response.body_mut().read_json::<Value>().ok());
            if status.as_ref().is_some_and(|status| status["value"]["ready"] == true) {
                return driver;
            }
            if let Some(exit) = driver.child.try_wait().expect("try_wait chromedriver") {
                panic!("{CHROMEDRIVER} exited ({exit}) before it was ready:\n{}", driver.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{CHROMEDRIVER} did not answer /status as ready within {DRIVER_DEADLINE:?} \
                 (last answer: {status:?}):\n{}",
                driver.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of ChromeDriver's and Chromium's output.
    fn log_text(&self) -> String {
        const SHOWN: usize = 40;
        let log = match std::fs::read_to_string(&self.log) {
            Ok(log) => log,
            Err(e) => return format!("(no log at {}: {e})", self.log.display()),
        };
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(SHOWN)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session, with blocking methods so tests can mix it with the `jobhost` helpers.
/// Waits poll the DOM until a condition holds or [`PAGE_DEADLINE`] passes, then fail with the
/// URL and the page's `<main>`.
struct Browser {
    session: Session,
    shots: PathBuf,
    // Dropped after the session is closed: the driver, then its scratch folder and profile.
    _driver: Driver,
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// A fresh browser for the test `name`, whose screenshots go to
    /// `target/tmp/browser-screenshots/<name>/` (emptied first).
    fn start(name: &str) -> Browser {
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots").join(name);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("create the screenshots folder");
        let scratch = tempfile::tempdir().expect("temp dir");
        let driver = Driver::start(scratch.path().join("chromedriver.log"));
        let profile = scratch.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| flag.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"pageLoad": 15_000, "script": 5_000, "implicit": 0},
        });
        let session = Session::start(&driver.url, capabilities).unwrap_or_else(|e| {
            panic!("ChromeDriver could not start {CHROMIUM}: {e}\nthe end of its log:\n{}", driver.log_text())
        });
        Browser { session, shots, _driver: driver, _scratch: scratch }
    }

    fn goto(&self, url: &str) {
        self.session.goto(url).unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    fn path(&self) -> String {
        self.session.path().expect("the current URL")
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    fn script(&self, script: &str, args: Vec<Value>) -> Result<Value, CmdError> {
        self.session.execute(script, args)
    }

    /// The trimmed text of the first element `css` matches, if any.
    fn try_text(&self, css: &str) -> Result<Option<String>, CmdError> {
        let text = self.script(
            "const e = document.querySelector(arguments[0]); return e && e.textContent.trim();",
            vec![json!(css)],
        )?;
        Ok(text.as_str().map(str::to_owned))
    }

    /// The trimmed text of the first element `css` matches; fails when there is none.
    fn text(&self, css: &str) -> String {
        match self.try_text(css) {
            Ok(Some(text)) => text,
            Ok(None) => self.fail(&format!("no element matches {css}")),
            Err(e) => self.fail(&format!("cannot read {css}: {e}")),
        }
    }

    /// The trimmed texts of every element `css` matches, in document order.
    fn texts(&self, css: &str) -> Vec<String> {
        let texts = self
            .script(
                "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim());",
                vec![json!(css)],
            )
            .unwrap_or_else(|e| self.fail(&format!("cannot read {css}: {e}")));
        texts.as_array().expect("an array").iter().map(|text| text.as_str().unwrap_or_default().to_owned()).collect()
    }

    /// The value of attribute `name` on every element `css` matches, in document order.
    fn try_attributes(&self, css: &str, name: &str) -> Result<Vec<String>, CmdError> {
        let values = self.script(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]));",
            vec![json!(css), json!(name)],
        )?;
        let values = values.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(values.iter().map(|value| value.as_str().unwrap_or_default().to_owned()).collect())
    }

    fn attributes(&self, css: &str, name: &str) -> Vec<String> {
        self.try_attributes(css, name).unwrap_or_else(|e| self.fail(&format!("cannot read {css}: {e}")))
    }

    /// Polls `done` until it holds; errors (a page still loading) count as "not yet".
    fn wait_for(&self, what: &str, mut done: impl FnMut(&Browser) -> Result<bool, CmdError>) {
        let deadline = Instant::now() + PAGE_DEADLINE;
        loop {
            let last = done(self);
            if matches!(last, Ok(true)) {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {PAGE_DEADLINE:?} waiting for {what} (last check: {last:?})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the first element `css` matches reads `expected`.
    fn wait_for_text(&self, css: &str, expected: &str) {
        self.wait_for(&format!("{css} to read {expected:?}"), |b| Ok(b.try_text(css)?.as_deref() == Some(expected)));
    }

    fn wait_for_path(&self, expected: &str) {
        self.wait_for(&format!("the page at {expected}"), |b| Ok(b.session.path()? == expected));
    }

    /// Clicks the first element `css` matches once it is there; a live refresh may replace it
    /// between finding and clicking, which only means finding it again.
    fn click(&self, css: &str) {
        self.wait_for(&format!("{css} to be clicked"), |b| {
            let clicked = b.session.find(css).and_then(|element| b.session.click(&element));
            match clicked {
                Ok(()) => Ok(true),
                Err(e) if e.is_gone_element() => Ok(false),
                Err(e) => b.fail(&format!("cannot click {css}: {e}")),
            }
        });
    }

    /// Replaces the text of the field `css` with `text`, typed key by key. A live refresh may
    /// replace the field before it has the focus (which then holds refreshes off), which only
    /// means finding it again.
    fn type_into(&self, css: &str, text: &str) {
        self.wait_for(&format!("{text:?} to be typed into {css}"), |b| {
            let typed = b.session.find(css).and_then(|field| {
                b.session.clear(&field)?;
                b.session.send_keys(&field, text)
            });
            match typed {
                Ok(()) => Ok(true),
                Err(e) if e.is_gone_element() => Ok(false),
                Err(e) => b.fail(&format!("cannot type into {css}: {e}")),
            }
        });
    }

    /// Saves what the browser shows as `<page>.png` in this test's screenshots folder.
    fn screenshot(&self, page: &str) {
        let png = self.session.screenshot().expect("a screenshot");
        std::fs::write(self.shots.join(format!("{page}.png")), png).expect("save the screenshot");
    }

    /// Fails the test with `message`, the URL, and the start of the page's `<main>` (or of
    /// the whole document when it has none).
    fn fail(&self, message: &str) -> ! {
        const SHOWN: usize = 4_000;
        let url = self.session.url().unwrap_or_else(|e| e.to_string());
        let html = self
            .script("const e = document.querySelector('main') || document.documentElement; return e.outerHTML;", vec![])
            .map_or_else(
                |e| format!("(cannot read the page: {e})"),
                |html| html.as_str().unwrap_or_default().to_owned(),
            );
        let end = html.char_indices().nth(SHOWN).map_or(html.len(), |(i, _)| i);
        let more = if end < html.len() { "…" } else { "" };
        panic!("{message}\nat {url}; the page (screenshots in {}):\n{}{more}", self.shots.display(), &html[..end]);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session quits Chromium; the driver is killed after.
        let _ = self.session.close();
    }
}

/// Polls `jobhost jobs show ID` until the job is in `status`.
fn wait_for_job_status(pool: &Pool, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        let job = pool.json(&["jobs", "show", id]);
        if job["status"] == status {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} is not {status} after {PAGE_DEADLINE:?}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the pool's jobs in `status`.
fn job_ids(pool: &Pool, status: &str) -> Vec<String> {
    let jobs = pool.json(&["jobs", "list", "--status", status]);
    jobs.as_array().expect("an array of jobs").iter().map(|job| job["id"].as_str().expect("an id").to_owned()).collect()
}

/// A pool holding `count` jobs of a processor that traps on every run, each poisoned after
/// its single attempt; returns the pool and the jobs' ids.
fn pool_with_poisoned_jobs(count: usize) -> (Pool, Vec<String>) {
    let pool = Pool::new("");
    pool.add_processor("trap.wat", "trap");
    pool.ok(&["seed", "--processor", "trap", "--max-attempts", "1", "--count", &count.to_string()]);
    pool.ok(&["work"]);
    let poisoned = job_ids(&pool, "poisoned");
    assert_eq!(poisoned.len(), count, "every trapping job ends poisoned: {}", pool.status());
    (pool, poisoned)
}

#[test]
fn the_overview_counts_the_seeded_jobs_and_lists_each_pool() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "4"]);
    pool.ok(&["work", "--once"]);
    pool.ok(&["seed", "--pool", "reports", "--count", "2"]);
    let server = pool.serve(&[]);
    let browser = Browser::start("the_overview_counts_the_seeded_jobs_and_lists_each_pool");

    browser.goto(&server.url("/"));
    browser.wait_for("the counts", |b| Ok(b.try_text(r#"[data-count="pending"]"#)?.is_some()));
    browser.screenshot("overview");
    let status = pool.status();
    for (which, expected) in [("pending", 5), ("claimed", 0), ("completed", 1), ("poisoned", 0), ("cancelled", 0)] {
        assert_eq!(support::jobs_count(&status, which), expected, "the seeded pool: {status}");
        assert_eq!(browser.text(&format!(r#"[data-count="{which}"]"#)), expected.to_string(), "{which} on /");
    }
    assert_eq!(browser.text(r#"[data-count="ready"]"#), "5", "ready on /");
    assert_eq!(browser.texts("svg#throughput").len(), 1, "the overview has its throughput chart");

    let mut pools = browser.attributes("#pools tr[data-pool]", "data-pool");
    pools.sort();
    assert_eq!(pools, ["default", "reports"], "one row per pool in #pools");
    let cells = |name: &str| browser.texts(&format!(r#"#pools tr[data-pool="{name}"] td"#));
    let default = cells("default");
    assert!(
        default.contains(&"3".to_owned()) && default.contains(&"1".to_owned()),
        "default: 3 pending, 1 completed: {default:?}"
    );
    let reports = cells("reports");
    assert!(reports.contains(&"2".to_owned()), "reports: 2 pending: {reports:?}");
}

#[test]
fn the_pause_and_resume_buttons_pause_a_pool_with_its_reason_and_resume_it() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--pool", "billing", "--count", "2"]);
    let server = pool.serve(&[]);
    let browser = Browser::start("the_pause_and_resume_buttons_pause_a_pool_with_its_reason_and_resume_it");
    let row = r#"#pools tr[data-pool="billing"]"#;
    let paused_pools = || pool.json(&["status"])["paused_pools"].clone();

    browser.goto(&server.url("/"));
    browser.wait_for_text(&format!("{row} td.state"), "running");
    browser.type_into(&format!(r#"{row} input[name="reason"]"#), "card processor down");
    browser.click(&format!("{row} button.pause"));
    browser.wait_for_path("/");
    browser.wait_for(&format!("{row} to show the pause"), |b| {
        Ok(b.try_text(&format!("{row} td.state"))?.is_some_and(|state| state.starts_with("paused since")))
    });
    browser.screenshot("pool-paused");
    assert_eq!(browser.text(&format!("{row} td.state .reason")), "card processor down", "the reason is shown");
    let paused = paused_pools();
    assert_eq!(paused[0]["pool"], "billing", "{paused}");
    assert_eq!(paused[0]["reason"], "card processor down", "{paused}");
    assert_eq!(pool.json(&["pools"])["pools"][0]["paused"], true, "`jobhost pools` agrees");

    browser.click(&format!("{row} button.resume"));
    browser.wait_for_text(&format!("{row} td.state"), "running");
    browser.screenshot("pool-resumed");
    assert_eq!(paused_pools(), json!([]), "resumed in the database");
}

#[test]
fn the_overview_shows_each_flow_limit_key_running_and_held_back() {
    let pool = Pool::new(
        "worker: {concurrency: 4}\nprocessors:\n  overrides:\n    echo:\n      flow: {max_running: 1, key: /tenant}\n",
    );
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"tenant": "acme", "delay_ms": 30000}"#]);
    let server = pool.serve(&[]);
    let _worker = pool.spawn_guarded(&["work"]);
    pool.wait_for_status(Duration::from_secs(60), "acme's first job running", |status| {
        support::jobs_count(status, "claimed") == 1
    });
    let browser = Browser::start("the_overview_shows_each_flow_limit_key_running_and_held_back");

    browser.goto(&server.url("/"));
    let row = r#"#limits tr[data-processor="echo"][data-key="acme"]"#;
    browser.wait_for_text(&format!("{row} td.held-back"), "2");
    browser.screenshot("flow-limits");
    assert_eq!(browser.text(&format!("{row} td.running")), "1", "one of acme's jobs runs");
    assert_eq!(browser.text(&format!("{row} td.key")), "/tenant = acme", "the key, with its pointer");
}

#[test]
fn the_overview_refreshes_its_counts_without_a_reload() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "2"]);
    let server = pool.serve(&[]);
    let browser = Browser::start("the_overview_refreshes_its_counts_without_a_reload");

    browser.goto(&server.url("/"));
    browser.wait_for_text(r#"[data-count="pending"]"#, "2");
    // A mark on the page's window: a full reload would start a new window without it.
    browser.script("window.jobhostMark = 'same page'; return null;", vec![]).expect("the mark is set");
    pool.ok(&["seed", "--count", "3"]);
    browser.wait_for_text(r#"[data-count="pending"]"#, "5");
    browser.screenshot("overview-refreshed");
    let mark = browser.script("return window.jobhostMark || null;", vec![]).expect("the mark is read");
    assert_eq!(mark, json!("same page"), "the counts changed without a page load");
}

#[test]
fn a_poisoned_job_page_shows_its_attempt_and_retry_makes_it_pending() {
    let (pool, poisoned) = pool_with_poisoned_jobs(1);
    let id = &poisoned[0];
    let server = pool.serve(&[]);
    let browser = Browser::start("a_poisoned_job_page_shows_its_attempt_and_retry_makes_it_pending");

    browser.goto(&server.url(&format!("/jobs/{id}")));
    browser.wait_for_text("#job-status", "poisoned");
    browser.screenshot("job-poisoned");
    let payload: Value = serde_json::from_str(&browser.text("#payload"))
        .unwrap_or_else(|e| browser.fail(&format!("#payload is not the job's JSON: {e}")));
    assert_eq!(payload, json!({"seq": 0}), "#payload");
    assert_eq!(browser.attributes("#attempts tr[data-attempt]", "data-attempt"), ["1"], "one attempt row");
    assert_eq!(browser.text(r#"#attempts tr[data-attempt="1"] td.outcome"#), "trap", "the attempt's outcome");
    let shown = pool.json(&["jobs", "show", id]);
    let code = shown["attempt_history"][0]["processor_sha256"].as_str().expect("the trap processor loaded");
    let cell = r#"#attempts tr[data-attempt="1"] td.code"#;
    assert_eq!(browser.text(cell), code[..12], "the code that ran, shortened");
    assert_eq!(browser.attributes(cell, "title"), [code], "the full hash on hover");

    browser.click("#retry");
    browser.wait_for_path(&format!("/jobs/{id}"));
    browser.wait_for_text("#job-status", "pending");
    browser.screenshot("job-retried");
    wait_for_job_status(&pool, id, "pending");
}

#[test]
fn a_waiting_job_page_links_the_job_it_waits_for_which_lists_it_as_needed() {
    let pool = Pool::new("");
    let seeded = |args: &[&str]| -> String {
        let answer = pool.json(&[&["seed", "--ids"][..], args].concat());
        answer["ids"][0].as_str().unwrap_or_else(|| panic!("seed --ids --json names the job: {answer}")).to_owned()
    };
    let parent = seeded(&[]);
    let child = seeded(&["--after", &parent]);
    let server = pool.serve(&[]);
    let browser = Browser::start("a_waiting_job_page_links_the_job_it_waits_for_which_lists_it_as_needed");

    browser.goto(&server.url(&format!("/jobs/{child}")));
    let parent_item = format!(r#"#parents li[data-job="{parent}"]"#);
    browser.wait_for_text(&format!("{parent_item} .status"), "pending");
    browser.screenshot("child-waiting");
    assert_eq!(browser.text("#job-status"), "pending", "the child is pending");
    assert_eq!(
        browser.text("#run-at"),
        "when 1 more of the jobs it waits for complete",
        "the waiting child has no time to run yet, not the end of time"
    );
    assert_eq!(browser.attributes("#parents li[data-job]", "data-job"), [parent.as_str()], "its one parent");
    assert_eq!(browser.texts("#children li").len(), 0, "nothing waits for the child");

    browser.click(&format!(r#"{parent_item} a[href="/jobs/{parent}"]"#));
    browser.wait_for_path(&format!("/jobs/{parent}"));
    let child_item = format!(r#"#children li[data-job="{child}"]"#);
    browser.wait_for_text(&format!("{child_item} .status"), "pending");
    browser.screenshot("parent-needed-by");
    assert_eq!(browser.attributes("#children li[data-job]", "data-job"), [child.as_str()], "its one child");
    assert_eq!(browser.attributes(&format!("{child_item} a"), "href"), [format!("/jobs/{child}")], "linked");
    assert_eq!(browser.texts("#parents li").len(), 0, "the parent waits for nothing");
    let ready = browser.text("#run-at");
    assert!(ready.starts_with(|c: char| c.is_ascii_digit()) && ready.ends_with('Z'), "a time: {ready}");
}

#[test]
fn bulk_retry_on_the_jobs_list_sends_only_the_selected_job_back_to_pending() {
    let (pool, poisoned) = pool_with_poisoned_jobs(2);
    let (chosen, other) = (&poisoned[0], &poisoned[1]);
    let server = pool.serve(&[]);
    let browser = Browser::start("bulk_retry_on_the_jobs_list_sends_only_the_selected_job_back_to_pending");

    browser.goto(&server.url("/jobs?status=poisoned"));
    browser.wait_for("both poisoned jobs in #jobs", |b| {
        Ok(b.try_attributes("#jobs tr[data-job]", "data-job")?.len() == 2)
    });
    browser.screenshot("jobs-poisoned");
    let mut listed = browser.attributes("#jobs tr[data-job]", "data-job");
    listed.sort();
    let mut expected = poisoned.clone();
    expected.sort();
    assert_eq!(listed, expected, "the rows of /jobs?status=poisoned");
    for id in &poisoned {
        let links = browser.attributes(&format!(r#"#jobs tr[data-job="{id}"] a[href="/jobs/{id}"]"#), "href");
        assert_eq!(links.len(), 1, "the row of {id} links to its page");
    }

    browser.click(&format!(r#"#jobs tr[data-job="{chosen}"] input[type="checkbox"][name="id"][value="{chosen}"]"#));
    // "Retry selected": the rows ticked, not every job the filter matches (that is "retry-matching").
    browser.click(r#"#bulk button[name="action"][value="retry"]"#);
    wait_for_job_status(&pool, chosen, "pending");
    browser.wait_for("the retried job to leave the poisoned list", |b| {
        Ok(b.try_attributes("#jobs tr[data-job]", "data-job")? == [other.as_str()])
    });
    browser.screenshot("jobs-after-bulk-retry");
    assert_eq!(pool.json(&["jobs", "show", other])["status"], "poisoned", "the job not selected stays poisoned");
}

#[test]
fn with_a_token_the_dashboard_lets_in_only_the_right_one() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "2"]);
    let server = pool.serve_with(&[], &[("JOBHOST_TOKEN", TOKEN)]);
    let browser = Browser::start("with_a_token_the_dashboard_lets_in_only_the_right_one");

    browser.goto(&server.url("/"));
    browser.wait_for_path("/login");
    browser.wait_for("the login form", |b| Ok(b.try_text("#login")?.is_some() && b.try_text("#token")?.is_some()));
    browser.screenshot("login");
    assert_eq!(browser.texts("[data-count]").len(), 0, "no counts before logging in");

    browser.type_into("#token", "not-the-token-0123456789");
    browser.click("#login");
    browser.wait_for("#login-error", |b| Ok(b.try_text("#login-error")?.is_some_and(|text| !text.is_empty())));
    browser.screenshot("login-wrong-token");
    assert_eq!(browser.path(), "/login", "a wrong token stays on the login page");
    assert_eq!(browser.texts("[data-count]").len(), 0, "no counts with a wrong token");

    browser.type_into("#token", TOKEN);
    browser.click("#login");
    browser.wait_for_path("/");
    browser.wait_for_text(r#"[data-count="pending"]"#, "2");
    browser.screenshot("overview");
}

#[test]
fn the_workers_and_processors_pages_list_them_and_mark_a_broken_processor() {
    let pool = Pool::new("");
    pool.ok(&["seed"]);
    let summary = pool.ok(&["work", "--once", "--json"]);
    let summary: Value = serde_json::from_str(summary.lines().last().expect("a summary line")).expect("JSON");
    let worker = summary["worker_id"].as_str().expect("the worker's id").to_owned();
    std::fs::write(pool.path("processors/broken.wasm"), b"garbage\xff\x00").unwrap();
    let server = pool.serve(&[]);
    let browser = Browser::start("the_workers_and_processors_pages_list_them_and_mark_a_broken_processor");

    browser.goto(&server.url("/workers"));
    browser.wait_for("#workers", |b| Ok(b.try_text("#workers")?.is_some()));
    browser.screenshot("workers");
    let workers = browser.text("#workers");
    assert!(workers.contains(&worker), "#workers names worker {worker}: {workers}");

    browser.goto(&server.url("/processors"));
    browser.wait_for("#processors", |b| Ok(b.try_text("#processors")?.is_some()));
    browser.screenshot("processors");
    let healthy = browser.texts("#processors tr:not(.broken)");
    assert!(healthy.iter().any(|row| row.starts_with("echo")), "the built-in echo is listed as healthy: {healthy:?}");
    let broken = browser.texts("#processors tr.broken");
    assert!(
        broken.iter().any(|row| row.contains("processors/broken.wasm") && row.contains("is not WebAssembly")),
        "a tr.broken row names broken.wasm and its error: {broken:?}"
    );
    assert!(!broken.iter().any(|row| row.contains("echo")), "echo is not marked broken: {broken:?}");
}

/// The few W3C WebDriver commands these tests send, as blocking JSON over HTTP: a client of
/// our own, because a WebDriver crate switches on features of crates jobhost itself uses
/// (syn's among them), and the build the tests make would then not serve `./scripts/demo`.
mod webdriver {
    use std::fmt;
    use std::time::Duration;

    use base64::Engine;
    use serde_json::{Value, json};

    /// The key that marks a JSON object as a reference to a page element.
    const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// A command that failed: the driver's answer (`no such element`, ...) or no answer.
    #[derive(Debug)]
    pub enum CmdError {
        Refused { error: String, message: String },
        Transport(String),
    }

    impl CmdError {
        /// The element was not there, or was replaced (a live refresh), when it was used.
        pub fn is_gone_element(&self) -> bool {
            matches!(self, CmdError::Refused { error, .. } if error == "no such element" || error == "stale element reference")
        }
    }

    impl fmt::Display for CmdError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                CmdError::Refused { error, message } => write!(f, "{error}: {message}"),
                CmdError::Transport(why) => write!(f, "no answer from the driver: {why}"),
            }
        }
    }

    /// An element of the current page, as the driver knows it.
    pub struct Element(String);

    pub struct Session {
        agent: ureq::Agent,
        /// `<driver>/session/<id>`: every command's URL starts with it.
        base: String,
    }

    impl Session {
        /// Opens a browser with `capabilities` (W3C `alwaysMatch`).
        pub fn start(driver: &str, capabilities: Value) -> Result<Session, CmdError> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                // Far above a page load (15 s, set in the capabilities): a hung driver fails.
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            let mut session = Session { agent, base: format!("{driver}/session") };
            let opened = session.send("POST", "", Some(json!({"capabilities": {"alwaysMatch": capabilities}})))?;
            let id = opened["sessionId"]
                .as_str()
                .ok_or_else(|| CmdError::Transport(format!("no session id in {opened}")))?;
            session.base = format!("{}/{id}", session.base);
            Ok(session)
        }

        pub fn goto(&self, url: &str) -> Result<(), CmdError> {
            self.send("POST", "/url", Some(json!({"url": url}))).map(drop)
        }

        pub fn url(&self) -> Result<String, CmdError> {
            let url = self.send("GET", "/url", None)?;
            Ok(url.as_str().unwrap_or_default().to_owned())
        }

        /// The current URL's path, without its query or fragment.
        pub fn path(&self) -> Result<String, CmdError> {
            let url = self.url()?;
            let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
            let path = after_scheme.find('/').map_or("/", |start| &after_scheme[start..]);
            Ok(path.split(['?', '#']).next().unwrap_or("/").to_owned())
        }

        /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
        pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, CmdError> {
            self.send("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
        }

        /// The first element `css` matches.
        pub fn find(&self, css: &str) -> Result<Element, CmdError> {
            let found = self.send("POST", "/element", Some(json!({"using": "css selector", "value": css})))?;
            let id =
                found[ELEMENT_KEY].as_str().ok_or_else(|| CmdError::Transport(format!("no element in {found}")))?;
            Ok(Element(id.to_owned()))
        }

        pub fn click(&self, element: &Element) -> Result<(), CmdError> {
            self.send("POST", &format!("/element/{}/click", element.0), Some(json!({}))).map(drop)
        }

        pub fn clear(&self, element: &Element) -> Result<(), CmdError> {
            self.send("POST", &format!("/element/{}/clear", element.0), Some(json!({}))).map(drop)
        }

        /// Types `text` into `element`, key by key.
        pub fn send_keys(&self, element: &Element, text: &str) -> Result<(), CmdError> {
            self.send("POST", &format!("/element/{}/value", element.0), Some(json!({"text": text}))).map(drop)
        }

        /// What the browser shows, as PNG.
        pub fn screenshot(&self) -> Result<Vec<u8>, CmdError> {
            let png = self.send("GET", "/screenshot", None)?;
            base64::engine::general_purpose::STANDARD
                .decode(png.as_str().unwrap_or_default())
                .map_err(|e| CmdError::Transport(format!("the screenshot is not base64: {e}")))
        }

        /// Ends the session, which quits the browser.
        pub fn close(&self) -> Result<(), CmdError> {
            self.send("DELETE", "", None).map(drop)
        }

        /// Sends one command; its answer's `value`, or the error the driver named in it.
        fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CmdError> {
            let url = format!("{}{path}", self.base);
            let answer = match (method, body) {
                ("GET", _) => self.agent.get(&url).call(),
                ("DELETE", _) => self.agent.delete(&url).call(),
                (_, body) => self.agent.post(&url).send_json(body.unwrap_or_else(|| json!({}))),
            };
            let mut answer = answer.map_err(|e| CmdError::Transport(format!("{method} {url}: {e}")))?;
            let ok = answer.status().is_success();
            let mut reply: Value =
                answer.body_mut().read_json().map_err(|e| CmdError::Transport(format!("{method} {url}: {e}")))?;
            let value = reply["value"].take();
            if ok {
                return Ok(value);
            }
            Err(CmdError::Refused {
                error: value["error"].as_str().unwrap_or("unknown error").to_owned(),
                message: value["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }
}
