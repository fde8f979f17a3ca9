use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    lbpool_agent::run::run(lbpool_agent::run::Args::parse()).await
}
