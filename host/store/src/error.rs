//! The store's typed errors: what went wrong, at which database, and what to do about it.
//!
//! Callers match on [`ErrorKind`] (a busy database is worth retrying, a refused schema is
//! not); people read the message, which always names the database and the likely fix.

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

#[derive(Debug)]
pub struct StoreError {
    kind: ErrorKind,
    /// The database, as the user named it; filled in by the store before the error leaves it.
    location: String,
    detail: String,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(super) fn new(kind: ErrorKind, detail: impl Into<String>) -> StoreError {
        StoreError { kind, location: String::new(), detail: detail.into() }
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
        StoreError::new(kind, err.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = &self.location;
        let detail = &self.detail;
        match self.kind {
            ErrorKind::Missing => write!(
                f,
                "no jobhost pool at {at}{detail}: check --db (or database.path, $JOBHOST_DB); \
                 `jobhost seed` creates a new one"
            ),
            ErrorKind::BadLocation => write!(
                f,
                "--db (or database.path, $JOBHOST_DB) {at} is not a valid PostgreSQL URL ({detail}): write it \
                 as postgres://USER:PASSWORD@HOST:PORT/DBNAME"
            ),
            ErrorKind::Unreachable => write!(
                f,
                "cannot reach the PostgreSQL server of {at} ({detail}): check the host and port in the URL, \
                 and that the server is running and accepts connections from this machine"
            ),
            ErrorKind::Tls => write!(
                f,
                "no TLS connection to the PostgreSQL server of {at} ({detail}): check the URL's sslmode, and \
                 that sslrootcert names the CA that signed the server's certificate and that the certificate \
                 names the host in the URL"
            ),
            ErrorKind::AuthFailed => write!(
                f,
                "the PostgreSQL server of {at} refused the login ({detail}): check the user and password in \
                 the URL (or $PGPASSWORD), and the server's pg_hba.conf"
            ),
            ErrorKind::PermissionDenied => write!(
                f,
                "database {at} denied jobhost a privilege it needs ({detail}): grant the user CREATE on the \
                 database (for the schema) and ownership of jobhost's schema, or ask its administrator"
            ),
            ErrorKind::CannotOpen => write!(
                f,
                "cannot open the database {at} ({detail}): check that its folder exists (or, on a \
                 PostgreSQL server, that the database exists: `createdb NAME`) and that jobhost's user may \
                 read and write it"
            ),
            ErrorKind::NotADatabase => write!(
                f,
                "{at} is not a SQLite database, or it is corrupt: point --db (or database.path) at a \
                 jobhost database or at a new file"
            ),
            ErrorKind::Foreign => write!(
                f,
                "{at}{detail} was not made by jobhost (it already holds other tables): point --db (or \
                 database.path) at a jobhost database or at a new file, or on PostgreSQL set database.schema \
                 to a schema of jobhost's own"
            ),
            ErrorKind::NewerSchema => write!(f, "database {at}: {detail}"),
            ErrorKind::Busy => write!(
                f,
                "database {at} stayed locked by another process for longer than database.busy_timeout \
                 ({detail}): retry, or raise database.busy_timeout"
            ),
            ErrorKind::ReadOnly => write!(
                f,
                "database {at} cannot be written ({detail}): jobhost's user needs write access to the \
                 file and to its folder (SQLite keeps its -wal and -shm files beside it)"
            ),
            ErrorKind::DiskFull => write!(
                f,
                "the disk holding database {at} is full ({detail}): free space there (e.g. `jobhost jobs \
                 purge`) or move the database; the failed change was not written"
            ),
            ErrorKind::Replaced => {
                write!(f, "database {at} was deleted or replaced while jobhost had it open: {detail}")
            }
            ErrorKind::Refused => write!(f, "{detail}"),
            ErrorKind::Other => write!(f, "database {at}: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_failure(code: std::ffi::c_int) -> StoreError {
        StoreError::from(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)).at("data/pool.db")
    }

    #[test]
    fn sqlite_failures_name_the_database_and_the_fix() {
        let cases = [
            (rusqlite::ffi::SQLITE_READONLY, ErrorKind::ReadOnly, "needs write access to the file and to its folder"),
            (rusqlite::ffi::SQLITE_FULL, ErrorKind::DiskFull, "free space there"),
            (rusqlite::ffi::SQLITE_CANTOPEN, ErrorKind::CannotOpen, "check that its folder exists"),
            (rusqlite::ffi::SQLITE_BUSY, ErrorKind::Busy, "raise database.busy_timeout"),
            (rusqlite::ffi::SQLITE_NOTADB, ErrorKind::NotADatabase, "point --db"),
        ];
        for (code, kind, fix) in cases {
            let err = sqlite_failure(code);
            let message = err.to_string();
            assert_eq!(err.kind(), kind, "{message}");
            assert!(message.contains("data/pool.db") && message.contains(fix), "{message}");
        }
    }
}
