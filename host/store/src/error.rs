//! The store's typed errors: what went wrong, at which database, and why.
//!
//! Callers match on [`ErrorKind`] (a busy database is worth retrying, a refused schema is
//! not); people read the message, which names the database and what happened there. The fix
//! is not the store's to word: a person at the command line is told which flag to check, an
//! HTTP client only when to try again, so each edge adds its own from the kind.

use std::fmt;

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A command that only reads or works on a pool was pointed at a database that does not exist.
    Missing,
    /// The file exists but cannot be opened (missing folder, no permission, ...), or the
    /// server's database does not exist.
    CannotOpen,
    /// `--db` looks like a PostgreSQL URL but cannot be parsed.
    BadLocation,
    /// The PostgreSQL server cannot be reached (wrong host or port, server down, timeout).
    Unreachable,
    /// The TLS handshake with the server failed (no TLS there, an untrusted certificate, ...).
    Tls,
    /// The server refused the login (wrong user or password, or pg_hba.conf).
    AuthFailed,
    /// The database user lacks a privilege jobhost needs (create the schema, write a table).
    PermissionDenied,
    /// The file is not a SQLite database, or it is damaged.
    NotADatabase,
    /// A SQLite database, or a PostgreSQL schema, that some other program made.
    Foreign,
    /// A database written by a newer jobhost.
    NewerSchema,
    /// Another process held the write lock for longer than `database.busy_timeout`.
    Busy,
    /// The file or its folder cannot be written.
    ReadOnly,
    /// The disk holding the database is full.
    DiskFull,
    /// The database file was deleted or replaced while this process had it open.
    Replaced,
    /// The operation was refused by a rule of the pool (a worker id used twice, ...).
    Refused,
    /// Anything else the database reported.
    Other,
}

/// A failed store operation: its [`ErrorKind`], the database it happened at, and what
/// happened there, in one line that already says in the database's own words what went wrong.
/// The error of the layer below (rusqlite, tokio-postgres, the file system) is kept as its
/// [`source`](std::error::Error::source), for programs that look into it and for logs; a
/// printer of causes can stop at a `StoreError`, whose message has said them.
#[derive(Debug)]
pub struct StoreError {
    kind: ErrorKind,
    /// The database, as the user named it; filled in by the store before the error leaves it.
    location: String,
    detail: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl ErrorKind {
    /// Whether the same call may well succeed later: the server is out of reach for now
    /// (restarting, the connection cut; the store reconnects by itself) or the database
    /// stayed locked. Long-running processes try again on these; anything else is a mistake
    /// or damage that waiting does not mend.
    pub fn is_passing(self) -> bool {
        matches!(self, ErrorKind::Unreachable | ErrorKind::Busy)
    }
}

impl StoreError {
    pub(super) fn new(kind: ErrorKind, detail: impl Into<String>) -> StoreError {
        StoreError { kind, location: String::new(), detail: detail.into(), source: None }
    }

    /// Keeps `cause`, the lower layer's error that `detail` put into words, as the source.
    pub(super) fn caused_by(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        self.source = Some(cause.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Names the database the error happened at.
    pub(super) fn at(mut self, location: &str) -> StoreError {
        if self.location.is_empty() {
            self.location = location.to_string();
        }
        self
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode;
        let kind = match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Busy,
            Some(ErrorCode::ReadOnly) => ErrorKind::ReadOnly,
            Some(ErrorCode::DiskFull) => ErrorKind::DiskFull,
            Some(ErrorCode::CannotOpen) => ErrorKind::CannotOpen,
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => ErrorKind::NotADatabase,
            _ => ErrorKind::Other,
        };
        StoreError::new(kind, err.to_string()).caused_by(err)
    }
}

/// What happened and where; what to do about it depends on who reads it (a person at the
/// command line, an HTTP client), so the command line and the API add that themselves.
impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = &self.location;
        let detail = &self.detail;
        match self.kind {
            ErrorKind::Missing => write!(f, "no jobhost pool at {at}{detail}"),
            ErrorKind::BadLocation => write!(f, "{at} is not a valid PostgreSQL URL ({detail})"),
            ErrorKind::Unreachable => write!(f, "cannot reach the PostgreSQL server of {at} ({detail})"),
            ErrorKind::Tls => write!(f, "no TLS connection to the PostgreSQL server of {at} ({detail})"),
            ErrorKind::AuthFailed => write!(f, "the PostgreSQL server of {at} refused the login ({detail})"),
            ErrorKind::PermissionDenied => write!(f, "database {at} denied jobhost a privilege it needs ({detail})"),
            ErrorKind::CannotOpen => write!(f, "cannot open the database {at} ({detail})"),
            ErrorKind::NotADatabase => write!(f, "{at} is not a SQLite database, or it is corrupt ({detail})"),
            ErrorKind::Foreign => write!(f, "{at}{detail} was not made by jobhost (it already holds other tables)"),
            ErrorKind::NewerSchema => write!(f, "database {at}: {detail}"),
            ErrorKind::Busy => write!(
                f,
                "database {at} stayed locked by another process for longer than database.busy_timeout ({detail})"
            ),
            ErrorKind::ReadOnly => write!(f, "database {at} cannot be written ({detail})"),
            ErrorKind::DiskFull => write!(f, "the disk holding database {at} is full ({detail})"),
            ErrorKind::Replaced => {
                write!(f, "database {at} was deleted or replaced while jobhost had it open ({detail})")
            }
            ErrorKind::Refused => write!(f, "{detail}"),
            ErrorKind::Other => write!(f, "database {at}: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_failure(code: std::ffi::c_int) -> StoreError {
        StoreError::from(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)).at("data/pool.db")
    }

    /// The fix each kind calls for is the command line's and the API's to say (see their
    /// tests); the store names the kind, the database and the cause.
    #[test]
    fn sqlite_failures_name_the_database_and_keep_their_cause() {
        let cases = [
            (rusqlite::ffi::SQLITE_READONLY, ErrorKind::ReadOnly, "cannot be written"),
            (rusqlite::ffi::SQLITE_FULL, ErrorKind::DiskFull, "is full"),
            (rusqlite::ffi::SQLITE_CANTOPEN, ErrorKind::CannotOpen, "cannot open the database"),
            (rusqlite::ffi::SQLITE_BUSY, ErrorKind::Busy, "stayed locked by another process"),
            (rusqlite::ffi::SQLITE_NOTADB, ErrorKind::NotADatabase, "is not a SQLite database"),
        ];
        for (code, kind, what) in cases {
            let err = sqlite_failure(code);
            let message = err.to_string();
            assert_eq!(err.kind(), kind, "{message}");
            assert!(message.contains("data/pool.db") && message.contains(what), "{message}");
            let cause = std::error::Error::source(&err).and_then(|cause| cause.downcast_ref::<rusqlite::Error>());
            assert_eq!(cause.and_then(rusqlite::Error::sqlite_error_code), Some(rusqlite::ffi::Error::new(code).code));
        }
    }
}
