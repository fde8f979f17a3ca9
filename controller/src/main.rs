use clap::Parser;

/// jemalloc, with its background thread returning freed pages to the system
/// within seconds: memory follows the number of pools, not the peak.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lbpool_controller::run::run(lbpool_controller::run::Args::parse()).await
}
