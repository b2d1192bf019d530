//! The JSON API under `/api/v1`, and its OpenAPI document, generated from these handlers
//! and types (utoipa), so the document cannot drift from what is served.
//!
//! A job is checked as `jobhost seed` checks its flags, by the same constructor
//! (`jobhost_store::NewJob::new`: names, payload, attempts, delay or `run_at`), and a batch is
//! queued in one transaction, all or nothing. Every refusal names the field, e.g.
//! `jobs[2].payload`. A `run_at` goes to the store as it was sent and is compared with the
//! database's clock, never this server's.
//!
//! What one request may cost is bounded: pages of jobs and of a job's attempts, and a
//! processors listing kept while the folder stays the same ([`ProcessorListing`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::OwnedMutexGuard;
use utoipa::{IntoParams, OpenApi, ToSchema};

use jobhost_core::config::Config;
use jobhost_core::units::HumanDuration;
use jobhost_sandbox::Sandbox;
use jobhost_sandbox::processors::{FolderVersion, ProcessorInfo};
use jobhost_store::{
    AttemptCursor, AttemptPage, AttemptRecord, Cursor, EnqueueOutcome, FlowUsage, IdAnswer, InvalidJob, JobCounts,
    JobDetail, JobField, JobFilter, JobLink, JobMatch, JobRequest, JobRules, JobStatus, JobSummary, NewJob, PausedPool,
    PoolSnapshot, RECENT_ATTEMPTS, ScheduleRun, StatusSnapshot, WorkerCounts, WorkerFilter, WorkerInfo, WorkerStatus,
    check_pause_reason,
};

use super::App;
use super::error::{ApiError, ErrorBody};
use crate::scheduler::ScheduleView;

/// Most jobs in one batch, and most ids in one bulk retry or cancel.
pub const MAX_BATCH: usize = 100_000;
/// Most jobs one listing page holds.
pub const MAX_PAGE: u32 = 1_000;
/// Most attempts one page holds: each may carry 64 KiB of stderr.
pub const MAX_ATTEMPTS_PAGE: u32 = 100;

#[derive(OpenApi)]
#[openapi(
    info(title = "jobhost", description = "A durable job pool whose jobs run in WebAssembly sandboxes."),
    paths(enqueue, get_job, job_attempts, list_jobs, retry_job, cancel_job, retry_jobs, cancel_jobs, status, pools, pause_pool, resume_pool, limits, workers, processors, schedules),
    components(schemas(ErrorBody, JobCounts, WorkerCounts, AttemptRecord, JobStatus, WorkerStatus, ScheduleRun, PausedPool)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("token", Vec::<String>::new())]);
    }
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// One job to queue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJobRequest {
    /// The processor that runs the job: `echo`, or a `.wasm` file in this host's processors folder.
    processor: Option<String>,
    /// Any JSON value; the processor reads it on stdin, exactly as sent. Default `{}`.
    #[schema(value_type = Object)]
    payload: Option<Box<RawValue>>,
    /// Default `default`.
    pool: Option<String>,
    /// Higher runs first. Default 0.
    priority: Option<i64>,
    /// Ready only after this long, e.g. `30s`, `5m`.
    #[schema(value_type = String, example = "30s")]
    delay: Option<HumanDuration>,
    /// Ready only from this time (milliseconds since the Unix epoch).
    run_at: Option<i64>,
    /// Attempts before the job is poisoned. Default: `retry.max_attempts`.
    max_attempts: Option<u32>,
    /// No job is queued while a job of the pool with this key is pending or running (or
    /// finished within `unique_within`); the answer names that job instead.
    unique_key: Option<String>,
    /// Also match jobs that completed or were poisoned within this long, e.g. `1h`.
    #[schema(value_type = String, example = "1h")]
    unique_within: Option<HumanDuration>,
    /// Debounce: a matching job still pending takes this job's payload (and, with `delay` or
    /// `run_at`, its later start). Default false.
    replace: Option<bool>,
    /// Ids of jobs (at most 100) this job waits for: it becomes ready when every one has
    /// completed, and is cancelled when one is poisoned or cancelled. Not with `delay` or
    /// `run_at`.
    after: Option<Vec<String>>,
}

