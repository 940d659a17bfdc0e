//! `completions SHELL` and `man --out DIR` for every binary (`cvm`, `cvm-verifier`):
//! shell completions and man pages generated from the same clap definitions that parse
//! the command line, so they never drift from the flags (`clap_complete`,
//! `clap_mangen`). `scripts/install-docs` installs both; CI generates them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::{ExitClass, EXIT_FAILURE};

/// `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write `<binary>.1` and one `<binary>-<command>.1` per subcommand into
    /// (created if missing; existing pages are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Why the man pages could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the man page {0}")]
pub struct ManError(PathBuf, #[source] std::io::Error);

impl ExitClass for ManError {
    fn exit_code(&self) -> u8 {
        EXIT_FAILURE
    }
}

/// Prints the completion script of `cmd` for `shell`.
pub fn completions(mut cmd: clap::Command, a: &CompletionsArgs) -> ExitCode {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(a.shell, &mut cmd, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Writes the man pages of `cmd` and every subcommand (recursively) into `dir`; returns
/// the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ManError> {
    std::fs::create_dir_all(dir).map_err(|e| ManError(dir.to_owned(), e))?;
    let mut written = Vec::new();
    let mut cmd = cmd;
    cmd.build();
    page(&cmd, cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

fn page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    out: &mut Vec<PathBuf>,
) -> Result<(), ManError> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone().name(name.to_owned()))
        .render(&mut buf)
        .map_err(|e| ManError(path.clone(), e))?;
    std::fs::write(&path, buf).map_err(|e| ManError(path.clone(), e))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        page(sub, &format!("{name}-{}", sub.get_name()), dir, out)?;
    }
    Ok(())
}

/// Runs `man`.
pub fn man(cmd: clap::Command, a: &ManArgs) -> ExitCode {
    match write_man_pages(cmd, &a.out) {
        Ok(files) => {
            println!("wrote {} man pages to {}", files.len(), a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => crate::exit_with(&e),
    }
}
