//! `osp-train`: run and (later) train the osp Burn models.

mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    commands::run(commands::Cli::parse())
}
