//! The API server restarted under a running controller. A test binary of its
//! own, so that no other test runs while the API server is down.

use std::process::Command;

use lbpool_tests::demo::{DEMO, Demo, scale};
use lbpool_tests::{ControllerProcess, repo};

#[tokio::test]
async fn the_controller_resumes_after_an_api_server_restart() {
    if ControllerProcess::in_cluster() {
        eprintln!("in-cluster run: the API server of a kind cluster is not restarted by the tests");
        return;
    }
    let Demo {
        ns,
        env,
        controller,
        ..
    } = Demo::start("apirestart", &DEMO).await;
    env.converged(2).await;

    let status = Command::new("bash")
        .arg(repo().join("hack/local-cluster.sh"))
        .args(["restart", "kube-apiserver"])
        .status()
        .expect("run hack/local-cluster.sh");
    assert!(
        status.success(),
        "restart kube-apiserver (needs LBPOOL_CLUSTER_DIR of the test cluster)"
    );

    // The same controller process, never restarted, converges on a change
    // made after the API server came back.
    let restarted = std::time::Instant::now();
    scale(&ns.name, 4);
    env.converged(4).await;
    eprintln!(
        "converged {:?} after the API server came back",
        restarted.elapsed()
    );
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("the controller survived an API server restart");
}
