use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lbpool_controller::run::run(lbpool_controller::run::Args::parse()).await
}
