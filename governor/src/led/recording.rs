//! A fake LED for tests: it records every switch with the tokio clock's time, so a test on a
//! paused clock can assert a pattern's exact timeline.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::{LedError, StatusLed};

/// Records each `set` as (when, on). Clones share one record: give one clone to the pattern task
/// and read the record through another.
#[derive(Debug, Clone, Default)]
pub struct RecordingLed {
    record: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl RecordingLed {
    /// An LED with an empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `set` so far, oldest first.
    pub fn transitions(&self) -> Vec<(Instant, bool)> {
        self.record.lock().expect("no panics while locked").clone()
    }

    /// The last state set, or `None` before the first `set`.
    pub fn is_on(&self) -> Option<bool> {
        self.record
            .lock()
            .expect("no panics while locked")
            .last()
            .map(|&(_, on)| on)
    }
}

impl StatusLed for RecordingLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        self.record
            .lock()
            .expect("no panics while locked")
            .push((Instant::now(), on));
        Ok(())
    }

    fn describe(&self) -> String {
        "recording".to_owned()
    }
}
