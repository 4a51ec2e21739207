//! The command-line error policy shared by every subcommand.
//!
//! - A failed command returns a [`CliError`]; [`run`] prints it as one line,
//!   `vmbdev: <message>`, on stderr and exits with its code (1 unless a
//!   command says otherwise). Messages come from the library errors, which
//!   name the file, offset and field concerned.
//! - Usage errors are clap's: usage text on stderr, exit 2.
//! - A panic is a bug, never the answer to bad input: without `-v` it is
//!   reported as one `vmbdev: internal error` line (no backtrace) and exits
//!   101, so it cannot be mistaken for a clean refusal.
//! - A closed standard output (`vmbdev ls -r x | head -1`) ends the command
//!   silently by SIGPIPE, after removing its temporaries: the shell reports
//!   status 141, as for any tool killed by a closed pipe.
//! - Messages have control characters escaped, so names read from an image
//!   cannot drive the terminal.
//! - Tracing output goes to stderr when `-v` is given (debug; `-vv` trace)
//!   or `RUST_LOG` is set, which then picks the filter; it is coloured only
//!   when stderr is a terminal.

use std::fmt;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Exit code of a command that failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of an internal error (a panic).
pub const EXIT_INTERNAL: u8 = 101;

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
    broken_pipe: bool,
}

impl CliError {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_FAILURE,
            broken_pipe: false,
        }
    }

    /// Standard output's reader went away: the command ends quietly, as a
    /// write to a closed pipe would have ended it.
    pub fn broken_pipe() -> Self {
        Self {
            message: String::new(),
            code: EXIT_FAILURE,
            broken_pipe: true,
        }
    }

    /// The process exit code.
    pub fn code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any library error becomes a failure with its own message, which already
/// says what was wrong and where. (`CliError` is deliberately not an
/// `Error` itself, so this blanket conversion does not overlap `From<T> for
/// T`.)
impl<E: std::error::Error + 'static> From<E> for CliError {
    fn from(e: E) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(crate::output::OutputError::BrokenPipe) = c.downcast_ref() {
                return Self::broken_pipe();
            }
            cause = c.source();
        }
        Self::new(e.to_string())
    }
}

/// Writes a command's output to stdout. A reader that went away (`vmbdev
/// info x | head`) ends the command as SIGPIPE would; any other write
/// failure is an error.
pub fn print_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::from(crate::output::stdout_error(e)))
}

/// Runs `command`, printing its error (if any) as one line on stderr; the
/// returned code is what the process exits with.
pub fn run(verbosity: u8, command: impl FnOnce() -> Result<(), CliError>) -> ExitCode {
    init_tracing(verbosity);
    // `println!` panics when stdout's reader has gone (demo, bench): that is
    // a closed pipe, not a bug.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_text(info);
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            crate::signals::die_of_broken_pipe();
        }
        if verbosity > 0 {
            return default_hook(info);
        }
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprint_line(&format!(
            "vmbdev: internal error: {}{location} (run with -v for details)",
            crate::messages::escape_message(&message)
        ));
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(command)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if e.broken_pipe => crate::signals::die_of_broken_pipe(),
        Ok(Err(e)) => {
            eprint_line(&format!(
                "vmbdev: {}",
                crate::messages::escape_message(&e.message)
            ));
            ExitCode::from(e.code())
        }
        Err(_) => ExitCode::from(EXIT_INTERNAL),
    }
}

/// The message a panic was raised with.
fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> String {
    info.payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Writes one line to stderr; a closed stderr is ignored (there is nowhere
/// left to report it).
fn eprint_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Sends tracing output to stderr when asked for by `-v` or `RUST_LOG`.
fn init_tracing(verbosity: u8) {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = match (from_env, verbosity) {
        (true, _) => EnvFilter::from_default_env(),
        (false, 0) => return,
        (false, 1) => EnvFilter::new("debug"),
        (false, _) => EnvFilter::new("trace"),
    };
    // Failing to install means a subscriber already exists; keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_keep_their_message_and_exit_1() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = CliError::from(io);
        assert_eq!(e.to_string(), "no such file");
        assert_eq!(e.code(), 1);
    }
}
