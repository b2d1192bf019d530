//! The dashboard: HTML pages rendered on the server (maud escapes every value put in them),
//! so every page reads and every action works without JavaScript. A small script
//! (`assets/live.js`) refreshes each page's `<main>` every two seconds without a reload.
//! Every asset is compiled into the binary, and no page has inline script or style, so the
//! content security policy (see `auth`) lets nothing else run. (The processors page, whose
//! listing loads every processor, is left out of the refresh.)
//!
//! Pages: the overview (counts, throughput over the last hour, pools, each paused or
//! running with a button to pause or resume it, and what each flow limit runs and holds
//! back per key), jobs (filters,
//! pages, bulk retry and cancel), one job (payload, result, the jobs it waits for and those
//! waiting for it, its latest attempts), its older
//! attempts a page at a time, workers, processors, and schedules. Actions are POST forms carrying the
//! caller's CSRF token, answered with a redirect back (303), so a reload never repeats them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use jobhost_core::outcome::OutcomeKind;
use jobhost_store::{Activity, AttemptRecord, JobLink, JobStatus, Millis};

use super::App;
use super::api::{Action, BulkRequest, FilterRequest, ListQuery, WorkerQuery, query};
use super::auth::{Caller, Client, SESSION_COOKIE, SignIn, csrf_refused, too_many_failures};
use super::error::ApiError;
use crate::output::format_time;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/live.js");

