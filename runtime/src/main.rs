//! `osp`: runs exported osp bundles (see `osp --help`).

use clap::Parser;

mod commands;

fn main() -> anyhow::Result<()> {
    // before any thread starts; a failed restart only costs speed (logged at debug level)
    let restart = osp_runtime::mem::restart_with_malloc_huge_pages();
    commands::run(commands::Cli::parse(), restart.err())
}
