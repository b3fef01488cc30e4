//! Small pieces shared by the governor and the connector.

pub mod backoff;

pub use backoff::Backoff;
