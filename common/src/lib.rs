//! Small pieces shared by the governor and the connector.

pub mod backoff;
pub mod luks;

pub use backoff::Backoff;