/// A failure shown as a page rather than as JSON.
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> PageError {
        PageError(err)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = layout(
            "Error",
            None,
            html! {
                h1 { "Something went wrong" }
                p.error { (self.0.message) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        (self.0.status, page).into_response()
    }
}

type Page = Result<Markup, PageError>;

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

fn layout(title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jobhost" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "jobhost" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/jobs" { "Jobs" }
                        a href="/workers" { "Workers" }
                        a href="/processors" { "Processors" }
                        a href="/schedules" { "Schedules" }
                    }
                    @if let Some(caller) = caller {
                        @if caller.read_only { span.badge { "read-only" } }
                        @if caller.signed_in {
                            form.signout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(caller.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn age(ms: Option<Millis>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{} min", ms / 60_000),
        Some(ms) => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn time(ms: Option<Millis>) -> String {
    ms.map_or_else(|| "-".to_owned(), format_time)
}

pub async fn overview(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Page {
    let status = app.store().status(None).await.map_err(ApiError::from)?;
    let pools = app.store().pools().await.map_err(ApiError::from)?;
    let activity = app.store().activity().await.map_err(ApiError::from)?;
    let limits = app.flow_usage().await?;
    // Every status, with the ready part of pending beside it.
    let mut counts: Vec<(&str, u64)> = status.jobs.by_status().map(|(status, count)| (status.as_str(), count)).to_vec();
    counts.insert(1, ("ready", status.ready));
    let body = html! {
        h1 { "Overview" }
        table #counts .counts {
            tr { @for (name, _) in &counts { th { (name) } } }
            tr { @for (name, count) in &counts { td data-count=(name) { (count) } } }
        }
        p.muted {
            "Workers: " (status.workers.active) " active, " (status.workers.starting) " starting, "
            (status.workers.lost) " lost. Oldest ready job waiting: " (age(status.oldest_ready_age_ms)) "."
        }
        h2 { "Throughput, last hour" }
        (throughput(&activity))
        h2 { "Pools" }
        table #pools {
            thead { tr { th { "Pool" } th { "State" } th { "Pending" } th { "Ready" } th { "Oldest ready" } th { "Claimed" } th { "Completed" } th { "Poisoned" } th { "Cancelled" } @if !caller.read_only { th {} } } }
            tbody {
                @for pool in &pools {
                    tr data-pool=(pool.pool) class=[pool.paused.then_some("paused")] {
                        td { a href={ "/jobs?pool=" (urlencode(&pool.pool)) } { (pool.pool) } }
                        td.state title=[pool.paused_reason.as_deref()] {
                            @if pool.paused { "paused since " (time(pool.paused_at)) } @else { "running" }
                            @if let Some(reason) = &pool.paused_reason { br; span.muted.reason { (reason) } }
                        }
                        td { (pool.jobs.pending) } td { (pool.ready) } td { (age(pool.oldest_ready_age_ms)) }
                        td { (pool.jobs.claimed) } td { (pool.jobs.completed) }
                        td { a href={ "/jobs?status=poisoned&pool=" (urlencode(&pool.pool)) } { (pool.jobs.poisoned) } }
                        td { (pool.jobs.cancelled) }
                        @if !caller.read_only {
                            td.actions {
                                @let action = if pool.paused { "resume" } else { "pause" };
                                form method="post" action={ "/pools/" (urlencode(&pool.pool)) "/" (action) } {
                                    input type="hidden" name="csrf" value=(caller.csrf);
                                    @if pool.paused {
                                        button.resume type="submit" { "Resume" }
                                    } @else {
                                        input type="text" name="reason" placeholder="reason (optional)" aria-label="reason";
                                        button.pause type="submit" { "Pause" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if pools.is_empty() { tr { td colspan="10" .muted { "No jobs yet." } } }
            }
        }
        @if !app.config.flow_limits().is_empty() {
            h2 { "Flow limits" }
            table #limits {
                thead { tr { th { "Processor" } th { "Key" } th { "Max running" } th { "Rate" } th { "Running" } th { "Started in period" } th { "Held back" } } }
                tbody {
                    @for usage in &limits {
                        tr data-processor=(usage.processor) data-key=(usage.key) {
                            td { (usage.processor) }
                            td.key { @if let Some(pointer) = &usage.key_pointer { span.muted { (pointer) " = " } (usage.key) } @else { span.muted { "all" } } }
                            td { @if let Some(max) = usage.max_running { (max) } @else { "-" } }
                            td { @if let Some(rate) = &usage.rate { (rate) } @else { "-" } }
                            td.running { (usage.running) }
                            td { (usage.started_in_period) }
                            td.held-back { (usage.held_back) }
                        }
                    }
                    @if limits.is_empty() { tr { td colspan="7" .muted { "Nothing runs or waits under a limit." } } }
                }
            }
        }
    };
    Ok(layout("Overview", Some(&caller), body))
}

/// Completed and failed attempts per minute as an inline SVG bar chart (no script needed).
fn throughput(activity: &Activity) -> Markup {
    const MINUTES: i64 = 60;
    const WIDTH: i64 = 12;
    const HEIGHT: f64 = 120.0;
    let bars: Vec<(i64, u64, u64)> = (0..MINUTES)
        .map(|i| {
            let minute = activity.this_minute - MINUTES + 1 + i;
            let (ok, failed) = activity.per_minute.get(&minute).copied().unwrap_or_default();
            (i, ok, failed)
        })
        .collect();
    let peak = bars.iter().map(|(_, ok, failed)| ok + failed).max().unwrap_or(0).max(1) as f64;
    let (total_ok, total_failed) = bars.iter().fold((0, 0), |(a, b), (_, ok, failed)| (a + ok, b + failed));
    html! {
        svg #throughput viewBox={ "0 0 " (MINUTES * WIDTH) " " (HEIGHT + 2.0) } role="img"
            aria-label={ (total_ok) " completed and " (total_failed) " failed attempts in the last hour" } {
            @for (i, ok, failed) in &bars {
                @let ok_height = *ok as f64 / peak * HEIGHT;
                @let failed_height = *failed as f64 / peak * HEIGHT;
                @if *ok > 0 {
                    rect.ok x=(i * WIDTH) y=(HEIGHT - ok_height) width=(WIDTH - 2) height=(ok_height) {
                        title { (ok) " completed" }
                    }
                }
                @if *failed > 0 {
                    rect.failed x=(i * WIDTH) y=(HEIGHT - ok_height - failed_height) width=(WIDTH - 2) height=(failed_height) {
                        title { (failed) " failed" }
                    }
                }
            }
        }
        p.muted.legend {
            span.swatch.ok {} " completed (" (total_ok) ")  " span.swatch.failed {} " failed attempts (" (total_failed) ")"
            " per minute; peak " (peak as u64) "/min."
        }
    }
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The listing's filter as a query string (without the cursor), to carry across pages.
fn filter_query(query: &ListQuery) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("pool", &query.pool), ("status", &query.status), ("processor", &query.processor)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            serializer.append_pair(key, value);
        }
    }
    serializer.finish()
}

pub async fn jobs(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, RawQuery(raw): RawQuery) -> Page {
    // The dashboard's own parameter (a notice after an action) is not a filter.
    let raw = raw.unwrap_or_default();
    let notice = form_urlencoded::parse(raw.as_bytes()).find(|(key, _)| key == "notice").map(|(_, v)| v.into_owned());
    let filters: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(raw.as_bytes()).filter(|(key, value)| key != "notice" && !value.is_empty()),
        )
        .finish();
    let query: ListQuery = query(Some(&filters))?;
    let page = app.job_page(&query).await?;
    let filter = filter_query(&query);
    let statuses = JobStatus::ALL.map(JobStatus::as_str);
    let body = html! {
        h1 { "Jobs" }
        @if let Some(notice) = &notice { p.notice #notice { (notice) } }
        form.filters method="get" action="/jobs" {
            label { "Pool " input type="text" name="pool" value=(query.pool.as_deref().unwrap_or("")); }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in statuses {
                        option value=(status) selected[query.status.as_deref() == Some(status)] { (status) }
                    }
                }
            }
            label { "Processor " input type="text" name="processor" value=(query.processor.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        form #bulk method="post" action="/jobs/bulk" {
            input type="hidden" name="csrf" value=(caller.csrf);
            @for (key, value) in form_urlencoded::parse(filter.as_bytes()) {
                input type="hidden" name={ "filter_" (key) } value=(value);
            }
            @if !caller.read_only {
                p.actions {
                    button type="submit" name="action" value="retry" { "Retry selected" }
                    button type="submit" name="action" value="cancel" { "Cancel selected" }
                    button type="submit" name="action" value="retry-matching" { "Retry all matching" }
                    button type="submit" name="action" value="cancel-matching" { "Cancel all matching" }
                }
            }
            table #jobs {
                thead { tr { th {} th { "Id" } th { "Pool" } th { "Processor" } th { "Status" } th { "Attempts" } th { "Created" } th { "Last error" } } }
                tbody {
                    @for job in &page.jobs {
                        tr data-job=(job.id) class=(job.status.as_str()) {
                            td { input type="checkbox" name="id" value=(job.id) aria-label="select"; }
                            td.id { a href={ "/jobs/" (job.id) } { (job.id) } }
                            td { (job.pool) } td { (job.processor) }
                            td.status { (job.status.as_str()) }
                            td { (job.attempts) "/" (job.max_attempts) }
                            td { (format_time(job.created_at)) }
                            td.error { (job.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                    @if page.jobs.is_empty() { tr { td colspan="8" .muted { "No jobs match." } } }
                }
            }
        }
        @if let Some(cursor) = &page.next_cursor {
            p { a #next-page href={ "/jobs?" (filter) @if !filter.is_empty() { "&" } "cursor=" (urlencode(cursor)) } { "Next page →" } }
        }
    };
    Ok(layout("Jobs", Some(&caller), body))
}

pub async fn bulk(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    if !caller.csrf_matches(&field("csrf").unwrap_or_default()) {
        return Ok(csrf_refused());
    }
    let filter = FilterRequest {
        pool: field("filter_pool"),
        status: field("filter_status"),
        processor: field("filter_processor"),
        ..FilterRequest::default()
    };
    let ids: Vec<String> = fields.iter().filter(|(key, _)| key == "id").map(|(_, value)| value.clone()).collect();
    let (action, request) = match field("action").as_deref() {
        Some("retry") => (Action::Retry, BulkRequest::ids(ids)),
        Some("cancel") => (Action::Cancel, BulkRequest::ids(ids)),
        Some("retry-matching") => (Action::Retry, BulkRequest::filter(filter)),
        Some("cancel-matching") => (Action::Cancel, BulkRequest::filter(filter)),
        _ => return Err(ApiError::invalid_json("unknown action: use the buttons of the jobs page").into()),
    };
    let back: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter().filter_map(|(key, value)| Some((key.strip_prefix("filter_")?, value))))
        .finish();
    let answer = app.act_on_many(action, request).await?;
    let verb = if action == Action::Retry { "retried" } else { "cancelled" };
    let mut notice = format!("{verb} {} job(s)", answer.count);
    if let Some(refused) = answer.refused.filter(|refused| !refused.is_empty()) {
        notice.push_str(&format!("; {} could not be: {}", refused.len(), refused[0].message));
    }
    let location = format!("/jobs?{back}{}notice={}", if back.is_empty() { "" } else { "&" }, urlencode(&notice));
    Ok(Redirect::to(&location).into_response())
}

pub async fn job(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Page {
    let view = app.job(&id).await?;
    let job = &view.job;
    let pretty = |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
    let body = html! {
        h1 { "Job " span.id { (job.id) } }
        dl.fields {
            dt { "Status" } dd #job-status class=(job.status.as_str()) { (job.status.as_str()) }
            dt { "Pool" } dd { (job.pool) }
            dt { "Processor" } dd { (job.processor) }
            dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts) }
            dt { "Priority" } dd { (job.priority) }
            @if let Some(key) = &job.unique_key { dt { "Unique key" } dd #unique-key { (key) } }
            dt { "Created" } dd { (format_time(job.created_at)) }
            dt { "Runs at" } dd #run-at { (job.run_time().describe(format_time)) }
            @if !view.parents.is_empty() { dt { "Waits for" } dd { (job_links("parents", &view.parents, 0)) } }
            @if !view.children.is_empty() {
                dt { "Needed by" } dd { (job_links("children", &view.children, view.children_total)) }
            }
            dt { "Finished" } dd { (time(job.finished_at)) }
            @if let Some(worker) = &job.worker_id { dt { "Worker" } dd { (worker) " on " (job.host.as_deref().unwrap_or("an unknown host")) } }
            @if let Some(error) = &job.last_error { dt { "Last error" } dd.error { (error) } }
        }
        @if !caller.read_only {
            p.actions {
                @if matches!(job.status, JobStatus::Poisoned | JobStatus::Cancelled) {
                    form method="post" action={ "/jobs/" (job.id) "/retry" } {
                        input type="hidden" name="csrf" value=(caller.csrf);
                        button #retry type="submit" { "Retry" }
                    }
                }
                @if job.status == JobStatus::Pending {
                    form method="post" action={ "/jobs/" (job.id) "/cancel" } {
                        input type="hidden" name="csrf" value=(caller.csrf);
                        button #cancel type="submit" { "Cancel" }
                    }
                }
            }
        }
        h2 { "Payload" }
        pre #payload { (pretty(&view.payload)) }
        h2 { "Result" }
        pre #result { (view.result.as_ref().map_or_else(|| "-".to_owned(), pretty)) }
        h2 { "Attempts" }
        @if view.history_cursor.is_some() { p.muted { "The latest " (view.history.len()) " of " (job.attempts) "." } }
        (attempt_table(&view.history))
        @if let Some(cursor) = &view.history_cursor {
            p { a #older-attempts href=(older_attempts(&job.id, cursor)) { "Older attempts →" } }
        }
    };
    Ok(layout("Job", Some(&caller), body))
}

/// Other jobs (a job's parents or children) as the list `#id`, each linked to its page with
/// its status (coloured as the listings colour it); `total` counts them when the store
/// returned only the first ones.
fn job_links(id: &str, links: &[JobLink], total: u64) -> Markup {
    let more = total.saturating_sub(links.len() as u64);
    html! {
        ul.links id=(id) {
            @for link in links {
                li data-job=(link.id) class=(link.status.as_str()) {
                    a.id href={ "/jobs/" (urlencode(&link.id)) } { (link.id) } " " span.status { (link.status.as_str()) }
                }
            }
        }
        @if more > 0 { p.muted.more { "and " (more) " more" } }
    }
}

fn older_attempts(id: &str, cursor: &str) -> String {
    format!("/jobs/{}/attempts?cursor={}", urlencode(id), urlencode(cursor))
}

/// A job's attempts in the order given, each with its stderr under it.
fn attempt_table(attempts: &[AttemptRecord]) -> Markup {
    html! {
        table #attempts {
            thead { tr { th { "#" } th { "Outcome" } th { "Started" } th { "Duration" } th { "Fuel" } th { "Code" } th { "Worker" } th { "Host" } th { "Message" } } }
            tbody {
                @for attempt in attempts {
                    tr data-attempt=(attempt.attempt) {
                        td { (attempt.attempt) }
                        td.outcome { (attempt.outcome.map_or("running", OutcomeKind::as_str)) }
                        td { (format_time(attempt.started_at)) }
                        td { (attempt.duration_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))) }
                        td { (attempt.fuel_used.map_or_else(|| "-".to_owned(), |fuel| fuel.to_string())) }
                        td.id.code title=[attempt.processor_sha256.as_deref()] { (attempt.short_processor_sha256().unwrap_or("-")) }
                        td.id { (attempt.worker_id) }
                        td { (attempt.host.as_deref().unwrap_or("-")) }
                        td.error { (attempt.message.as_deref().unwrap_or("")) }
                    }
                    @if let Some(stderr) = attempt.stderr.as_deref().filter(|s| !s.is_empty()) {
                        tr.stderr { td {} td colspan="8" { pre { (stderr) } } }
                    }
                }
                @if attempts.is_empty() { tr { td colspan="9" .muted { "No attempts yet." } } }
            }
        }
    }
}

/// A job's older attempts, a page at a time, newest first.
pub async fn attempts(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let page = app.attempt_page(&id, &query(raw.as_deref())?).await?;
    let body = html! {
        h1 { "Attempts of job " a.id href={ "/jobs/" (urlencode(&id)) } { (id) } }
        p.muted { "Newest first." }
        (attempt_table(&page.attempts))
        @if let Some(cursor) = &page.next_cursor {
            p { a #older-attempts href=(older_attempts(&id, cursor)) { "Older attempts →" } }
        }
    };
    Ok(layout("Attempts", Some(&caller), body))
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn act_on_job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    if !caller.csrf_matches(&form.csrf) {
        return Ok(csrf_refused());
    }
    let action = match verb.as_str() {
        "retry" => Action::Retry,
        "cancel" => Action::Cancel,
        _ => return Err(ApiError::not_found("no such action").into()),
    };
    app.act_on(action, &id).await?;
    Ok(Redirect::to(&format!("/jobs/{}", urlencode(&id))).into_response())
}

#[derive(serde::Deserialize)]
pub struct PauseForm {
    #[serde(default)]
    csrf: String,
    /// Empty when none was typed.
    #[serde(default)]
    reason: String,
}

/// The overview's Pause and Resume buttons, checked as the API's pause and resume are.
pub async fn act_on_pool(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((pool, verb)): Path<(String, String)>,
    Form(form): Form<PauseForm>,
) -> Result<Response, PageError> {
    if !caller.csrf_matches(&form.csrf) {
        return Ok(csrf_refused());
    }
    match verb.as_str() {
        "pause" => app.pause(&pool, Some(form.reason.trim()).filter(|reason| !reason.is_empty())).await?,
        "resume" => app.resume(&pool).await?,
        _ => return Err(ApiError::not_found("no such action").into()),
    };
    Ok(Redirect::to("/").into_response())
}

pub async fn workers(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Page {
    let workers = app.worker_list(&WorkerQuery::default()).await?;
    let body = html! {
        h1 { "Workers" }
        table #workers {
            thead { tr { th { "Id" } th { "Pool" } th { "Status" } th { "Host" } th { "Pid" } th { "Started" } th { "Last heartbeat" } th { "Current jobs" } } }
            tbody {
                @for worker in &workers {
                    tr data-worker=(worker.id) class=(worker.status.as_str()) {
                        td.id { (worker.id) } td { (worker.pool) } td.status { (worker.status.as_str()) }
                        td { (worker.host.as_deref().unwrap_or("-")) }
                        td { (worker.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string())) }
                        td { (format_time(worker.started_at)) } td { (format_time(worker.last_heartbeat_at)) }
                        td { @for id in &worker.current_jobs { a.id href={ "/jobs/" (id) } { (id) } " " } }
                    }
                }
                @if workers.is_empty() { tr { td colspan="8" .muted { "No workers have registered." } } }
            }
        }
    };
    Ok(layout("Workers", Some(&caller), body))
}

pub async fn processors(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Page {
    let infos = app.processor_list().await?;
    let body = html! {
        h1 { "Processors" }
        // Listing loads every processor (a compile, or a read of the compile cache), so this
        // page is not refreshed every few seconds; files change rarely.
        p.muted data-refresh="off" { "Folder: " (app.config.processors.dir.display()) ". Reload the page to see changes." }
        table #processors {
            thead { tr { th { "Name" } th { "Status" } th { "Kind" } th { "Source" } th { "Bytes" } th { "SHA-256" } th { "Limits" } th { "Grants" } th { "Load error" } } }
            tbody {
                @for info in infos.iter() {
                    @let limits = &info.limits;
                    tr data-processor=(info.name) class=[info.status.is_err().then_some("broken")] {
                        td { (info.name) }
                        td.status { @if info.status.is_ok() { "ok" } @else { "broken" } }
                        td.kind { (info.kind.map_or("-", |kind| kind.as_str())) }
                        td { (info.source.to_string()) @if info.overrides_builtin { " (overrides built-in)" } }
                        td { (info.size.map_or_else(|| "-".to_owned(), |size| size.to_string())) }
                        td.id { (info.sha256.as_deref().map_or("-", |sha| &sha[..16])) }
                        td { "fuel " (limits.fuel) ", timeout " (limits.timeout) ", memory " (limits.memory) }
                        td.grants { (info.grants.summary()) }
                        td.error { @if let Err(error) = &info.status { (error) } }
                    }
                }
            }
        }
    };
    Ok(layout("Processors", Some(&caller), body))
}

pub async fn schedules(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Page {
    let schedules = crate::scheduler::listing(app.store(), &app.config).await.map_err(ApiError::from)?;
    let body = html! {
        h1 { "Schedules" }
        table #schedules {
            thead { tr { th { "Name" } th { "Cron" } th { "Time zone" } th { "Processor" } th { "Pool" } th { "Catch-up" } th { "Last run (due)" } th { "Queued" } th { "Last job" } th { "Next run" } } }
            tbody {
                @for schedule in &schedules {
                    @let last = schedule.last_run.as_ref();
                    tr data-schedule=(schedule.name) {
                        td { (schedule.name) } td.cron { (schedule.cron) } td { (schedule.timezone) }
                        td { (schedule.processor) } td { (schedule.pool) } td { (schedule.catch_up) }
                        td.last-run { (time(last.map(|run| run.due_at))) }
                        td { (time(last.map(|run| run.enqueued_at))) }
                        td { @if let Some(run) = last { a.id href={ "/jobs/" (run.job_id) } { (run.job_id) } } @else { "-" } }
                        td.next-run { (time(schedule.next_run_at)) }
                    }
                }
                @if schedules.is_empty() { tr { td colspan="10" .muted { "No schedules: add them under schedules: in the config file." } } }
            }
        }
    };
    Ok(layout("Schedules", Some(&caller), body))
}

fn login_page(failed: bool) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "This jobhost needs its token (or its read token, to look without changing anything). The operator set them with --token-file, $JOBHOST_TOKEN or serve.token_file (--read-token-file, $JOBHOST_READ_TOKEN or serve.read_token_file)." }
            @if failed { p #login-error .error { "That is not the token. Try again." } }
            form.login method="post" action="/login" {
                label { "Token " input #token type="password" name="token" autocomplete="current-password" required autofocus; }
                button #login type="submit" { "Sign in" }
            }
        },
    )
}

pub async fn login_form(State(app): State<Arc<App>>) -> Response {
    if !app.auth.has_token() {
        return Redirect::to("/").into_response();
    }
    login_page(false).into_response()
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    Extension(client): Extension<Client>,
    Form(form): Form<LoginForm>,
) -> Response {
    if !app.auth.has_token() {
        return Redirect::to("/").into_response();
    }
    match app.auth.sign_in(&form.token, client) {
        SignIn::Session(session) => {
            let cookie = format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        SignIn::Wrong => {
            tracing::info!("a dashboard sign-in failed");
            (StatusCode::UNAUTHORIZED, login_page(true)).into_response()
        }
        SignIn::Wait(wait) => too_many_failures(false, wait),
    }
}

pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !caller.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    app.auth.sign_out(&headers);
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