/// A batch: queued in one transaction, all or nothing.
#[derive(ToSchema)]
#[allow(dead_code, reason = "only describes the request body in the OpenAPI document")]
pub struct NewJobsRequest {
    jobs: Vec<NewJobRequest>,
}

/// One job, or a batch.
#[derive(ToSchema)]
#[allow(dead_code, reason = "only describes the request body in the OpenAPI document")]
pub enum EnqueueRequest {
    One(NewJobRequest),
    Batch(NewJobsRequest),
}

/// A job queued, or the job holding its unique key.
#[derive(Serialize, ToSchema)]
pub struct Enqueued {
    /// The new job's id; when it was not queued, the id of the job holding its unique key.
    id: String,
    outcome: EnqueueOutcome,
}

#[derive(Serialize, ToSchema)]
pub struct EnqueuedBatch {
    /// For each job in order: its id, or the id of the job holding its unique key.
    ids: Vec<String>,
    /// For each job in order, as a single enqueue answers it.
    jobs: Vec<Enqueued>,
}

/// A job with its payload, result and latest attempts.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobSummary,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The latest attempts (at most 20), oldest first; `attempts` says how many there are.
    pub history: Vec<AttemptRecord>,
    /// When the job has older attempts: pass as `cursor` to `GET /api/v1/jobs/{id}/attempts`
    /// to read them; `null` when `history` holds every attempt.
    pub history_cursor: Option<String>,
    /// The jobs it waits for (`after`) that are still kept, oldest first.
    pub parents: Vec<JobLink>,
    /// The first 100 jobs that wait for it, oldest first; `children_total` counts them all.
    pub children: Vec<JobLink>,
    pub children_total: u64,
}

impl From<JobDetail> for JobView {
    fn from(detail: JobDetail) -> JobView {
        JobView {
            job: detail.job,
            payload: detail.payload,
            result: detail.result,
            history: detail.attempt_history,
            history_cursor: detail.older_attempts.map(AttemptCursor::token),
            parents: detail.parents,
            children: detail.children,
            children_total: detail.children_total,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    /// Newest first.
    pub attempts: Vec<AttemptRecord>,
    /// Pass as `cursor` for the next (older) page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Changed {
    id: String,
    status: JobStatus,
}

/// Which jobs a bulk retry or cancel is about: a list of ids, or a filter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    ids: Option<Vec<String>>,
    filter: Option<FilterRequest>,
}

impl BulkRequest {
    pub fn ids(ids: Vec<String>) -> BulkRequest {
        BulkRequest { ids: Some(ids), filter: None }
    }

    pub fn filter(filter: FilterRequest) -> BulkRequest {
        BulkRequest { ids: None, filter: Some(filter) }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    pub pool: Option<String>,
    pub status: Option<String>,
    pub processor: Option<String>,
    /// Created at or after (ms since the epoch).
    pub created_after: Option<i64>,
    /// Created before (ms since the epoch).
    pub created_before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkAnswer {
    /// How many jobs changed.
    pub count: u64,
    /// With `ids`: the ids that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<Vec<String>>,
    /// With `ids`: the ids that did not, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Vec<Refused>>,
}

#[derive(Serialize, ToSchema)]
pub struct Refused {
    pub id: String,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct PoolList {
    pools: Vec<PoolSnapshot>,
}

#[derive(Serialize, ToSchema)]
pub struct LimitList {
    limits: Vec<FlowUsage>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    workers: Vec<WorkerInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

#[derive(Serialize, ToSchema)]
pub struct ProcessorList {
    /// The objects `jobhost processors --json` prints.
    #[schema(value_type = Vec<Object>)]
    processors: Vec<Value>,
}

/// The listing's query parameters; all optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub pool: Option<String>,
    /// pending, claimed, completed, poisoned or cancelled.
    pub status: Option<String>,
    pub processor: Option<String>,
    /// Created at or after (ms since the epoch).
    created_after: Option<i64>,
    /// Created before (ms since the epoch).
    created_before: Option<i64>,
    /// 1 to 1000; default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of a job's attempts; all optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// 1 to 100; default 20.
    pub limit: Option<u32>,
    /// `history_cursor` of the job, or `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Wait up to this long (e.g. `30s`, at most `serve.max_wait`) for the job to finish.
    wait: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PoolQuery {
    pool: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WorkerQuery {
    pool: Option<String>,
    /// starting, active, terminated or lost.
    status: Option<String>,
}

/// Reads a query string into `T`; a bad or unknown parameter is a 422 naming it.
pub fn query<T: DeserializeOwned + Default>(raw: Option<&str>) -> Result<T, ApiError> {
    let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
        return Ok(T::default());
    };
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let field = if field == "." { "query".to_owned() } else { field };
        ApiError::field(field, format!("bad query parameter: {}", err.inner()))
    })
}

/// A request body that may be parsed: declared JSON, a JSON object, and nested within
/// [`MAX_BODY_DEPTH`].
fn json_body<'a>(headers: &HeaderMap, bytes: &'a [u8]) -> Result<&'a [u8], ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON, with `Content-Type: application/json`",
        ));
    }
    // serde_json's own nesting limit (128) would count the body's levels too, refusing
    // payloads that `seed` takes, and without naming the field. The body's depth is bounded
    // here instead, and each payload's by `check_payload`, as for `seed`.
    if nesting_depth(bytes) > MAX_BODY_DEPTH {
        return Err(ApiError::invalid_json(format!(
            "the body nests deeper than {MAX_BODY_DEPTH} levels: a payload may nest at most 128 deep"
        )));
    }
    if !is_object(bytes) {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    Ok(bytes)
}

