//! Wake-ups on SQLite (see [`crate::wake`]): `PRAGMA data_version`, read on a connection of
//! its own whenever inotify reports a change in the database's folder (a commit writes the
//! `-wal` file), and at least every [`LOOK_ANYWAY`].
//!
//! `data_version` is the truth: it changes when any other connection, in any process,
//! commits, and reading it costs about a microsecond. inotify only says when to read it, so
//! an idle waiter sleeps instead of polling (polling every few milliseconds cost 1% of a
//! core on this project's machines, most of it in waking the thread); its false alarms (a
//! checkpoint, a transaction that rolled back) cost a read. Where inotify cannot be had (its
//! per-user limits), the thread reads every [`POLL_WITHOUT_INOTIFY`] instead.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;

use crate::error::{ErrorKind, Result, StoreError};
use crate::wake::Wakeups;

/// The longest the thread goes without reading `data_version` (and noticing it should stop).
const LOOK_ANYWAY: Duration = Duration::from_millis(500);
/// The pauses before reading `data_version` again after a change in the folder that it did
/// not show yet; after the last, the change is taken for one that was no commit (a
/// checkpoint, a transaction rolled back).
const SETTLING: [Duration; 4] =
    [Duration::from_micros(100), Duration::from_micros(400), Duration::from_millis(2), Duration::from_millis(8)];
/// How often the thread reads `data_version` when inotify is not available.
const POLL_WITHOUT_INOTIFY: Duration = Duration::from_millis(10);

/// Starts a thread that signals whenever another connection commits to the file at `path`.
pub(super) fn watch(path: &Path) -> Result<Wakeups> {
    // A reader of its own: `data_version` does not change for a connection's own commits.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // Prepared once: preparing costs tens of times more than the read itself.
    let version =
        |conn: &Connection| conn.prepare_cached("PRAGMA data_version")?.query_row([], |row| row.get::<_, i64>(0));
    let mut seen = version(&conn)?;
    let folder_changes = FolderChanges::watch(path.parent().unwrap_or(Path::new(".")))
        .inspect_err(|err| {
            tracing::warn!(
                "cannot watch {} with inotify ({err}); looking for new jobs every {} ms instead",
                path.display(),
                POLL_WITHOUT_INOTIFY.as_millis()
            )
        })
        .ok();
    let signal = Arc::new(Notify::new());
    signal.notify_one();
    let (stop, stopped) = mpsc::channel::<()>();
    let signalled = signal.clone();
    let spawned = std::thread::Builder::new().name("wake-ups".into()).spawn(move || {
        loop {
            let changed = match &folder_changes {
                Some(changes) => changes.wait(LOOK_ANYWAY),
                None => {
                    std::thread::sleep(POLL_WITHOUT_INOTIFY);
                    false
                }
            };
            if stopped.try_recv() != Err(TryRecvError::Empty) {
                return;
            }
            // A commit writes its frames to the `-wal` file (the event) a moment before it
            // publishes them in the shared index, where `data_version` reads: a read at once
            // can come too early, so it is retried for a little while.
            let settling: &[Duration] = if changed { &SETTLING } else { &[] };
            for settle in std::iter::once(Duration::ZERO).chain(settling.iter().copied()) {
                std::thread::sleep(settle);
                match version(&conn) {
                    Ok(now) if now == seen => continue,
                    Ok(now) => {
                        seen = now;
                        signalled.notify_one();
                    }
                    // The file is busy or gone: the waiter's own reads will say which.
                    Err(_) => signalled.notify_one(),
                }
                break;
            }
        }
    });
    spawned.map_err(|err| StoreError::new(ErrorKind::Other, format!("cannot start the wake-up thread: {err}")))?;
    Ok(Wakeups::new(signal, stop))
}

/// An inotify watch on the files of one folder (not its subfolders).
struct FolderChanges(OwnedFd);

impl FolderChanges {
    fn watch(folder: &Path) -> io::Result<FolderChanges> {
        let folder = CString::new(folder.as_os_str().as_bytes())?;
        // SAFETY: inotify_init1 takes flags only; the descriptor it returns is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), folder.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FolderChanges(fd))
    }

    /// Whether something in the folder changed before `timeout` passed; takes the events.
    fn wait(&self, timeout: Duration) -> bool {
        let mut ready = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call.
        if unsafe { libc::poll(&mut ready, 1, timeout.as_millis() as libc::c_int) } <= 0 {
            return false;
        }
        let mut events = [0u8; 4096];
        // SAFETY: reads into a buffer of the length given; the descriptor is non-blocking,
        // so the loop ends once the queue is empty.
        while unsafe { libc::read(self.0.as_raw_fd(), events.as_mut_ptr().cast(), events.len()) } > 0 {}
        true
    }
}
