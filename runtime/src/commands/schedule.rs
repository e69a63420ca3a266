//! `osp schedule`: prints a sampling scheduler's timesteps and sigmas as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_runtime::scheduler::{SampleMethod, ScheduleSummary, SchedulerConfig};

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Sampling method (upstream `--sample_method` names).
    #[arg(long, value_enum, default_value_t = SampleMethod::EulerAncestralDiscrete)]
    pub sample_method: SampleMethod,
    /// Number of sampling steps (1..=num_train_timesteps).
    #[arg(long, default_value_t = 100)]
    pub num_sampling_steps: usize,
    /// A diffusers `scheduler_config.json` to use instead of the v1.3 release settings.
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
}

pub fn run(args: &ScheduleArgs) -> anyhow::Result<()> {
    let config = match &args.scheduler_config {
        Some(path) => {
            let config = SchedulerConfig::from_file(path)
                .with_context(|| format!("reading scheduler config {}", path.display()))?;
            if let Some(named) = config.sample_method()? {
                if named != args.sample_method {
                    anyhow::bail!(
                        "{} is a {} config but --sample-method is {}",
                        path.display(),
                        named.class_name(),
                        args.sample_method
                    );
                }
            }
            config
        }
        None => SchedulerConfig::open_sora_plan_v13(args.sample_method),
    };
    let summary = ScheduleSummary::new(args.sample_method, &config, args.num_sampling_steps)
        .with_context(|| format!("building the {} schedule", args.sample_method))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