/// Whether JSON text is an object (serde would also read a list into a struct, field by field).
fn is_object(text: &[u8]) -> bool {
    text.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{')
}

/// Parses JSON text (checked by [`json_body`]) into `T`. Errors name the field, under
/// `prefix` (the text's place in the body, e.g. `jobs[2]`): bad JSON is a 400, a value of
/// the wrong kind a 422.
fn parse<T: DeserializeOwned>(text: &[u8], prefix: &str) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    deserializer.disable_recursion_limit();
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid_json(format!("the body is not valid JSON: {inner}"));
        }
        let field = match (prefix, path.as_str()) {
            ("", ".") => return ApiError::invalid_json(format!("the body has the wrong shape: {inner}")),
            (prefix, ".") => prefix.to_owned(),
            ("", path) => path.to_owned(),
            (prefix, path) if path.starts_with('[') => format!("{prefix}{path}"),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        ApiError::field(field, inner.to_string())
    })?;
    deserializer.end().map_err(|err| ApiError::invalid_json(format!("the body is not valid JSON: {err}")))?;
    Ok(parsed)
}

/// Levels a body may nest before it is refused whole: well past a payload's 128 inside a
/// batch, so a payload a little too deep is refused by name, and little enough for the
/// parser's recursion to stay far inside a thread's stack.
const MAX_BODY_DEPTH: usize = 1_024;

/// How deep `[` and `{` nest in JSON text (outside strings); a scan that needs no stack.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn parse_status(field: &str, text: &str) -> Result<JobStatus, ApiError> {
    JobStatus::parse(text).ok_or_else(|| {
        ApiError::field(
            field,
            format!("unknown status {text:?}: use pending, claimed, completed, poisoned or cancelled"),
        )
    })
}

fn check_pool(field: &str, pool: &str) -> Result<(), ApiError> {
    jobhost_core::names::check_label(pool).map_err(|err| ApiError::field(field, format!("{field} {err}")))
}

