#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Archive benchmark.
    Archive,
}

pub fn run(_command: Command) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not written yet")
}
