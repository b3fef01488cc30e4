//! An in-memory marketplace for lifecycle tests on a paused clock (real HTTP and paused time do not
//! mix: the client's timeouts would fire while the runtime idles). It can go down and change leases.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;

use super::{Lease, MarketplaceApi, MarketplaceError, Specs};
use crate::clock::{Clock, TokioClock};
use crate::types::{Port, Secret, Username};

#[derive(Debug)]
pub struct FakeMarketplace {
    clock: TokioClock,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lease: chrono::Duration,
    expiration: Option<DateTime<Utc>>,
    down: bool,
    unknown_device: bool,
    registrations: u32,
    checkins: u32,
    last_specs: Option<Specs>,
}

impl FakeMarketplace {
    /// Each registration leases the device for `lease` from the clock's now.
    pub fn new(clock: TokioClock, lease: chrono::Duration) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner {
                lease,
                ..Inner::default()
            }),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    pub fn set_unknown_device(&self, unknown: bool) {
        self.inner.lock().unwrap().unknown_device = unknown;
    }

    pub fn set_expiration(&self, t: DateTime<Utc>) {
        self.inner.lock().unwrap().expiration = Some(t);
    }

    pub fn registrations(&self) -> u32 {
        self.inner.lock().unwrap().registrations
    }

    pub fn checkins(&self) -> u32 {
        self.inner.lock().unwrap().checkins
    }

    pub fn last_specs(&self) -> Option<Specs> {
        self.inner.lock().unwrap().last_specs.clone()
    }

    /// The credentials registration number `n` (from 1) hands out.
    pub fn credentials(n: u32) -> (String, String) {
        (format!("renter{n}"), format!("Pass{n:06}"))
    }

    fn guard(
        &self,
        call: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, Inner>, MarketplaceError> {
        let inner = self.inner.lock().unwrap();
        let url = "http://fake.invalid/".to_owned();
        if inner.down {
            return Err(MarketplaceError::Refused {
                call,
                url,
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "down (fake)".into(),
            });
        }
        if inner.unknown_device {
            return Err(MarketplaceError::Refused {
                call,
                url,
                status: StatusCode::NOT_FOUND,
                body: "Could not find that device.".into(),
            });
        }
        Ok(inner)
    }
}

// The fake answers at once: async fns that never wait, which clippy flags from Rust 1.99
// (unused_async_trait_impl, a lint older clippy does not know: hence unknown_lints).
#[allow(unknown_lints, clippy::unused_async_trait_impl)]
impl MarketplaceApi for FakeMarketplace {
    async fn register(&self, specs: &Specs) -> Result<Lease, MarketplaceError> {
        let mut inner = self.guard("register")?;
        inner.registrations += 1;
        inner.last_specs = Some(specs.clone());
        let n = inner.registrations;
        let expiration = self.clock.now() + inner.lease;
        inner.expiration = Some(expiration);
        let (user, pass) = Self::credentials(n);
        Ok(Lease {
            username: Username::parse(&user).expect("fake names are valid"),
            password: Secret::password(&pass).expect("fake passwords are valid"),
            port: Port::new(6000 + i64::from(n)).expect("small port"),
            expiration,
        })
    }

    async fn check_in(&self) -> Result<(), MarketplaceError> {
        self.guard("check-in")?.checkins += 1;
        Ok(())
    }

    async fn expiration(&self) -> Result<DateTime<Utc>, MarketplaceError> {
        let inner = self.guard("expiration")?;
        inner.expiration.ok_or_else(|| MarketplaceError::Refused {
            call: "expiration",
            url: "http://fake.invalid/".to_owned(),
            status: StatusCode::NOT_FOUND,
            body: "Device has no rental.".into(),
        })
    }
}