impl App {
    /// A request's job as the store queues it, checked by [`NewJob::new`] as `jobhost seed`'s
    /// jobs are; a refusal names the field under `field` (e.g. `jobs[2].pool`).
    fn new_job(&self, request: NewJobRequest, field: &str, known: &[String]) -> Result<NewJob, ApiError> {
        let name = |key: &str| if field.is_empty() { key.to_owned() } else { format!("{field}.{key}") };
        let config = &self.config;
        let processor = request.processor.ok_or_else(|| ApiError::field(name("processor"), "is required"))?;
        let request = JobRequest {
            pool: request.pool.unwrap_or_else(|| "default".to_owned()),
            processor,
            // The payload's own text, so numbers beyond f64 and the like arrive as they were sent.
            payload: request.payload.map_or_else(|| "{}".to_owned(), |payload| payload.get().trim().to_owned()),
            priority: request.priority.unwrap_or(0),
            max_attempts: request.max_attempts.unwrap_or(config.retry.max_attempts),
            delay: request.delay.map(|delay| delay.0),
            run_at: request.run_at,
            unique_key: request.unique_key,
            unique_within: request.unique_within.map(|within| within.0),
            replace: request.replace.unwrap_or(false),
            after: request.after.unwrap_or_default(),
        };
        let rules = JobRules { processors: Some(known), max_payload: config.jobs.max_payload.0 };
        NewJob::new(request, &rules).map_err(|err| {
            let field = name(match err.field() {
                JobField::Pool => "pool",
                JobField::Processor => "processor",
                JobField::Payload => "payload",
                JobField::MaxAttempts => "max_attempts",
                JobField::Schedule => "run_at",
                JobField::UniqueKey => "unique_key",
                JobField::After => "after",
            });
            let fix = match &err {
                InvalidJob::UnknownProcessor { processor, .. } => {
                    format!("; add {processor}.wasm to {}", config.processors.dir.display())
                }
                InvalidJob::Rule { .. } | InvalidJob::ProcessorName(_) => String::new(),
            };
            ApiError::field(&field, format!("{}{fix}", err.message(&field)))
        })
    }
}

/// Queue one job or a batch. A job whose unique key another job of its pool holds is not
/// queued: the answer names that job, and says whether this one replaced its payload.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = EnqueueRequest, responses(
    (status = 201, description = "Queued the job, or at least one job of the batch", body = Enqueued),
    (status = 201, description = "Queued the batch, ids in order", body = EnqueuedBatch),
    (status = 200, description = "Queued nothing: each job's unique key was held; the answer names the holders",
     body = Enqueued),
    (status = 422, description = "A field is wrong; nothing was queued", body = ErrorBody),
))]
pub async fn enqueue(State(app): State<Arc<App>>, headers: HeaderMap, bytes: Bytes) -> Result<Response, ApiError> {
    let text = json_body(&headers, &bytes)?;
    let known = jobhost_sandbox::processors::names(&app.config)
        .map_err(|err| ApiError::internal("list its processors", err))?;
    // The top level is read first, keeping each value's text, to tell one job from a batch.
    let top: std::collections::BTreeMap<String, Box<RawValue>> = parse(text, "")?;
    let Some(jobs) = top.get("jobs") else {
        let job = app.new_job(parse(text, "")?, "", &known)?;
        let mut answers = app.enqueue(&[job]).await?;
        let answer = answers.remove(0);
        return Ok((created_if_queued(std::slice::from_ref(&answer)), Json(answer)).into_response());
    };
    if let Some(other) = top.keys().find(|key| *key != "jobs") {
        return Err(ApiError::field(other.clone(), "a batch holds only `jobs`: put every field in its jobs"));
    }
    let items: Vec<Box<RawValue>> = parse(jobs.get().as_bytes(), "jobs")?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field("jobs", format!("must hold 1 to {MAX_BATCH} jobs, got {}", items.len())));
    }
    let mut queued = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let field = format!("jobs[{index}]");
        if !is_object(item.get().as_bytes()) {
            return Err(ApiError::field(field, "must be a JSON object"));
        }
        queued.push(app.new_job(parse(item.get().as_bytes(), &field)?, &field, &known)?);
    }
    let answers = app.enqueue(&queued).await?;
    let status = created_if_queued(&answers);
    let ids = answers.iter().map(|answer| answer.id.clone()).collect();
    Ok((status, Json(EnqueuedBatch { ids, jobs: answers })).into_response())
}

