//! The pattern task: it owns the LED and plays the current indication's pattern; everyone else
//! only says which indication through a [`LedHandle`].

use std::collections::HashSet;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use super::{Indication, LedError, Pattern, StatusLed};

/// Tells the pattern task what to show. Dropping it (or [`LedHandle::shutdown`]) switches the
/// LED off and ends the task.
#[derive(Debug)]
pub struct LedHandle {
    /// The current indication; the task watches it.
    tx: watch::Sender<Indication>,
    /// The task, awaited by `shutdown`.
    task: JoinHandle<()>,
}

/// Start the pattern task on `led`, showing [`Indication::Booting`]. Call it inside a tokio
/// runtime: the task is spawned on it and times its steps with tokio's clock.
pub fn spawn(led: Box<dyn StatusLed + Send>) -> LedHandle {
    spawn_showing(led, Indication::Booting)
}

/// Start the pattern task on `led`, showing `first`.
pub fn spawn_showing(led: Box<dyn StatusLed + Send>, first: Indication) -> LedHandle {
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(run(led, rx));
    LedHandle { tx, task }
}

impl LedHandle {
    /// Show `indication` from now on: the pattern switches at once, not at the end of the current
    /// cycle. Showing the indication already shown changes nothing (the pattern does not restart),
    /// so callers may repeat it on every retry.
    pub fn show(&self, indication: Indication) {
        self.tx.send_if_modified(|current| {
            let changed = *current != indication;
            *current = indication;
            changed
        });
    }

    /// The indication being shown.
    pub fn current(&self) -> Indication {
        *self.tx.borrow()
    }

    /// Switch the LED off and wait until the task has ended; for a clean exit, where dropping the
    /// handle would leave the task to be cancelled with the runtime before it switched the LED off.
    pub async fn shutdown(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the status LED task failed");
        }
    }
}

/// The LED with what the task knows about it.
struct Output {
    led: Box<dyn StatusLed + Send>,
    /// The state last set successfully; `None` at first and after a failed set, so the next
    /// step writes again.
    lit: Option<bool>,
    /// Error kinds already logged: a broken LED would otherwise log at every blink.
    reported: HashSet<(std::mem::Discriminant<LedError>, Option<std::io::ErrorKind>)>,
}

impl Output {
    fn set(&mut self, on: bool) {
        // Only real changes reach the LED: a pattern switch that starts in the state the LED is
        // already in must not make it flicker.
        if self.lit == Some(on) {
            return;
        }
        match self.led.set(on) {
            Ok(()) => self.lit = Some(on),
            Err(e) => {
                self.lit = None;
                if self.reported.insert(e.kind_key()) {
                    warn!(
                        led = %self.led.describe(),
                        error = %e,
                        "cannot switch the status LED; it may show the wrong pattern"
                    );
                }
            }
        }
    }
}

async fn run(led: Box<dyn StatusLed + Send>, mut rx: watch::Receiver<Indication>) {
    let mut out = Output {
        led,
        lit: None,
        reported: HashSet::new(),
    };
    loop {
        let indication = *rx.borrow_and_update();
        debug!(%indication, "status LED pattern");
        // Returns when the indication changes, or with an error when the handle is gone.
        if play(&mut out, indication.pattern(), &mut rx).await.is_err() {
            break;
        }
    }
    out.set(false);
}

/// Play `pattern` until the indication changes.
async fn play(
    out: &mut Output,
    pattern: Pattern,
    rx: &mut watch::Receiver<Indication>,
) -> Result<(), watch::error::RecvError> {
    let steps = match pattern {
        Pattern::Steady(on) => {
            out.set(on);
            return rx.changed().await;
        }
        Pattern::Repeat(steps) => steps,
    };
    // Each step ends at a deadline counted from the pattern's start, not "now + step": the
    // rhythm then does not drift by the time spent switching.
    let mut deadline = Instant::now();
    loop {
        for step in steps {
            out.set(step.on);
            deadline += step.duration();
            tokio::select! {
                () = sleep_until(deadline) => {}
                changed = rx.changed() => return changed,
            }
        }
    }
}
