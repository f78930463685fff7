//! `dra:driver/log`: a guest's log lines, into the host's structured log.
//!
//! Lines are tagged with the driver, bounded in length with control
//! characters escaped ([`crate::guest_text`]: a guest cannot forge a line of
//! the host's log), and limited per call so that a chatty or hostile guest
//! cannot flood the node's logs.

use crate::guest_text as text;
use std::sync::Arc;

/// A guest log line's level (`dra:driver/log`'s `level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Lines accepted per guest call; the rest are counted and dropped.
const MAX_LINES_PER_CALL: u32 = 200;

pub struct GuestLog {
    driver: Arc<str>,
    lines: u32,
    dropped: u32,
    last_error: Option<String>,
}

impl GuestLog {
    pub fn new(driver: Arc<str>) -> Self {
        Self {
            driver,
            lines: 0,
            dropped: 0,
            last_error: None,
        }
    }

    /// Reset the per-call budget.
    pub fn begin_call(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(driver = %self.driver, dropped = self.dropped, "guest log lines dropped (over {MAX_LINES_PER_CALL} in one call)");
        }
        self.lines = 0;
        self.dropped = 0;
        self.last_error = None;
    }

    /// The last error-level line of the current call, if any (used to
    /// explain a trap that follows a guest panic).
    pub fn take_last_error(&mut self) -> Option<String> {
        self.last_error.take()
    }

    /// One line of the guest's, bounded, escaped and counted against the
    /// call's allowance.
    pub fn emit(&mut self, level: Level, message: String) {
        if self.lines >= MAX_LINES_PER_CALL {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        let message = text::bounded(&message, text::LOG_LINE_BYTES);
        let driver = &*self.driver;
        match level {
            Level::Trace => tracing::trace!(target: "guest", driver, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", driver, "{message}"),
            Level::Info => tracing::info!(target: "guest", driver, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", driver, "{message}"),
            Level::Error => {
                tracing::error!(target: "guest", driver, "{message}");
                self.last_error = Some(message);
            }
        }
    }
}