/// 201 when a job was created, 200 when every job matched one that was there.
fn created_if_queued(answers: &[Enqueued]) -> StatusCode {
    if answers.iter().any(|answer| answer.outcome == EnqueueOutcome::Queued) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

impl App {
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, ApiError> {
        let report = self.store().enqueue(jobs.iter().cloned().map(Ok)).await?;
        Ok(report.answers(jobs).into_iter().map(|(id, outcome)| Enqueued { id, outcome }).collect())
    }
}

/// One job with its history; `?wait=30s` waits for it to finish.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = String, Path), JobQuery), responses(
    (status = 200, description = "The job (unfinished if the wait ran out)", body = JobView),
    (status = 404, body = ErrorBody),
))]
pub async fn get_job(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<JobView>, ApiError> {
    let query: JobQuery = query(raw.as_deref())?;
    let wait = query.wait.as_deref().map(|text| app.wait_for(text)).transpose()?;
    let job = app.job(&id).await?;
    if let Some(wait) = wait
        && !job.job.status.is_finished()
    {
        return match app.watcher.wait(&id, wait, app.shutdown.clone()).await? {
            Some(finished) => Ok(Json(JobView::from(JobDetail::clone(&finished)))),
            None => Ok(Json(app.job(&id).await?)),
        };
    }
    Ok(Json(job))
}

impl App {
    /// A `?wait=` value, checked against `serve.max_wait`.
    fn wait_for(&self, text: &str) -> Result<Duration, ApiError> {
        let wait: HumanDuration = text.parse().map_err(|err: String| ApiError::field("wait", err))?;
        let max = self.config.serve.max_wait;
        if wait > max {
            return Err(ApiError::field("wait", format!("is longer than serve.max_wait ({max}): wait at most {max}")));
        }
        Ok(wait.0)
    }

    pub async fn job(&self, id: &str) -> Result<JobView, ApiError> {
        let detail = self.store().job(id).await?.ok_or_else(|| ApiError::not_found(format!("no job with id {id}")))?;
        Ok(JobView::from(detail))
    }

    /// One page of the jobs a listing query asks for.
    pub async fn job_page(&self, query: &ListQuery) -> Result<JobPage, ApiError> {
        let limit = query.limit.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::field("limit", format!("must be between 1 and {MAX_PAGE}, got {limit}")));
        }
        let after = match &query.cursor {
            Some(token) => Some(Cursor::from_token(token).ok_or_else(|| {
                ApiError::field("cursor", "is not a cursor this server gave: pass next_cursor as it came")
            })?),
            None => None,
        };
        let filter = FilterRequest {
            pool: query.pool.clone(),
            status: query.status.clone(),
            processor: query.processor.clone(),
            created_after: query.created_after,
            created_before: query.created_before,
        };
        let matching = matching(&filter, "")?;
        let jobs = self.store().list_jobs(&JobFilter { matching, after, limit }).await?;
        let next_cursor = (jobs.len() == limit as usize).then(|| jobs.last().map(|job| job.cursor().token())).flatten();
        Ok(JobPage { jobs, next_cursor })
    }
}

/// A filter as the store takes it; `prefix` names its place in the request (`filter.`).
fn matching<'a>(filter: &'a FilterRequest, prefix: &str) -> Result<JobMatch<'a>, ApiError> {
    if let Some(pool) = &filter.pool {
        check_pool(&format!("{prefix}pool"), pool)?;
    }
    let status = filter.status.as_deref().map(|status| parse_status(&format!("{prefix}status"), status)).transpose()?;
    Ok(JobMatch {
        pool: filter.pool.as_deref(),
        status,
        processor: filter.processor.as_deref(),
        created_after: filter.created_after,
        created_before: filter.created_before,
    })
}

impl App {
    /// One page of job `id`'s attempts, as an attempts query asks for it.
    pub async fn attempt_page(&self, id: &str, query: &AttemptQuery) -> Result<AttemptList, ApiError> {
        let limit = query.limit.unwrap_or(RECENT_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS_PAGE).contains(&limit) {
            return Err(ApiError::field("limit", format!("must be between 1 and {MAX_ATTEMPTS_PAGE}, got {limit}")));
        }
        let before = match &query.cursor {
            Some(token) => Some(AttemptCursor::from_token(token).ok_or_else(|| {
                ApiError::field(
                    "cursor",
                    "is not a cursor this server gave: pass history_cursor or next_cursor as it came",
                )
            })?),
            None => None,
        };
        let attempts = self
            .store()
            .attempts(id, &AttemptPage { before, limit })
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job with id {id}")))?;
        let next_cursor = attempts
            .last()
            .filter(|last| attempts.len() == limit as usize && last.attempt > 1)
            .map(|last| last.cursor().token());
        Ok(AttemptList { attempts, next_cursor })
    }
}

