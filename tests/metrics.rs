//! `GET /metrics`: off by default, guarded by the scrape token or an API token, valid for
//! Prometheus' own `promtool check metrics` (Debian package `prometheus`, installed by
//! `.ci/run`), and its values are real: a tap, a print and a refused MQTT login through the
//! running gateway move the counters.

mod common;
use common::*;

use printgate::config::Model;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const SCRAPE_TOKEN: &str = "scrape-token-0123456789";

/// The value of one sample (`name{labels}` exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Every metric family name (`# TYPE name kind`).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool is not installed: run `bash .ci/run` or `apt-get install prometheus`");
}

/// `promtool check metrics` on `text`: its exit status and what it said.
pub async fn promtool_check(text: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool ends");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn scrape(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut rb = client.get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.expect("scrape answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_unless_enabled() {
    let t = TestGateway::start(&[], 1.0).await;
    let client = reqwest::Client::new();
    let token = demo_api_token(&t.gw().store);
    let (status, body) = scrape(&client, &t.url("/metrics"), Some(&token)).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("[metrics]"),
        "the answer says how to turn it on: {body}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_a_tap_a_print_and_a_refused_login() {
    promtool();
    let sims = vec![
        start_sim(Model::P1S, 60.0).await,
        start_sim(Model::X1C, 60.0).await,
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(dir.path(), &sims);
    cfg.metrics.enabled = true;
    cfg.metrics.token = Some(SCRAPE_TOKEN.into());
    let mut broker =
        printgate::broker::config::BrokerConfig::demo("127.0.0.1:0".parse().expect("address"))
            .expect("broker config");
    broker.mode = printgate::broker::config::BrokerMode::Embedded;
    cfg.broker = broker;
    let t = TestGateway::start_with(sims, dir, cfg).await;
    t.wait_online().await;
    let client = reqwest::Client::new();
    let url = t.url("/metrics");
    let api_token = demo_api_token(&t.gw().store);

    // Nobody without a token; the scrape token and any API token are accepted.
    let (status, _) = scrape(&client, &url, None).await;
    assert_eq!(status, 401);
    let (status, _) = scrape(&client, &url, Some("wrong-token-0123456789")).await;
    assert_eq!(status, 401);
    let (status, _) = scrape(&client, &url, Some(&api_token)).await;
    assert_eq!(status, 200);
    let (status, before) = scrape(&client, &url, Some(SCRAPE_TOKEN)).await;
    assert_eq!(status, 200);

    let (ok, said) = promtool_check(&before).await;
    assert!(
        ok,
        "promtool check metrics refused the output:\n{said}\n---\n{before}"
    );

    // Every family the issue lists is there.
    let names = families(&before);
    for family in [
        "printgate_printer_online",
        "printgate_printer_state",
        "printgate_printer_progress_ratio",
        "printgate_printer_temperature_celsius",
        "printgate_printer_report_age_seconds",
        "printgate_printer_reconnects_total",
        "printgate_printer_starts_total",
        "printgate_queue_jobs",
        "printgate_queue_oldest_waiting_seconds",
        "printgate_plate_taps_total",
        "printgate_safety_tripped",
        "printgate_safety_trips_total",
        "printgate_broker_clients",
        "printgate_broker_received_messages_total",
        "printgate_mqtt_published_messages_total",
        "printgate_broker_refused_logins_total",
        "printgate_http_requests_total",
        "printgate_http_request_duration_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "printgate_uptime_seconds",
        "printgate_database_size_bytes",
    ] {
        assert!(
            names.iter().any(|n| n == family),
            "{family} missing:\n{before}"
        );
    }
    let online = |text: &str, p: &str| {
        sample(
            text,
            &format!("printgate_printer_online{{printer=\"{p}\"}}"),
        )
    };
    assert_eq!(online(&before, "printer 1"), Some(1.0));
    assert_eq!(online(&before, "printer 2"), Some(1.0));
    assert!(
        sample(
            &before,
            "printgate_printer_temperature_celsius{printer=\"printer 1\",sensor=\"nozzle\"}"
        )
        .is_some(),
        "the simulator reports a nozzle temperature"
    );
    let age = sample(
        &before,
        "printgate_printer_report_age_seconds{printer=\"printer 1\"}",
    )
    .expect("report age");
    assert!((0.0..5.0).contains(&age), "report age {age}");
    assert!(sample(&before, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&before, "printgate_database_size_bytes").is_some_and(|v| v > 0.0));
    // No backup yet: no backup age is made up.
    assert!(!names.iter().any(|n| n == "printgate_backup_age_seconds"));

    let taps = |text: &str, result: &str| {
        sample(
            text,
            &format!("printgate_plate_taps_total{{printer=\"printer 1\",result=\"{result}\"}}"),
        )
        .expect("tap counter")
    };
    let starts = |text: &str| {
        sample(
            text,
            "printgate_printer_starts_total{printer=\"printer 1\",outcome=\"confirmed\"}",
        )
        .expect("start counter")
    };
    let refused =
        |text: &str| sample(text, "printgate_broker_refused_logins_total").expect("refused logins");
    let requests = |text: &str, route: &str, status: u16| {
        sample(text, &format!("printgate_http_requests_total{{route=\"{route}\",method=\"POST\",status=\"{status}\"}}")).unwrap_or(0.0)
    };

    // A print: queued, a tap through the API, the start confirmed by the printer.
    let job = t
        .queue(Some("printer 1"), Model::P1S, "metrics-print")
        .await;
    let api = t.api();
    let tap = api
        .tap("printer 1", "metrics-tap-1")
        .await
        .expect("tap answers");
    assert!(tap.tap_accepted(), "{tap:?}");
    t.wait_job(job.id, printgate::jobs::model::JobState::Printing)
        .await;

    // A refused MQTT login on the embedded broker.
    let mqtt = t
        .running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .and_then(|b| b.mqtt_addr)
        .expect("broker");
    let mut o = rumqttc::MqttOptions::new("metrics-intruder", "127.0.0.1", mqtt.port());
    o.set_credentials("demo", "not-the-password");
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 8);
    let refusal = tokio::time::timeout(Duration::from_secs(10), el.poll())
        .await
        .expect("answer in time");
    assert!(refusal.is_err(), "a wrong password is refused: {refusal:?}");

    let (_, after) = scrape(&client, &url, Some(SCRAPE_TOKEN)).await;
    assert_eq!(
        taps(&after, "accepted"),
        taps(&before, "accepted") + 1.0,
        "{after}"
    );
    assert_eq!(starts(&after), starts(&before) + 1.0, "{after}");
    assert_eq!(refused(&after), refused(&before) + 1.0);
    let route = "/api/v1/printers/{name}/plate-clear";
    assert!(
        requests(&after, route, 200) >= requests(&before, route, 200) + 1.0,
        "the tap is counted under its route template:\n{after}"
    );
    assert!(
        !after.contains("printer%201") && !after.contains("metrics-tap-1"),
        "no raw paths or ids in labels"
    );
    assert!(
        sample(&after, "printgate_queue_jobs{state=\"printing\"}") == Some(1.0),
        "{after}"
    );
    let (ok, said) = promtool_check(&after).await;
    assert!(ok, "{said}");
    t.shutdown().await;
}
