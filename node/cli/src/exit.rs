//! The children this binary starts: stopped by the kernel when it dies
//! ([`die_with_parent`]), and how they ended, in words (`killed by SIGKILL`,
//! `exited with code 1`) for `shoal local`'s event lines and the sidecar's
//! log.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// Makes the process `cmd` starts receive `signal` when this process dies,
/// however it dies (`PR_SET_PDEATHSIG`): the sidecar's service and `shoal
/// local`'s replicas never outlive them, orphaned, holding their ports.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut std::process::Command, signal: nix::sys::signal::Signal) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, and only
    // makes one async-signal-safe system call (prctl); it touches no memory
    // of the parent, takes no lock and does not allocate.
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

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
