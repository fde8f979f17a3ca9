//! Hardening: never publish a config HAProxy rejects, never storm rollouts,
//! report bad input without touching anything else, survive faults.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lbpool_crds::LoadBalancerPool;
use lbpool_tests::demo::{
    DEMO, Demo, Env, WAIT, apply_demo, pool, scale, templated, with_port, writing, yaml,
};

/// The template key a pool reads by default.
const HBS: &str = "haproxy.cfg.hbs";
use lbpool_tests::{ControllerProcess, apply_yaml, eventually, kubectl, scratch_dir};

fn template_config_map(body: &str) -> String {
    let indented: String = body.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tpl\ndata:\n  haproxy.cfg.hbs: |\n{indented}"
    )
}

const GOOD_TEMPLATE: &str = "\
global
  maxconn 100
defaults
  mode http
  timeout connect {{timeouts.connect}}
  timeout client {{timeouts.client}}
  timeout server {{timeouts.server}}
frontend fe
  bind :{{frontend.port}}
  default_backend {{backendName}}
backend {{backendName}}
  balance {{balance}}
{{#each servers}}
  server {{name}} {{address}}:{{port}} check
{{/each}}";

async fn condition(env: &Env, pool: &str, type_: &str) -> Option<(String, String, String)> {
    let p = env.pools.get(pool).await.ok()?;
    let c = p
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn config_text(env: &Env, name: &str) -> Option<String> {
    let cm = env.config_maps.get_opt(name).await.ok()??;
    cm.data?.remove(lbpool_wire::CONFIG_KEY)
}

/// `<type> <reason> <series count>` per Event of `ns`; a repeated Event is
/// one object with a series, so its count shows.
fn events_of(ns: &str) -> String {
    let format = r#"jsonpath={range .items[*]}{.type} {.reason} {.series.count}{"\n"}{end}"#;
    kubectl(&["get", "events", "-n", ns, "-o", format]).expect("events")
}

async fn deployment_generation(env: &Env) -> i64 {
    env.deployments
        .get("haproxy")
        .await
        .expect("haproxy deployment")
        .metadata
        .generation
        .unwrap_or_default()
}

#[tokio::test]
async fn a_config_haproxy_rejects_is_never_published() {
    let Demo {
        ns,
        env,
        controller,
        ..
    } = Demo::start("gate", &["webapp.yaml", "haproxy.yaml"]).await;
    let n = ns.name.clone();
    apply_yaml(&n, &template_config_map(GOOD_TEMPLATE)).expect("template");
    let webapp = templated(
        with_port(pool("webapp", "webapp", "haproxy"), "http"),
        "tpl",
        HBS,
    );
    apply_yaml(&n, &yaml(&webapp)).expect("pool");
    let good = env.converged(2).await;
    let published = config_text(&env, "webapp-haproxy")
        .await
        .expect("published config");
    let generation = deployment_generation(&env).await;

    // `balance` with a suffix HAProxy does not know.
    let broken = GOOD_TEMPLATE.replace("balance {{balance}}", "balance {{balance}}-broken");
    apply_yaml(&n, &template_config_map(&broken)).expect("broken template");
    let (_, reason, message) = eventually("ConfigValid=False", WAIT, || async {
        match condition(&env, "webapp", "ConfigValid").await {
            Some(c) if c.0 == "False" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reason, "HAProxyRejected");
    assert!(
        message.contains("balance only supports"),
        "HAProxy's own message: {message}"
    );
    let events = events_of(&n);
    assert!(
        events.contains("Warning HAProxyRejected"),
        "Warning Event: {events}"
    );
    let log = controller.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HAProxyRejected") && l.contains(&n))
        .collect();
    assert_eq!(lines.len(), 1, "one log line naming the pool: {lines:#?}");
    // Nothing moved: the last good config stays, no rollout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        config_text(&env, "webapp-haproxy").await.as_deref(),
        Some(published.as_str())
    );
    assert_eq!(deployment_generation(&env).await, generation, "no rollout");
    assert_eq!(env.deployed_hash().await.as_deref(), Some(good.as_str()));

    // Fixed: the condition clears and the new config is published.
    let fixed = GOOD_TEMPLATE.replace("maxconn 100", "maxconn 200");
    apply_yaml(&n, &template_config_map(&fixed)).expect("fixed template");
    eventually("the fixed config to be published", WAIT, || async {
        let text = config_text(&env, "webapp-haproxy")
            .await
            .unwrap_or_default();
        if text.contains("maxconn 200") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let hash = env.converged(2).await;
    assert_ne!(hash, good);
    let (status, ..) = condition(&env, "webapp", "ConfigValid")
        .await
        .expect("condition");
    assert_eq!(status, "True");
    // Later reconciles (Deployment status changes) must not repeat anything;
    // a repeat would be a series on the same Event, so its count is shown.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events_of(&n);
    let count = |line: &str| events.lines().filter(|l| l.trim_end() == line).count();
    assert_eq!(count("Warning HAProxyRejected"), 1, "{events}");
    assert_eq!(count("Normal ConfigValid"), 1, "{events}");
}

/// (pool name, the pool, expected condition type, reason, text in the message).
fn accepted_but_invalid() -> Vec<(
    &'static str,
    LoadBalancerPool,
    &'static str,
    &'static str,
    &'static str,
)> {
    // Each writes a ConfigMap of its own, beside the demo's Deployment.
    let on =
        |name: &str, service: &str| writing(pool(name, service, "haproxy"), &format!("{name}-cfg"));
    let port = |name: &str, port: IntOrString| {
        let mut p = on(name, "webapp");
        p.spec.backend.port = Some(port);
        p
    };
    let template =
        |name: &str, config_map: &str, key: &str| templated(on(name, "webapp"), config_map, key);
    vec![
        (
            "no-service",
            on("no-service", "nothing-here"),
            "ConfigValid",
            "ServiceNotFound",
            "spec.backend.service",
        ),
        (
            "no-port",
            port("no-port", IntOrString::String("grpc".into())),
            "ConfigValid",
            "PortNotFound",
            "spec.backend.port",
        ),
        (
            "no-port-number",
            port("no-port-number", IntOrString::Int(8443)),
            "ConfigValid",
            "PortNotFound",
            "no port 8443",
        ),
        (
            "two-ports",
            on("two-ports", "twoports"),
            "ConfigValid",
            "PortNotFound",
            "has 2 ports",
        ),
        (
            "no-template",
            template("no-template", "missing", HBS),
            "ConfigValid",
            "TemplateNotFound",
            "spec.template.configMap",
        ),
        (
            "no-key",
            template("no-key", "tpl", "other.hbs"),
            "ConfigValid",
            "TemplateNotFound",
            "spec.template.key",
        ),
        (
            "unknown-var",
            template("unknown-var", "bad-vars", HBS),
            "ConfigValid",
            "TemplateInvalid",
            "backendNam",
        ),
        (
            "bad-syntax",
            template("bad-syntax", "bad-syntax", HBS),
            "ConfigValid",
            "TemplateInvalid",
            "bad-syntax/haproxy.cfg.hbs",
        ),
        (
            "no-listener",
            template("no-listener", "no-listener", HBS),
            "ConfigValid",
            "HAProxyRejected",
            "no listener",
        ),
        (
            "no-deployment",
            writing(
                pool("no-deployment", "webapp", "nowhere"),
                "no-deployment-cfg",
            ),
            "Ready",
            "DeploymentNotFound",
            "spec.haproxy.deployment",
        ),
    ]
}

#[tokio::test]
async fn bad_input_the_api_accepts_is_reported_and_changes_nothing_else() {
    let Demo {
        ns,
        env,
        controller: _controller,
        ..
    } = Demo::start("badinput", &["webapp.yaml", "haproxy.yaml"]).await;
    let n = ns.name.clone();
    apply_yaml(&n, &template_config_map(GOOD_TEMPLATE)).expect("template");
    let extra_objects = "\
apiVersion: v1
kind: Service
metadata: {name: twoports}
spec:
  selector: {app.kubernetes.io/name: webapp}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: http}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: bad-vars}
data: {haproxy.cfg.hbs: \"backend {{backendNam}}\\n\"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: bad-syntax}
data: {haproxy.cfg.hbs: \"{{#each servers}}\\n\"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: no-listener}
data: {haproxy.cfg.hbs: \"defaults\\n  mode http\\n\"}
";
    apply_yaml(&n, extra_objects).expect("supporting objects");
    let generation = deployment_generation(&env).await;
    let cases = accepted_but_invalid();
    for (_, pool, ..) in &cases {
        apply_yaml(&n, &yaml(pool)).expect("the API server accepts it");
    }
    for (name, _, type_, reason, text) in &cases {
        let (status, got_reason, message) =
            eventually(&format!("{name}: {type_}={reason}"), WAIT, || async {
                match condition(&env, name, type_).await {
                    Some(c) if c.1 == *reason => Ok(c),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        assert_eq!(
            (status.as_str(), got_reason.as_str()),
            ("False", *reason),
            "{name}"
        );
        assert!(
            message.contains(text),
            "{name}: {text:?} not in {message:?}"
        );
        if *type_ == "ConfigValid" {
            assert!(
                config_text(&env, &format!("{name}-cfg")).await.is_none(),
                "{name}: no ConfigMap is written for an invalid pool"
            );
        }
    }
    assert_eq!(
        deployment_generation(&env).await,
        generation,
        "the HAProxy Deployment was not touched"
    );
    eprintln!(
        "{} accepted-but-invalid pools reported on status",
        cases.len()
    );
}

#[tokio::test]
async fn a_rollout_that_cannot_progress_or_runs_another_haproxy_is_reported() {
    let Demo {
        ns,
        env,
        controller: _controller,
        ..
    } = Demo::start("stuck", &DEMO).await;
    let n = ns.name.clone();
    env.converged(2).await;
    let patch = |p: &str| {
        kubectl(&[
            "patch",
            "deployment",
            "haproxy",
            "-n",
            &n,
            "--type",
            "merge",
            "-p",
            p,
        ])
        .expect("patch the Deployment");
    };
    let is = |type_: &'static str, status: &'static str, reason: &'static str| {
        let env = &env;
        async move {
            eventually(&format!("{type_}={status}/{reason}"), WAIT, || async {
                match condition(env, "webapp", type_).await {
                    Some(c) if c.0 == status && c.1 == reason => Ok(c.2),
                    other => Err(format!("{other:?}")),
                }
            })
            .await
        }
    };
    let ready = |status, reason| is("Ready", status, reason);
    // The demo's image names the HAProxy lbpool writes configs for.
    let supported = is("HAProxyVersion", "True", "Supported").await;
    assert!(
        supported.contains(lbpool_checker::haproxy::HAPROXY_MAJOR),
        "{supported}"
    );
    // New HAProxy pods that no node takes, and a short progress deadline.
    patch(
        r#"{"spec": {"progressDeadlineSeconds": 5,
            "template": {"spec": {"nodeSelector": {"lbpool.dev/test": "nowhere"}}}}}"#,
    );
    let message = ready("False", "RolloutStuck").await;
    assert!(
        message.contains("ProgressDeadlineExceeded") && message.contains("Deployment haproxy"),
        "{message}"
    );
    // Fixed by hand: the rollout completes, and the pool says so.
    patch(r#"{"spec": {"template": {"spec": {"nodeSelector": null}}}}"#);
    ready("True", "Serving").await;

    // An image of another HAProxy: named in the status, not found out by a
    // config it refuses.
    patch(
        r#"{"spec": {"template": {"spec": {"containers": [{"name": "haproxy", "image": "haproxy:2.6"}]}}}}"#,
    );
    let mismatch = is("HAProxyVersion", "False", "VersionMismatch").await;
    assert!(
        mismatch.contains("image haproxy:2.6: HAProxy 2.6"),
        "{mismatch}"
    );
}

#[tokio::test]
async fn a_scaling_burst_rolls_at_most_once_per_interval() {
    let Demo {
        ns,
        env,
        controller: _controller,
        ..
    } = Demo::start("burst", &DEMO).await;
    scale(&ns.name, 1);
    env.converged(1).await;
    // Let the interval of the last rollout pass, as between two real bursts.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let before = deployment_generation(&env).await;
    let started = std::time::Instant::now();
    scale(&ns.name, 30);
    env.converged(30).await;
    let one_step = deployment_generation(&env).await - before;
    eprintln!("1 -> 30 in one step: {one_step} rollouts");
    assert_rate_limited("1 -> 30 in one step", one_step, started.elapsed());

    scale(&ns.name, 1);
    env.converged(1).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = deployment_generation(&env).await;
    let started = std::time::Instant::now();
    for replicas in 2..=30 {
        env.set_replicas(replicas).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let burst = started.elapsed();
    env.converged(30).await;
    let one_by_one = deployment_generation(&env).await - before;
    eprintln!("1 -> 30 one replica at a time over {burst:?}: {one_by_one} rollouts");
    assert_rate_limited("1 -> 30 one at a time", one_by_one, started.elapsed());
}

/// The rule of `rollout.minInterval` (5 s in the demo pool): rollouts are at
/// least an interval apart, so a window of `elapsed` that holds them all
/// holds at most `1 + elapsed / interval` of them, however slow the machine
/// made the burst. At least one: the config did change.
fn assert_rate_limited(what: &str, rollouts: i64, elapsed: Duration) {
    let interval = Duration::from_secs(5);
    let allowed = 1 + (elapsed.as_millis() / interval.as_millis()) as i64;
    assert!(
        (1..=allowed).contains(&rollouts),
        "{what} rolled {rollouts} times in {elapsed:?}: at most {allowed} allowed at one per {interval:?}"
    );
}

#[tokio::test]
async fn faults_are_survived() {
    let Demo {
        ns,
        env,
        controller,
        ..
    } = Demo::start("faults", &DEMO).await;
    let n = ns.name.clone();
    let hash = env.converged(2).await;
    let published = config_text(&env, "webapp-haproxy").await.expect("config");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let generation = deployment_generation(&env).await;
    // 1. The ConfigMap edited by hand (another field manager takes haproxy.cfg).
    let edit = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: webapp-haproxy\ndata:\n  haproxy.cfg: \"# edited by hand\\n\"\n";
    kubectl_apply_as(&n, edit, "someone-else");
    config_becomes(&env, &published, "the edited ConfigMap to be restored").await;

    // 2. The ConfigMap deleted.
    kubectl(&["delete", "configmap", "webapp-haproxy", "-n", &n]).expect("delete ConfigMap");
    config_becomes(&env, &published, "the deleted ConfigMap to be recreated").await;
    assert_eq!(
        deployment_generation(&env).await,
        generation,
        "same config, no rollout"
    );

    // 3. A conflicting write of the rollout annotation.
    let conflict = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "haproxy"},
        "spec": {"template": {"metadata": {"annotations": {lbpool_wire::CONFIG_HASH_ANNOTATION: "sha256:not-ours"}}}}})
    .to_string();
    kubectl_apply_as(&n, &conflict, "someone-else");
    eventually("the annotation to be taken back", WAIT, || async {
        match env.deployed_hash().await {
            Some(h) if h == hash => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // 4. The HAProxy Deployment deleted and recreated.
    kubectl(&["delete", "deployment", "haproxy", "-n", &n]).expect("delete Deployment");
    apply_demo(&n, &["haproxy.yaml"]);
    eventually("the recreated Deployment to be annotated", WAIT, || async {
        match env.deployed_hash().await {
            Some(h) if h == hash => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // 5. The controller killed in the middle of reconciling a burst.
    tokio::time::sleep(Duration::from_secs(6)).await;
    scale(&n, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    controller.kill();
    let restarted = ControllerProcess::start(&n, &scratch_dir(&n));
    let mut ns = ns;
    ns.keep_log(restarted.log_path());
    let final_hash = env.converged(8).await;
    let settled = deployment_generation(&env).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        deployment_generation(&env).await,
        settled,
        "no extra rollout after convergence"
    );
    assert_eq!(
        env.deployed_hash().await.as_deref(),
        Some(final_hash.as_str())
    );
    let text = config_text(&env, "webapp-haproxy")
        .await
        .unwrap_or_default();
    let ips = env.ready_pod_ips().await;
    assert!(
        ips.iter().all(|ip| text.contains(&format!(" {ip}:3000 "))),
        "every pod in the config"
    );
    eprintln!(
        "faults survived: ConfigMap edited, ConfigMap deleted, annotation overwritten, Deployment recreated, controller killed mid-burst"
    );
}

async fn config_becomes(env: &Env, want: &str, what: &str) {
    eventually(what, WAIT, || async {
        match config_text(env, "webapp-haproxy").await {
            Some(t) if t == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn kubectl_apply_as(ns: &str, yaml: &str, manager: &str) {
    lbpool_tests::kubectl_as(
        &lbpool_tests::admin_kubeconfig(),
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            manager,
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(yaml),
    )
    .unwrap_or_else(|e| panic!("apply as {manager}: {e}"));
}

/// Pool `name` serving the demo's Deployment, writing ConfigMap `config_map`.
/// The test creates the others after `webapp` converged, so `webapp` holds
/// both claims: its ConfigMap's ownerReference and the Deployment's annotation.
fn pool_writing(name: &str, config_map: &str) -> String {
    yaml(&writing(
        with_port(pool(name, "webapp", "haproxy"), "http"),
        config_map,
    ))
}

#[tokio::test]
async fn a_config_map_or_deployment_that_is_not_the_pools_is_never_taken() {
    let Demo {
        ns,
        env,
        controller: _controller,
        ..
    } = Demo::start("owner", &["webapp.yaml", "haproxy.yaml"]).await;
    let n = ns.name.clone();
    // 1. A ConfigMap the user already had.
    let precious =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: precious\ndata:\n  keep: me\n";
    apply_yaml(&n, precious).expect("the user's ConfigMap");
    let before = env.config_maps.get("precious").await.expect("precious");
    apply_yaml(&n, &pool_writing("greedy", "precious")).expect("pool greedy");
    // 2. Two pools, one ConfigMap: webapp claims webapp-haproxy first.
    apply_yaml(&n, &pool_writing("webapp", "webapp-haproxy")).expect("pool webapp");
    env.converged(2).await;
    apply_yaml(&n, &pool_writing("second", "webapp-haproxy")).expect("pool second");
    // 3. Two pools, one Deployment: each with a ConfigMap of its own.
    apply_yaml(&n, &pool_writing("third", "third-haproxy")).expect("pool third");

    for (pool, reason, says) in [
        ("greedy", "ConfigMapConflict", "not created by lbpool"),
        (
            "second",
            "ConfigMapConflict",
            "belongs to LoadBalancerPool webapp",
        ),
        (
            "third",
            "DeploymentConflict",
            "rolled by LoadBalancerPool webapp",
        ),
    ] {
        eventually(&format!("{pool} to report the conflict"), WAIT, || async {
            match condition(&env, pool, "ConfigValid").await {
                Some((s, r, m)) if s == "False" && r == reason && m.contains(says) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // The first claimant serves: its status says so once the rollout is done.
    eventually("webapp Ready", WAIT, || async {
        match condition(&env, "webapp", "Ready").await {
            Some((s, ..)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // No writes while the conflicts stand, two pools in each: over 30 s (six
    // rollout intervals, two retries of an invalid pool) neither ConfigMap
    // changes, the Deployment does not roll, and no pool's status flaps.
    let cm_version = |name: &'static str| {
        let env = &env;
        async move {
            let cm = env.config_maps.get(name).await.expect(name);
            cm.metadata.resource_version.unwrap_or_default()
        }
    };
    let pool_versions = || {
        let env = &env;
        async move {
            let mut versions = Vec::new();
            for pool in ["webapp", "second", "third", "greedy"] {
                let p = env.pools.get(pool).await.expect(pool);
                versions.push((pool, p.metadata.resource_version.unwrap_or_default()));
            }
            versions
        }
    };
    let (ours, generation, statuses) = (
        cm_version("webapp-haproxy").await,
        deployment_generation(&env).await,
        pool_versions().await,
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        cm_version("webapp-haproxy").await,
        ours,
        "the first claimant's ConfigMap is untouched"
    );
    assert_eq!(
        deployment_generation(&env).await,
        generation,
        "no rollout from the conflicting pools"
    );
    assert_eq!(pool_versions().await, statuses, "no status written in 30 s");
    let after = env.config_maps.get("precious").await.expect("precious");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(
        after.metadata.owner_references, None,
        "no ownerReference added"
    );
    // One Warning per conflicting pool, not one per retry.
    let events = events_of(&n);
    let warnings: Vec<_> = events
        .lines()
        .filter(|l| l.starts_with("Warning ConfigMapConflict"))
        .collect();
    assert_eq!(warnings.len(), 2, "{events}");
    assert!(
        warnings
            .iter()
            .all(|w| w.trim_end() == "Warning ConfigMapConflict"),
        "no repeats: {events}"
    );

    // 3. Deleting the pool that named it does not garbage-collect it.
    kubectl(&["delete", "lbp", "greedy", "-n", &n, "--wait=true"]).expect("delete greedy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = env
        .config_maps
        .get("precious")
        .await
        .expect("precious survives its pool");
    assert_eq!(
        kept.data.and_then(|mut d| d.remove("keep")).as_deref(),
        Some("me")
    );
}

/// (name, template, reason, text in the message): templates written to get
/// the controller's powers, each refused before anything runs.
fn hostile_templates(
    secret_file: &str,
    marker: &str,
) -> Vec<(&'static str, String, &'static str, String)> {
    let proxy = |line: &str| {
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind :80\n  {line}\n  default_backend be\nbackend be\n{{{{#each servers}}}}\n  server {{{{name}}}} {{{{address}}}}:{{{{port}}}} check\n{{{{/each}}}}\n"
        )
    };
    let global = |line: &str| format!("global\n  {line}\n{}", proxy("maxconn 10"));
    let nested = "{{#each servers}}{{#each ../servers}}{{#each ../../servers}}{{#each ../../../servers}}{{#each ../../../../servers}}x{{/each}}{{/each}}{{/each}}{{/each}}{{/each}}";
    let big = format!(
        "{{{{#each servers}}}}{{{{#each ../servers}}}}# {}\n{{{{/each}}}}{{{{/each}}}}",
        "x".repeat(300_000)
    );
    vec![
        (
            "acl-file",
            proxy(&format!("acl x src -f {secret_file}")),
            "ConfigRefused",
            "'-f'".into(),
        ),
        (
            "lua-fd",
            format!(
                "--[[\nglobal\n  lua-load /proc/self/fd/3\n--]] os.execute('touch {marker}')\n"
            ),
            "ConfigRefused",
            "line 1".into(),
        ),
        (
            "lua-load",
            global("lua-load /proc/self/fd/3"),
            "ConfigRefused",
            "'lua-load'".into(),
        ),
        (
            "program",
            format!(
                "{}program evil\n  command /bin/sh -c 'touch {marker}'\n",
                proxy("maxconn 10")
            ),
            "ConfigRefused",
            "'program'".into(),
        ),
        (
            "errorfile",
            proxy("errorfile 503 /etc/passwd"),
            "ConfigRefused",
            "'errorfile'".into(),
        ),
        (
            "if-block",
            format!(".if defined(HOME)\n{}\n.endif\n", proxy("maxconn 10")),
            "ConfigRefused",
            "'.if'".into(),
        ),
        (
            "setenv",
            global("setenv X y"),
            "ConfigRefused",
            "'setenv'".into(),
        ),
        (
            "admin-socket",
            global("stats socket ipv4@0.0.0.0:9999 level admin"),
            "ConfigRefused",
            "'ipv4@0.0.0.0:9999'".into(),
        ),
        (
            "return-file",
            proxy(&format!(
                "http-request return status 200 file {secret_file}"
            )),
            "ConfigRefused",
            "'file'".into(),
        ),
        (
            "env-header",
            proxy("http-request set-header X %[env(HOME)]"),
            "ConfigRefused",
            "env".into(),
        ),
        (
            "external-check",
            proxy("external-check command /bin/true"),
            "ConfigRefused",
            "'external-check'".into(),
        ),
        (
            "nested-each",
            nested.into(),
            "TemplateTooSlow",
            "nested #each".into(),
        ),
        ("huge-output", big, "ConfigTooLarge", "1000000".into()),
        (
            "recursion",
            "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}".into(),
            "TemplateInvalid",
            "partials".into(),
        ),
    ]
}

#[tokio::test]
async fn hostile_templates_are_refused_and_reveal_nothing() {
    let Demo {
        ns,
        env,
        controller,
        ..
    } = Demo::start("hostile", &DEMO).await;
    let n = ns.name.clone();
    env.converged(2).await;
    let scratch = scratch_dir(&n);
    let secret = format!("SECRET-{n}-not-for-status");
    let secret_file = scratch.join("secret.txt");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("a file with a secret");
    let marker = scratch.join("pwned");
    let cases = hostile_templates(&secret_file.to_string_lossy(), &marker.to_string_lossy());
    for (name, template, ..) in &cases {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("tpl-{name}")},
            "data": {"haproxy.cfg.hbs": template},
        });
        apply_yaml(&n, &cm.to_string()).expect("template ConfigMap");
        let hostile = templated(
            pool(name, "webapp", &format!("haproxy-{name}")),
            &format!("tpl-{name}"),
            HBS,
        );
        apply_yaml(&n, &yaml(&hostile)).expect("the API server accepts the pool");
    }
    // Meanwhile the good pool keeps reconciling.
    let started = std::time::Instant::now();
    scale(&n, 3);
    env.converged(3).await;
    eprintln!(
        "the good pool converged in {:?} beside {} hostile ones",
        started.elapsed(),
        cases.len()
    );

    for (name, _, reason, text) in &cases {
        let (status, got, message) = eventually(&format!("{name}: {reason}"), WAIT, || async {
            match condition(&env, name, "ConfigValid").await {
                Some(c) if c.0 == "False" => Ok(c),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(
            (status.as_str(), got.as_str()),
            ("False", *reason),
            "{name}: {message}"
        );
        assert!(
            message.contains(text.as_str()),
            "{name}: {text:?} not in {message:?}"
        );
        assert!(
            config_text(&env, &format!("{name}-haproxy"))
                .await
                .is_none(),
            "{name}: nothing published"
        );
    }
    assert!(
        !marker.exists(),
        "a template ran code: {} exists",
        marker.display()
    );
    let events = kubectl(&["get", "events", "-n", &n, "-o", "yaml"]).expect("events");
    let statuses = kubectl(&["get", "lbp", "-n", &n, "-o", "yaml"]).expect("pools");
    let log = controller.log_text();
    for (what, text) in [
        ("an Event", &events),
        ("a status", &statuses),
        ("the log", &log),
    ] {
        assert!(
            !text.contains(&secret),
            "{what} holds the secret file's content"
        );
        assert!(!text.contains("root:x:0:0"), "{what} holds /etc/passwd");
    }
    for (name, _, reason, _) in &cases {
        assert!(
            events.contains(&format!("reason: {reason}")),
            "{name}: a Warning Event {reason}"
        );
    }
}
