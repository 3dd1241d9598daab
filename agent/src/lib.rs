pub mod config;
pub mod identity;
pub mod store;
