//! What replicas on one database tell each other: commits announced on a channel and
//! heard by a listening connection on every replica, and the session lock that lets one
//! replica start up at a time. Each lives on a thread of its own, as every `Client` does
//! (see the engine's note on threads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{Announcement, OnAnnouncement, StoreError, CHANNEL};

/// How long a listener waits for a notification before looking at its stop flag.
const WAKE: Duration = Duration::from_millis(250);
/// Longest pause between attempts to connect again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a listening replica reads the head again anyway: a safety net should a
/// notification be lost, or the read after a reconnect have failed.
const RECHECK: Duration = Duration::from_secs(30);
/// How long `start` waits for the first `LISTEN` before going on without it.
const FIRST_LISTEN: Duration = Duration::from_secs(5);
/// How long a replica waits for another's start-up to end.
const STARTUP_WAIT: &str = "60s";

/// The notification's text: the version, then ` signing` when signing keys changed.
pub(super) fn payload(what: Announcement) -> String {
    match what {
        Announcement::Committed { version, signing: true } => format!("{version} signing"),
        Announcement::Committed { version, signing: false } => version.to_string(),
        Announcement::Missed | Announcement::Lost => String::new(),
    }
}

/// The announcement a notification's text stands for; anything unreadable counts as
/// missed, so the follower reads the head again.
pub(super) fn parse(payload: &str) -> Announcement {
    let mut words = payload.split(' ');
    let version = words.next().and_then(|v| v.parse::<u64>().ok());
    let signing = match (words.next(), words.next()) {
        (None, _) => Some(false),
        (Some("signing"), None) => Some(true),
        _ => None,
    };
    match (version, signing) {
        (Some(version), Some(signing)) => Announcement::Committed { version, signing },
        _ => Announcement::Missed,
    }
}

/// A session-level advisory lock, held by a connection on its own thread until released.
pub(super) struct SessionLock {
    release: Sender<()>,
    holder: JoinHandle<()>,
}

impl SessionLock {
    /// Waits (up to a minute) for the lock and takes it.
    pub(super) fn take(config: &Arc<postgres::Config>, key: i64) -> Result<SessionLock, StoreError> {
        let config = Arc::clone(config);
        let (taken, outcome) = sync_channel::<Result<(), StoreError>>(1);
        let (release, released) = channel::<()>();
        let holder = std::thread::Builder::new()
            .name("keygate-pg-startup".to_owned())
            .spawn(move || {
                let locked = config.connect(NoTls).and_then(|mut client| {
                    client.batch_execute(&format!("SET lock_timeout = '{STARTUP_WAIT}'"))?;
                    client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
                    Ok(client)
                });
                match locked {
                    Ok(client) => {
                        let _ = taken.send(Ok(()));
                        // Until released; then the session, and the lock, end.
                        let _ = released.recv();
                        drop(client);
                    }
                    Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                        let _ = taken.send(Err(StoreError::InUse));
                    }
                    Err(e) => {
                        let _ = taken.send(Err(StoreError::from(e)));
                    }
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start the PostgreSQL start-up lock thread: {e}")))?;
        match outcome.recv() {
            Ok(Ok(())) => Ok(SessionLock { release, holder }),
            Ok(Err(e)) => {
                let _ = holder.join();
                Err(e)
            }
            Err(_) => Err(super::gone()),
        }
    }

    /// Ends the lock's session, and so the lock, before returning.
    pub(super) fn release(self) {
        drop(self.release);
        let _ = self.holder.join();
    }
}

/// A connection listening for announcements, on its own thread.
pub(super) struct Listener {
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Starts listening and waits (briefly) until the first `LISTEN` is in place, so no
    /// commit after this returns goes unheard. Whatever was committed between the caller's
    /// last read and that `LISTEN` is covered by an [`Announcement::Missed`] sent first.
    pub(super) fn start(config: Arc<postgres::Config>, on: OnAnnouncement) -> Result<Listener, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (listening, first) = sync_channel::<()>(1);
        // Not joined: the last handle on the store may be dropped on this very thread.
        let _detached = std::thread::Builder::new()
            .name("keygate-pg-listen".to_owned())
            .spawn(move || listen(&config, &stopping, &*on, listening))
            .map_err(|e| StoreError::Task(format!("cannot start the PostgreSQL listener thread: {e}")))?;
        let _ = first.recv_timeout(FIRST_LISTEN);
        Ok(Listener { stop })
    }

    /// Asks the listener to stop; it does within [`WAKE`].
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn listen(
    config: &postgres::Config,
    stop: &AtomicBool,
    on: &(dyn Fn(Announcement) + Send + Sync),
    listening: std::sync::mpsc::SyncSender<()>,
) {
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let mut client = match connect_listening(config) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' commits; trying again");
                on(Announcement::Lost);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Missed first, then "listening": `start` returns only once what came before the
        // `LISTEN` is covered, so its caller never hears of it afterwards.
        on(Announcement::Missed);
        let _ = listening.try_send(());
        let mut checked = std::time::Instant::now();
        loop {
            if checked.elapsed() >= RECHECK {
                on(Announcement::Missed);
                checked = std::time::Instant::now();
            }
            // A fresh iterator each time: one whose timeout has fired returns at once ever after.
            let heard = client.notifications().timeout_iter(WAKE).next();
            match heard {
                Ok(Some(notification)) => on(parse(notification.payload())),
                Ok(None) if stop.load(Ordering::Relaxed) => return,
                // A closed connection reads as "nothing yet", not as an error.
                Ok(None) if client.is_closed() => {
                    tracing::warn!("lost the connection that listens for other replicas' commits; reconnecting");
                    on(Announcement::Lost);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that listens for other replicas' commits; reconnecting");
                    on(Announcement::Lost);
                    break;
                }
            }
        }
    }
}

fn connect_listening(config: &postgres::Config) -> Result<Client, postgres::Error> {
    // Keepalives find a connection whose server went away without closing it.
    let mut config = config.clone();
    config.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(5)).keepalives_retries(3);
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_as_what_was_announced() {
        for what in [
            Announcement::Committed { version: 0, signing: false },
            Announcement::Committed { version: 42, signing: true },
            Announcement::Committed { version: u64::MAX, signing: false },
        ] {
            assert_eq!(parse(&payload(what)), what);
        }
        for odd in ["", "x", "12 signing extra", "12 other", "-1", "12  signing"] {
            assert_eq!(parse(odd), Announcement::Missed, "{odd:?}");
        }
    }
}
