//! Parsing the command line under the exit-code convention of the crate root: a usage
//! error prints clap's message and exits 2; `--help` and `--version` print to standard
//! output and exit 0.

use std::process::ExitCode;

use crate::EXIT_USAGE;

/// Parses the process arguments into `C`; on failure returns the exit code `main`
/// should return (after clap printed its message).
pub fn parse<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| exit_for(&e))
}

/// Prints a clap error (or help/version text) and returns its exit code.
pub fn exit_for(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[arg(long)]
        n: u8,
    }

    #[test]
    fn usage_errors_are_exit_2_and_help_is_exit_0() {
        let e = T::try_parse_from(["t", "--n", "x"]).unwrap_err();
        assert!(e.use_stderr());
        let h = T::try_parse_from(["t", "--help"]).unwrap_err();
        assert!(!h.use_stderr());
        assert_eq!(T::try_parse_from(["t", "--n", "3"]).unwrap().n, 3);
    }
}
