//! `chaos`: kills random tasks of a service of the running stack while
//! sending bounded load through the gateway, then prints a report. Run it
//! with `scripts/chaos` (it builds it first).

use std::time::Duration;

use clap::Parser;
use shoal_node::parse_duration;
use shoal_tests::chaos::{Plan, run};

#[derive(Parser)]
#[command(about = "Chaos on the shoal stack: docker kill random tasks under load, then report")]
struct Args {
    /// Service whose tasks are killed.
    #[arg(long, default_value = "story-service")]
    service: String,
    /// Time between kills.
    #[arg(long, default_value = "5s", value_parser = duration)]
    every: Duration,
    /// Total duration.
    #[arg(long = "for", default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Stack name.
    #[arg(long, default_value = "shoal")]
    stack: String,
    /// Gateway URL.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    gateway: String,
    /// Concurrent GET workers.
    #[arg(long, default_value_t = 6)]
    getters: usize,
    /// Concurrent POST workers.
    #[arg(long, default_value_t = 2)]
    posters: usize,
    /// Also kill one gateway task halfway through.
    #[arg(long)]
    kill_gateway: bool,
}

fn duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| format!("{raw:?} is not a duration such as 5s or 1m"))
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let plan = Plan {
        stack: a.stack,
        service: a.service,
        every: a.every,
        duration: a.duration,
        gateway: a.gateway,
        getters: a.getters,
        posters: a.posters,
        kill_gateway: a.kill_gateway,
    };
    eprintln!(
        "chaos: killing a task of {} every {:?} for {:?} under load",
        plan.service, plan.every, plan.duration
    );
    let report = run(&plan).await;
    print!("{}", report.render());
    if report.failed_gets() > 0 || report.lost > 0 || report.duplicated > 0 || report.unread() > 0 {
        std::process::exit(1);
    }
}
