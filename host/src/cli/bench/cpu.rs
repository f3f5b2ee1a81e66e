//! How much CPU the load generator itself used: on a machine where it
//! shares the cores with the host under test, that is what the host did not
//! get, and the benchmark must say so.

use std::time::Duration;

/// The user + system CPU time of this process so far, from
/// `/proc/self/stat` (Linux; `None` elsewhere or if unreadable).
pub fn process_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// Fields 14 and 15 of `/proc/<pid>/stat` (utime, stime), counted from after
/// the command name, which may hold spaces and ends at the last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    // The kernel reports these in USER_HZ ticks, fixed at 100 per second by
    // its ABI whatever the kernel's own HZ.
    const USER_HZ: u64 = 100;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4242 (payfn bench) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3_250)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_time().is_some());
        }
    }
}