/// A job's attempts, newest first, a page at a time (the job object holds the latest 20).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/attempts", params(("id" = String, Path), AttemptQuery), responses(
    (status = 200, body = AttemptList),
    (status = 404, body = ErrorBody),
))]
pub async fn job_attempts(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AttemptList>, ApiError> {
    Ok(Json(app.attempt_page(&id, &query(raw.as_deref())?).await?))
}

/// Jobs, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/jobs", params(ListQuery), responses((status = 200, body = JobPage)))]
pub async fn list_jobs(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Result<Json<JobPage>, ApiError> {
    Ok(Json(app.job_page(&query(raw.as_deref())?).await?))
}

/// Which of retry or cancel an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Cancel,
}

impl Action {
    fn rule(self) -> &'static str {
        match self {
            Action::Retry => "only poisoned or cancelled jobs can be retried",
            Action::Cancel => "only pending jobs can be cancelled",
        }
    }

    fn status(self) -> JobStatus {
        match self {
            Action::Retry => JobStatus::Pending,
            Action::Cancel => JobStatus::Cancelled,
        }
    }
}

impl App {
    /// Retries or cancels one job; the error says why it could not be.
    pub async fn act_on(&self, action: Action, id: &str) -> Result<(), ApiError> {
        let store = self.store();
        let answer = match action {
            Action::Retry => store.retry_job(id).await?,
            Action::Cancel => store.cancel_job(id).await?,
        };
        match answer {
            IdAnswer::Done => Ok(()),
            IdAnswer::NotFound => Err(ApiError::not_found(format!("no job with id {id}"))),
            IdAnswer::WrongStatus(status) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "wrong_status",
                format!("job {id} is {}: {}", status.as_str(), action.rule()),
            )),
            IdAnswer::NoAttemptsLeft => Err(ApiError::new(
                StatusCode::CONFLICT,
                "wrong_status",
                format!("job {id} has used every attempt jobhost can count: queue it anew"),
            )),
        }
    }

    /// Retries or cancels a list of ids (each on its own) or every job a filter matches (one
    /// statement).
    pub async fn act_on_many(&self, action: Action, request: BulkRequest) -> Result<BulkAnswer, ApiError> {
        match (request.ids, request.filter) {
            (Some(ids), None) => {
                if ids.len() > MAX_BATCH {
                    return Err(ApiError::field("ids", format!("must hold at most {MAX_BATCH} ids")));
                }
                let (mut done, mut refused) = (Vec::new(), Vec::new());
                for id in ids {
                    match self.act_on(action, &id).await {
                        Ok(()) => done.push(id),
                        Err(err) if err.status.is_client_error() => {
                            refused.push(Refused { id, code: err.code, message: err.message })
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(BulkAnswer { count: done.len() as u64, done: Some(done), refused: Some(refused) })
            }
            (None, Some(filter)) => {
                let matching = matching(&filter, "filter.")?;
                let store = self.store();
                let count = match action {
                    Action::Retry => store.retry_matching(&matching).await?,
                    Action::Cancel => store.cancel_matching(&matching).await?,
                };
                Ok(BulkAnswer { count, done: None, refused: None })
            }
            _ => Err(ApiError::invalid_json("give exactly one of `ids` (a list of job ids) and `filter` (an object)")),
        }
    }
}

/// Give a poisoned or cancelled job a fresh set of attempts.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", params(("id" = String, Path)), responses(
    (status = 200, body = Changed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn retry_job(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Changed>, ApiError> {
    app.act_on(Action::Retry, &id).await?;
    Ok(Json(Changed { id, status: Action::Retry.status() }))
}

/// Cancel a pending job so no worker takes it.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = String, Path)), responses(
    (status = 200, body = Changed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn cancel_job(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Changed>, ApiError> {
    app.act_on(Action::Cancel, &id).await?;
    Ok(Json(Changed { id, status: Action::Cancel.status() }))
}

/// Retry a list of jobs, or every poisoned or cancelled job matching a filter.
#[utoipa::path(post, path = "/api/v1/jobs/retry", request_body = BulkRequest, responses((status = 200, body = BulkAnswer)))]
pub async fn retry_jobs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<BulkAnswer>, ApiError> {
    Ok(Json(app.act_on_many(Action::Retry, parse(json_body(&headers, &bytes)?, "")?).await?))
}

/// Cancel a list of jobs, or every pending job matching a filter.
#[utoipa::path(post, path = "/api/v1/jobs/cancel", request_body = BulkRequest, responses((status = 200, body = BulkAnswer)))]
pub async fn cancel_jobs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<BulkAnswer>, ApiError> {
    Ok(Json(app.act_on_many(Action::Cancel, parse(json_body(&headers, &bytes)?, "")?).await?))
}

/// Exactly what `jobhost status --json` prints.
#[utoipa::path(get, path = "/api/v1/status", params(PoolQuery), responses((status = 200, body = StatusSnapshot)))]
pub async fn status(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Result<Json<StatusSnapshot>, ApiError> {
    let query: PoolQuery = query(raw.as_deref())?;
    if let Some(pool) = &query.pool {
        check_pool("pool", pool)?;
    }
    Ok(Json(app.store().status(query.pool.as_deref()).await?))
}

/// Every pool holding jobs or paused, with its counts, ready jobs, oldest ready age and pause.
#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = PoolList)))]
pub async fn pools(State(app): State<Arc<App>>) -> Result<Json<PoolList>, ApiError> {
    Ok(Json(PoolList { pools: app.store().pools().await? }))
}

impl App {
    /// Each flow limit of the config, per key with work under it (see
    /// [`jobhost_store::Store::flow_usage`]).
    pub async fn flow_usage(&self) -> Result<Vec<FlowUsage>, ApiError> {
        Ok(self.store().flow_usage(&self.config.flow_limits()).await?)
    }
}

/// The flow limits (`processors.overrides.NAME.flow`), per processor and key with jobs
/// running, ready or started within the rate's period: how many run and how many are held
/// back. Empty when no limit is configured.
#[utoipa::path(get, path = "/api/v1/limits", responses((status = 200, body = LimitList)))]
pub async fn limits(State(app): State<Arc<App>>) -> Result<Json<LimitList>, ApiError> {
    Ok(Json(LimitList { limits: app.flow_usage().await? }))
}

/// The optional body of a pause.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Why the pool is paused, shown with it (at most 1024 bytes on one line).
    reason: Option<String>,
}

impl App {
    /// Pauses `pool` (checked as every pool name is) with `reason` (checked as a pause's
    /// reason is); the pool as listed after.
    pub async fn pause(&self, pool: &str, reason: Option<&str>) -> Result<PoolSnapshot, ApiError> {
        check_pool("pool", pool)?;
        if let Some(reason) = reason {
            check_pause_reason(reason).map_err(|err| ApiError::field("reason", format!("reason {err}")))?;
        }
        self.store().pause_pool(pool, reason).await?;
        Ok(self.store().pool(pool).await?)
    }

    /// Resumes `pool`; the pool as listed after (resuming one that is not paused changes nothing).
    pub async fn resume(&self, pool: &str) -> Result<PoolSnapshot, ApiError> {
        check_pool("pool", pool)?;
        self.store().resume_pool(pool).await?;
        Ok(self.store().pool(pool).await?)
    }
}

/// Pause a pool: workers claim none of its jobs (those running finish), no worker is started
/// for it and following workers wait. The pool need not hold jobs; pausing a paused pool
/// keeps when it was paused (and its reason, unless one is sent). The body is optional.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/pause", params(("pool" = String, Path)),
    request_body(content = PauseRequest, description = "Optional: why the pool is paused"),
    responses(
        (status = 200, description = "The pool, paused", body = PoolSnapshot),
        (status = 422, description = "The pool name or the reason is wrong; nothing changed", body = ErrorBody),
    ))]
pub async fn pause_pool(
    State(app): State<Arc<App>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<PoolSnapshot>, ApiError> {
    let request: PauseRequest =
        if bytes.is_empty() { PauseRequest::default() } else { parse(json_body(&headers, &bytes)?, "")? };
    Ok(Json(app.pause(&pool, request.reason.as_deref()).await?))
}

/// Resume a pool: workers claim its jobs again, and those waiting start on them at once.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/resume", params(("pool" = String, Path)), responses(
    (status = 200, description = "The pool, no longer paused", body = PoolSnapshot),
    (status = 422, description = "The pool name is wrong", body = ErrorBody),
))]
pub async fn resume_pool(
    State(app): State<Arc<App>>,
    Path(pool): Path<String>,
) -> Result<Json<PoolSnapshot>, ApiError> {
    Ok(Json(app.resume(&pool).await?))
}

/// Most workers one listing shows.
pub const MAX_WORKERS_LISTED: u32 = 500;

impl App {
    pub async fn worker_list(&self, query: &WorkerQuery) -> Result<Vec<WorkerInfo>, ApiError> {
        if let Some(pool) = &query.pool {
            check_pool("pool", pool)?;
        }
        let status = query
            .status
            .as_deref()
            .map(|status| {
                WorkerStatus::parse(status).ok_or_else(|| {
                    let [starting, active, terminated, lost] = WorkerStatus::ALL;
                    ApiError::field(
                        "status",
                        format!("unknown status {status:?}: use {starting}, {active}, {terminated} or {lost}"),
                    )
                })
            })
            .transpose()?;
        let filter = WorkerFilter { pool: query.pool.as_deref(), status, limit: MAX_WORKERS_LISTED };
        Ok(self.store().workers(&filter).await?)
    }

    /// Every processor as `jobhost processors --json` shows it; see [`ProcessorListing`].
    pub async fn processor_list(self: &Arc<App>) -> Result<Arc<Vec<ProcessorInfo>>, ApiError> {
        let latest = Arc::clone(&self.processor_listing.latest).lock_owned().await;
        let app = Arc::clone(self);
        // The lock goes with the listing to its thread: a listing whose caller gave up still
        // finishes, and is kept, before the next one may start.
        tokio::task::spawn_blocking(move || app.processor_listing.refresh(latest, &app.config, &app.sandbox))
            .await
            .map_err(|err| ApiError::internal("list its processors", err))?
            .map_err(|err| ApiError::internal("list its processors", err))
    }
}

/// A listing and the version of the folder it was made from.
type KeptListing = (FolderVersion, Arc<Vec<ProcessorInfo>>);

/// The processors listing, kept while the processors folder stays the same. Listing loads
/// every processor (a compile, or a read of the compile cache), so it is made once per
/// version of the folder ([`FolderVersion`]: each file's size, times and inode), one at a
/// time: callers that come meanwhile wait for it and share it.
#[derive(Default)]
pub struct ProcessorListing {
    latest: Arc<tokio::sync::Mutex<Option<KeptListing>>>,
    /// Listings made (a counter in /metrics), to show that repeats load nothing.
    pub made: AtomicU64,
}

impl ProcessorListing {
    /// The listing for the folder as it is now: the kept one if the folder has not changed,
    /// else a new one. Blocks on file reads and compiles.
    fn refresh(
        &self,
        mut latest: OwnedMutexGuard<Option<KeptListing>>,
        config: &Config,
        sandbox: &Sandbox,
    ) -> anyhow::Result<Arc<Vec<ProcessorInfo>>> {
        // Taken before the files are read: a file that changes during the listing changes
        // the version too, so the next call lists again.
        let version = jobhost_sandbox::processors::folder_version(config)?;
        if let Some((seen, infos)) = latest.as_ref()
            && *seen == version
        {
            return Ok(Arc::clone(infos));
        }
        self.made.fetch_add(1, Ordering::Relaxed);
        let infos = Arc::new(jobhost_sandbox::processors::list(config, sandbox)?);
        *latest = Some((version, Arc::clone(&infos)));
        Ok(infos)
    }
}

/// Workers, live ones first (at most 500).
#[utoipa::path(get, path = "/api/v1/workers", params(WorkerQuery), responses((status = 200, body = WorkerList)))]
pub async fn workers(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(WorkerList { workers: app.worker_list(&query(raw.as_deref())?).await? }))
}

/// Every processor with its source, size, hash, limits, and load error if broken.
#[utoipa::path(get, path = "/api/v1/processors", responses((status = 200, body = ProcessorList)))]
pub async fn processors(State(app): State<Arc<App>>) -> Result<Json<ProcessorList>, ApiError> {
    let infos = app.processor_list().await?;
    Ok(Json(ProcessorList { processors: infos.iter().map(ProcessorInfo::to_json).collect() }))
}

/// Every configured schedule with its last run, the job it made, and its next run.
#[utoipa::path(get, path = "/api/v1/schedules", responses((status = 200, body = ScheduleList)))]
pub async fn schedules(State(app): State<Arc<App>>) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList { schedules: crate::scheduler::listing(app.store(), &app.config).await? }))
}
