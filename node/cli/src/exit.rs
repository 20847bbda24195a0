//! How a child process ended, in words: `killed by SIGKILL`, `exited with
//! code 1` — for `shoal local`'s event lines and the sidecar's log.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// `killed by SIGKILL`, `exited with code 1`.
pub fn describe(exit: &std::io::Result<ExitStatus>) -> String {
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => format!("ended ({status})"),
        },
        Err(err) => format!("could not be waited for ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_are_described_by_signal_or_code() {
        assert_eq!(describe(&Ok(ExitStatus::from_raw(9))), "killed by SIGKILL");
        assert_eq!(
            describe(&Ok(ExitStatus::from_raw(1 << 8))),
            "exited with code 1"
        );
    }
}
