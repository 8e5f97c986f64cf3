//! One module per page of the console.

pub mod keys;
pub mod live;
pub mod login;
pub mod region;
pub mod routes;
pub mod schemas;
pub mod topology;
pub mod trace;
