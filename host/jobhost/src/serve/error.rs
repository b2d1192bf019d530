//! The API's one error shape, `{"error": {"code", "message", "field"?}}`, and how each kind
//! of failure maps to a status code. A store error is told to the client only as what it can
//! do: a database that cannot be reached or is busy is a 503, so it knows to try again; any
//! other is the server's failure, a 500. The store's message, which names the database file or
//! server and quotes the database, goes to the server's log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use jobhost_store::{ErrorKind, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, e.g. `jobs[2].payload`.
    pub field: Option<String>,
}

/// The JSON body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code: bad_request, invalid_json, invalid_field, unsupported_media_type,
    /// body_too_large, uri_too_long, headers_too_large, not_found, wrong_status, unauthorized,
    /// forbidden, read_only, rate_limited, method_not_allowed, timeout, unavailable, internal.
    code: &'static str,
    /// What went wrong and how to fix it, for people.
    message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    /// A request field with a bad value: 422 naming the field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError { field: Some(field), ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message) }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure of the server's own: logged in full, and told to the client without the
    /// paths and addresses the log may show. `what` completes "the server failed to …".
    pub fn internal(what: &str, err: impl std::fmt::Display) -> ApiError {
        tracing::error!("request failed: cannot {what}: {err:#}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the server failed to {what}; the server's log says why"),
        )
    }

    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let retry_later = |message| {
            tracing::warn!("request failed: {err}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        };
        match err.kind() {
            ErrorKind::Unreachable => {
                retry_later("the server cannot reach its database now; try again after the Retry-After delay")
            }
            ErrorKind::Busy => retry_later("the database is busy now; try again after the Retry-After delay"),
            // The pool's answer to this request, written for whoever sent it.
            ErrorKind::Refused => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", err.to_string()),
            // No catch-all: a new kind of failure decides what clients are told.
            ErrorKind::Missing
            | ErrorKind::CannotOpen
            | ErrorKind::BadLocation
            | ErrorKind::Tls
            | ErrorKind::AuthFailed
            | ErrorKind::PermissionDenied
            | ErrorKind::NotADatabase
            | ErrorKind::Foreign
            | ErrorKind::NewerSchema
            | ErrorKind::ReadOnly
            | ErrorKind::DiskFull
            | ErrorKind::Replaced
            | ErrorKind::Other => ApiError::internal("use its database", err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use jobhost_core::config::DatabaseConfig;
    use jobhost_store::{Access, Store};

    use super::*;

    /// SQLite's failure `code`, in words that name the database file, as SQLite's often do.
    fn sqlite_failure(code: std::ffi::c_int) -> StoreError {
        let words = "cannot go on with /srv/jobs/pool.db".to_owned();
        StoreError::from(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(words)))
    }

    async fn refusal_to_open(path: &str) -> StoreError {
        let config = DatabaseConfig { path: path.to_owned(), ..DatabaseConfig::default() };
        Store::open(&config, Access::Existing).await.err().expect("the database does not open")
    }

    /// Tls, AuthFailed and PermissionDenied need a server to fail; they answer as every other
    /// 500 does (the mapping has no catch-all).
    #[tokio::test]
    async fn a_client_is_told_what_it_can_do_and_never_where_the_database_is() {
        let dir = tempfile::tempdir().unwrap();
        let (missing, pool) = (dir.path().join("missing.db"), dir.path().join("pool.db"));
        let config = DatabaseConfig { path: pool.display().to_string(), ..DatabaseConfig::default() };
        let fingerprint = Store::open(&config, Access::CreateIfMissing).await.unwrap().fingerprint();
        std::fs::remove_file(&pool).unwrap();
        let failures = [
            (refusal_to_open(&missing.display().to_string()).await, "missing.db"),
            (fingerprint.verify().unwrap_err(), "pool.db"),
            (refusal_to_open("postgres://app:secret@[::1/jobs").await, "::1"),
            (refusal_to_open("postgres://app:secret@127.0.0.1:1/jobs").await, "127.0.0.1"),
            (sqlite_failure(rusqlite::ffi::SQLITE_BUSY), "pool.db"),
            (sqlite_failure(rusqlite::ffi::SQLITE_READONLY), "pool.db"),
            (sqlite_failure(rusqlite::ffi::SQLITE_FULL), "pool.db"),
            (sqlite_failure(rusqlite::ffi::SQLITE_CANTOPEN), "pool.db"),
            (sqlite_failure(rusqlite::ffi::SQLITE_NOTADB), "pool.db"),
            (sqlite_failure(rusqlite::ffi::SQLITE_IOERR), "pool.db"),
        ];
        let mut kinds = Vec::new();
        for (err, place) in failures {
            let (kind, logged) = (err.kind(), err.to_string());
            assert!(logged.contains(place), "the log names the database: {logged}");
            let answer = ApiError::from(err);
            let told = &answer.message;
            assert!(!told.contains(place) && !told.contains("/"), "{kind:?} is told as {told:?}");
            if kind.is_passing() {
                assert_eq!((answer.status, answer.code), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
                assert!(told.contains("try again after the Retry-After delay"), "{told}");
            } else {
                assert_eq!((answer.status, answer.code), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
                assert!(told.contains("the server's log says why"), "{told}");
            }
            kinds.push(kind);
        }
        use ErrorKind::*;
        let tried =
            [Missing, Replaced, BadLocation, Unreachable, Busy, ReadOnly, DiskFull, CannotOpen, NotADatabase, Other];
        assert_eq!(kinds, tried);
    }
}
