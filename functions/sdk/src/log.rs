//! Logging into the host's log, tagged there with component and request id.

use crate::bindings::payfn::host::log::write;
pub use crate::bindings::payfn::host::log::Level;

pub fn info(message: &str) {
    write(Level::Info, message);
}

pub fn warn(message: &str) {
    write(Level::Warn, message);
}

pub fn error(message: &str) {
    write(Level::Error, message);
}
