//! `osp`: runs exported osp bundles (see `osp --help`).

use clap::Parser;

mod commands;

fn main() -> anyhow::Result<()> {
    commands::run(commands::Cli::parse())
}
