//! The governor's LUKS2 helper (`p2pvps-luks`): the libcryptsetup operations ([`ops`]) and the
//! request each run answers ([`cli`]). Its wire is `p2pvps_common::luks`.

pub mod cli;
pub mod ops;
